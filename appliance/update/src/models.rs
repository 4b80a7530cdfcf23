//! Model slots. Bundles installed over the air are unpacked into
//! `<data_dir>/models/<name>-<version>/`; `<data_dir>/models/active.json` names the one the
//! service runs and the one before it. An activation rewrites that file atomically (synced,
//! renamed), so that a restart at any moment finds one or the other. Without the file, the
//! configuration's `model.bundle` runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_config::Config;

use vigil_infer::Bundle;

pub const ACTIVE: &str = "active.json";

/// Which model slot runs, and which ran before it (the rollback target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    pub slot: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
}

pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// The active slot, if one is set and its file reads.
pub fn read_active(data_dir: &Path) -> Option<Active> {
    let path = models_dir(data_dir).join(ACTIVE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "unreadable; running the configured model");
            None
        }
    }
}

/// Makes `active` the model the service runs from its next start (or swap).
pub fn write_active(data_dir: &Path, active: &Active) -> std::io::Result<()> {
    let dir = models_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let bytes = serde_json::to_vec_pretty(active).expect("slots serialise");
    vigil_core::fsutil::write_durably(&dir.join(ACTIVE), &bytes)
}

/// The active slot's bundle, loaded (checked once, here), or the slot before it when the
/// active one does not load; with why, when it is not the first choice. `None`: run the
/// configuration's bundle (with why, when a slot was set and none loads).
pub fn active_bundle(config: &Config) -> (Option<Bundle>, Option<String>) {
    let Some(active) = read_active(&config.data_dir) else { return (None, None) };
    let mut why = Vec::new();
    for slot in std::iter::once(&active.slot).chain(active.previous.as_ref()) {
        match Bundle::load(slot) {
            Ok(b) if why.is_empty() => return (Some(b), None),
            Ok(b) => return (Some(b), Some(why.join("; "))),
            Err(e) => why.push(format!("slot {} does not load ({e})", slot.display())),
        }
    }
    why.push(format!("running the configured bundle {}", config.model.bundle.display()));
    (None, Some(why.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/bundles/shapes-v1")
    }

    #[test]
    fn the_active_slot_runs_and_a_broken_one_falls_back_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests();
        config.data_dir = dir.path().to_owned();
        config.model.bundle = dir.path().join("configured");
        let run = |config: &Config| {
            let (bundle, why) = active_bundle(config);
            (bundle.map_or_else(|| config.model.bundle.clone(), |b| b.dir), why)
        };
        assert_eq!(run(&config), (config.model.bundle.clone(), None), "no slot: the configured bundle");

        write_active(dir.path(), &Active { slot: shipped(), previous: None }).unwrap();
        assert_eq!(run(&config), (shipped(), None));

        let broken = dir.path().join("models/people-2.0.0");
        std::fs::create_dir_all(&broken).unwrap();
        write_active(dir.path(), &Active { slot: broken.clone(), previous: Some(shipped()) }).unwrap();
        let (ran, why) = run(&config);
        assert_eq!(ran, shipped(), "the slot before it");
        assert!(why.unwrap().contains("people-2.0.0 does not load"));

        write_active(dir.path(), &Active { slot: broken, previous: None }).unwrap();
        let (ran, why) = run(&config);
        assert_eq!(ran, config.model.bundle);
        assert!(why.unwrap().contains("running the configured bundle"));

        std::fs::write(dir.path().join("models").join(ACTIVE), b"{torn").unwrap();
        assert_eq!(run(&config), (config.model.bundle.clone(), None), "a torn pointer is ignored");
    }
}
