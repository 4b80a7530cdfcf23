//! What a starting vigil does about an update the last run left unfinished. Called before the
//! model loads: a rollback rewrites the active-model pointer first, so that the model loaded is
//! the one that should serve. A binary update's journal is `binary::on_start`'s.

use vigil_config::Config;

use crate::journal::{Journal, Phase, Resume};
use crate::models;

/// What the updater does once the service runs.
#[derive(Debug)]
pub enum StartAction {
    Nothing,
    /// Publish this (final) outcome.
    Report(Journal),
    /// Go on with the update from its start (a download resumes from its part file).
    Continue(Journal),
    /// The new model serves: watch it from a fresh canary window.
    Canary(Journal),
    /// This is a new vigil binary on trial: watch its health, then keep it or put the previous
    /// one back.
    BinaryTrial(Journal),
}

/// Reads the journal and settles what must be settled before the model loads. When no update
/// goes on, what ended updates left in the updater's directory is removed (`disk::tidy`).
pub fn before_model_loads(config: &Config) -> StartAction {
    let action = settle(config);
    if matches!(action, StartAction::Nothing | StartAction::Report(_)) {
        crate::disk::tidy(&crate::ota_dir(&config.data_dir), false);
    }
    action
}

fn settle(config: &Config) -> StartAction {
    let dir = crate::ota_dir(&config.data_dir);
    let mut journal = match Journal::load(&dir) {
        Ok(Some(j)) => j,
        Ok(None) => return StartAction::Nothing,
        Err(e) => {
            tracing::error!(error = %e, "the model update journal is unreadable; it is set aside");
            let _ = std::fs::rename(dir.join(crate::journal::FILE), dir.join("update.json.unreadable"));
            return StartAction::Nothing;
        }
    };
    if journal.kind == vigil_ota::Kind::Binary {
        return crate::binary::on_start(&config.data_dir, &dir, journal, crate::slots::running_slot());
    }
    let active = models::read_active(&config.data_dir).map(|a| a.slot);
    let resume = match journal.on_start(&dir, active.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot record this start in the update journal");
            return StartAction::Nothing;
        }
    };
    let end = |journal: &mut Journal, phase: Phase, reason: String| {
        journal.reported = false;
        if let Err(e) = journal.end(&dir, phase, reason) {
            tracing::error!(error = %e, "cannot record the update's outcome");
        }
    };
    match resume {
        Resume::Nothing => StartAction::Nothing,
        Resume::Report => StartAction::Report(journal),
        Resume::Continue(_) => StartAction::Continue(journal),
        Resume::RestartCanary => StartAction::Canary(journal),
        Resume::RollBack { reason } => {
            match journal.previous.clone() {
                Some(previous) => {
                    let pointer = models::Active { slot: previous, previous: None };
                    match models::write_active(&config.data_dir, &pointer) {
                        Ok(()) => tracing::error!(name = %journal.name, version = %journal.version,
                            "{reason}: rolled back to the previous model"),
                        Err(e) => tracing::error!(error = %e, "cannot roll the model back"),
                    }
                }
                None => tracing::error!("{reason}; the journal names no previous model: the configured one runs"),
            }
            if let Some(slot) = &journal.slot {
                let _ = std::fs::remove_dir_all(slot);
            }
            end(&mut journal, Phase::RolledBack, reason);
            StartAction::Report(journal)
        }
        Resume::Abandon { reason } => {
            if let Some(slot) = journal.slot.as_ref().filter(|s| Some(s.as_path()) != active.as_deref()) {
                let _ = std::fs::remove_dir_all(slot);
            }
            end(&mut journal, Phase::Failed, reason);
            StartAction::Report(journal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn journal(phase: Phase, slot: PathBuf, previous: PathBuf) -> Journal {
        Journal {
            target: "models/shapes-1.0.1.tar".into(),
            phase,
            slot: Some(slot),
            previous: Some(previous),
            ..Journal::new("r1", "shapes", "1.0.1")
        }
    }

    /// A data directory with the new model's slot made, and the configuration pointing at it:
    /// (the directory, the configuration, the new slot, the previous slot, the OTA directory).
    fn device() -> (tempfile::TempDir, Config, PathBuf, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests();
        config.data_dir = d.path().to_owned();
        let (new, old) = (d.path().join("models/shapes-1.0.1"), d.path().join("models/shapes-1.0.0"));
        std::fs::create_dir_all(&new).unwrap();
        let dir = crate::ota_dir(d.path());
        std::fs::create_dir_all(&dir).unwrap();
        (d, config, new, old, dir)
    }

    #[test]
    fn repeated_crashes_in_the_canary_roll_back_before_the_model_loads() {
        let (d, config, new, old, dir) = device();
        models::write_active(d.path(), &models::Active { slot: new.clone(), previous: Some(old.clone()) }).unwrap();
        journal(Phase::Canary, new.clone(), old.clone()).save(&dir).unwrap();
        for _ in 0..crate::journal::MAX_CANARY_RESTARTS {
            assert!(matches!(before_model_loads(&config), StartAction::Canary(_)));
        }
        let StartAction::Report(j) = before_model_loads(&config) else { panic!("a rollback to report") };
        assert_eq!(j.phase, Phase::RolledBack);
        assert!(j.reason.unwrap().contains("restarted 3 times"));
        assert_eq!(models::read_active(d.path()).unwrap().slot, old, "the pointer was put back first");
        assert!(!new.exists(), "the new slot is gone");
        // Reported (by the updater) once: then nothing more.
        let mut j = Journal::load(&dir).unwrap().unwrap();
        j.reported = true;
        j.save(&dir).unwrap();
        assert!(matches!(before_model_loads(&config), StartAction::Nothing));
    }

    #[test]
    fn a_crash_while_activating_abandons_unless_the_new_model_was_made_active() {
        let (d, config, new, old, dir) = device();
        journal(Phase::Activating, new.clone(), old.clone()).save(&dir).unwrap();
        let StartAction::Report(j) = before_model_loads(&config) else { panic!("abandoned") };
        assert_eq!(j.phase, Phase::Failed);
        assert!(!new.exists(), "the unused slot is removed");
        std::fs::create_dir_all(&new).unwrap();
        models::write_active(d.path(), &models::Active { slot: new.clone(), previous: Some(old) }).unwrap();
        journal(Phase::Activating, new.clone(), d.path().join("x")).save(&dir).unwrap();
        assert!(matches!(before_model_loads(&config), StartAction::Canary(_)));
        std::fs::write(dir.join(crate::journal::FILE), b"{torn").unwrap();
        assert!(matches!(before_model_loads(&config), StartAction::Nothing));
        assert!(dir.join("update.json.unreadable").exists(), "set aside, not lost");
    }
}
