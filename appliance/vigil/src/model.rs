//! The model the service runs: the active model slot when one is set (`vigil_update::models`,
//! written by an activation), else the configuration's `model.bundle`.

use vigil_config::Config;
use vigil_infer::{Bundle, Detector, InferError};

pub fn load_active_model(config: &Config) -> Result<(Bundle, Detector), InferError> {
    let (slot, why) = vigil_update::models::active_bundle(config);
    let dir = slot.as_ref().map_or(config.model.bundle.as_path(), |b| b.dir.as_path());
    match why {
        Some(why) => tracing::error!(bundle = %dir.display(), "{why}"),
        None if slot.is_some() => tracing::info!(bundle = %dir.display(), "running the active model slot"),
        None => {}
    }
    match slot {
        Some(bundle) => vigil_infer::load_detector_with(config, bundle),
        None => vigil_infer::load_detector(config),
    }
}
