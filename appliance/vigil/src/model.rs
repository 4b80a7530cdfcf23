//! The model the service runs: the active model slot when one is set (`vigil_infer::slots`,
//! written by an activation), else the configuration's `model.bundle`.

use vigil_config::Config;
use vigil_infer::{Bundle, Detector, InferError};

pub fn load_active_model(config: &Config) -> Result<(Bundle, Detector), InferError> {
    let (dir, why) = vigil_infer::slots::bundle_to_run(config);
    match why {
        Some(why) => tracing::error!(bundle = %dir.display(), "{why}"),
        None if dir != config.model.bundle => tracing::info!(bundle = %dir.display(), "running the active model slot"),
        None => {}
    }
    vigil_infer::load_detector_from(config, &dir)
}
