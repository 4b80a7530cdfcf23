//! The journal of an update in progress, and what a starting device does about it.
//!
//! An update moves through phases (`downloading` → `verifying` → `accepting` → `activating` →
//! `canary` → `successful`, or `failed` / `rolled_back` with a reason). Each phase is written to
//! the journal (synced, renamed) before its work starts, so that after `kill -9` or a power cut
//! at any step the device knows where it was: it resumes what is safe to repeat, abandons what
//! is not, and rolls back a model that may have caused the crash. The journal's public part is
//! what the retained `vigil/<id>/ota` topic carries.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vigil_ota::OtaError;

pub const FILE: &str = "update.json";

/// The journal's writes in this process, one at a time: an update's steps and the record that an
/// earlier outcome reached the broker (on another thread, when the broker acknowledges it) share
/// the file and its temporary name, and the latter reads, changes and writes it back.
static WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn writing() -> std::sync::MutexGuard<'static, ()> {
    WRITES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Restarts during a canary before the new model is blamed for them and rolled back.
pub const MAX_CANARY_RESTARTS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Downloading,
    Verifying,
    Accepting,
    Activating,
    Canary,
    Successful,
    Failed,
    RolledBack,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Successful | Phase::Failed | Phase::RolledBack)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// The fleet request that asked for the update (its reply goes there).
    pub request_id: String,
    /// The TUF target, and vigil's name and version for it.
    pub target: String,
    pub name: String,
    pub version: String,
    /// A model, or vigil's own binary (whose slots and rollback are `vigil_update`'s, not the
    /// journal's: [`Journal::on_start`] is for models).
    #[serde(default)]
    pub kind: vigil_ota::Kind,
    pub phase: Phase,
    /// Where the new model is unpacked (the new binary staged), once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<PathBuf>,
    /// The model that served before (the rollback target); for a binary, the one that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
    /// Why it failed or was rolled back, with the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Starts of vigil while this update was in its canary.
    #[serde(default)]
    pub canary_restarts: u32,
    /// Whether the final outcome has been sent to the fleet.
    #[serde(default)]
    pub reported: bool,
    /// The canary thresholds asked for, and the previous model's figures it is judged against,
    /// as the service writes them (kept so that a canary restarted after a crash judges alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<serde_json::Value>,
}

/// What a starting device does about the journal it finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// No update in progress.
    Nothing,
    /// Go on from `phase` (downloads resume from their part files; acceptance is repeated).
    Continue(Phase),
    /// The new model is active: watch it again from a fresh canary window.
    RestartCanary,
    /// Put `previous` back and report `reason`.
    RollBack { reason: String },
    /// Give up, leaving the running model as it is, and report `reason`.
    Abandon { reason: String },
    /// The outcome is known and not reported yet: report it.
    Report,
}

impl Journal {
    /// A new update of `name` (`version`: empty for the newest that fits), asked for by
    /// `request_id`, about to download.
    pub fn new(request_id: &str, name: &str, version: &str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            target: String::new(),
            name: name.to_owned(),
            version: version.to_owned(),
            kind: vigil_ota::Kind::Model,
            phase: Phase::Downloading,
            slot: None,
            previous: None,
            reason: None,
            canary_restarts: 0,
            reported: false,
            canary: None,
            baseline: None,
        }
    }

    pub fn load(dir: &Path) -> Result<Option<Self>, OtaError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                OtaError::Config(format!(
                    "{} is unreadable ({e}); the update it recorded is abandoned: remove the file",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OtaError::io("cannot read", path)(e)),
        }
    }

    /// Writes the journal durably; call it before the phase's work starts.
    pub fn save(&self, dir: &Path) -> Result<(), OtaError> {
        let _one = writing();
        self.save_unguarded(dir)
    }

    fn save_unguarded(&self, dir: &Path) -> Result<(), OtaError> {
        let path = dir.join(FILE);
        vigil_core::fsutil::write_durably(&path, &serde_json::to_vec_pretty(self).expect("journals serialise"))
            .map_err(OtaError::io("cannot write", path))
    }

    /// Reads the journal and, if `change` changes it (returns true), writes it back, with no
    /// other write in between.
    pub fn update(dir: &Path, change: impl FnOnce(&mut Journal) -> bool) -> Result<(), OtaError> {
        let _one = writing();
        match Self::load(dir)? {
            Some(mut j) => {
                if change(&mut j) {
                    j.save_unguarded(dir)?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn clear(dir: &Path) -> Result<(), OtaError> {
        let _one = writing();
        match std::fs::remove_file(dir.join(FILE)) {
            Ok(()) => vigil_core::fsutil::sync_dir(dir).map_err(OtaError::io("cannot sync", dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OtaError::io("cannot remove", dir.join(FILE))(e)),
        }
    }

    /// Moves to `phase` (and saves).
    pub fn enter(&mut self, dir: &Path, phase: Phase) -> Result<(), OtaError> {
        self.phase = phase;
        self.save(dir)
    }

    /// Ends the update with `phase` (failed or rolled back) and why.
    pub fn end(&mut self, dir: &Path, phase: Phase, reason: impl Into<String>) -> Result<(), OtaError> {
        self.reason = Some(reason.into());
        self.enter(dir, phase)
    }

    /// What to do on start-up. `active` is the model slot the service is about to load. Counts
    /// a start during the canary (and saves the count) when it decides.
    pub fn on_start(&mut self, dir: &Path, active: Option<&Path>) -> Result<Resume, OtaError> {
        let resume = match self.phase {
            Phase::Successful | Phase::Failed | Phase::RolledBack => {
                if self.reported {
                    Resume::Nothing
                } else {
                    Resume::Report
                }
            }
            Phase::Downloading | Phase::Verifying | Phase::Accepting => Resume::Continue(self.phase),
            Phase::Activating => {
                if active.is_some() && active == self.slot.as_deref() {
                    Resume::RestartCanary
                } else {
                    Resume::Abandon {
                        reason: "vigil stopped while activating the new model; the previous model kept serving"
                            .to_owned(),
                    }
                }
            }
            Phase::Canary => {
                self.canary_restarts += 1;
                self.save(dir)?;
                if self.canary_restarts > MAX_CANARY_RESTARTS {
                    Resume::RollBack {
                        reason: format!("vigil restarted {} times during the new model's canary", self.canary_restarts),
                    }
                } else {
                    Resume::RestartCanary
                }
            }
        };
        Ok(resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(phase: Phase) -> Journal {
        Journal {
            target: "models/people-1.1.0".into(),
            phase,
            slot: Some("/data/models/people-1.1.0".into()),
            previous: Some("/data/models/people-1.0.0".into()),
            ..Journal::new("r1", "people", "1.1.0")
        }
    }

    #[test]
    fn after_a_crash_at_each_phase_the_device_resumes_abandons_or_rolls_back() {
        let d = tempfile::tempdir().unwrap();
        let (new, old) = (Path::new("/data/models/people-1.1.0"), Path::new("/data/models/people-1.0.0"));
        for phase in [Phase::Downloading, Phase::Verifying, Phase::Accepting] {
            assert_eq!(journal(phase).on_start(d.path(), Some(old)).unwrap(), Resume::Continue(phase));
        }
        // Killed while activating: whichever model the pointer names is what runs.
        assert_eq!(journal(Phase::Activating).on_start(d.path(), Some(new)).unwrap(), Resume::RestartCanary);
        assert!(matches!(journal(Phase::Activating).on_start(d.path(), Some(old)).unwrap(), Resume::Abandon { .. }));
        // Restarts during the canary: watched again, then blamed on the new model.
        let mut j = journal(Phase::Canary);
        j.save(d.path()).unwrap();
        assert_eq!(j.on_start(d.path(), Some(new)).unwrap(), Resume::RestartCanary);
        assert_eq!(j.on_start(d.path(), Some(new)).unwrap(), Resume::RestartCanary);
        let again = &mut Journal::load(d.path()).unwrap().unwrap();
        assert_eq!(again.canary_restarts, 2, "each start is counted durably");
        let Resume::RollBack { reason } = again.on_start(d.path(), Some(new)).unwrap() else { panic!("roll back") };
        assert!(reason.contains("restarted 3 times"), "{reason}");
        // Outcomes are reported once.
        let mut done = journal(Phase::RolledBack);
        assert_eq!(done.on_start(d.path(), Some(old)).unwrap(), Resume::Report);
        done.reported = true;
        assert_eq!(done.on_start(d.path(), Some(old)).unwrap(), Resume::Nothing);
    }

    #[test]
    fn an_update_of_the_journal_races_no_other_write_and_keeps_a_newer_journal() {
        let d = tempfile::tempdir().unwrap();
        let (dir, old) = (d.path(), Journal::new("old", "m", "1.0.1"));
        old.save(dir).unwrap();
        // The next update's steps, on another thread, while the old outcome is marked reported.
        let writer = {
            let dir = dir.to_owned();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let mut j = Journal::new("new", "m", "1.0.2");
                    j.canary_restarts = i;
                    j.save(&dir).unwrap();
                }
            })
        };
        for _ in 0..200 {
            Journal::update(dir, |j| {
                let mine = j.request_id == "old";
                j.reported |= mine;
                mine
            })
            .unwrap();
        }
        writer.join().unwrap();
        let last = Journal::load(dir).unwrap().unwrap();
        assert_eq!((last.request_id.as_str(), last.canary_restarts, last.reported), ("new", 199, false));
    }

    #[test]
    fn the_journal_is_durable_and_a_torn_one_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Journal::load(d.path()).unwrap(), None);
        let mut j = journal(Phase::Downloading);
        j.enter(d.path(), Phase::Accepting).unwrap();
        j.end(d.path(), Phase::Failed, "too slow for camera `a`").unwrap();
        let back = Journal::load(d.path()).unwrap().unwrap();
        assert_eq!((back.phase, back.reason.as_deref()), (Phase::Failed, Some("too slow for camera `a`")));
        let text = std::fs::read_to_string(d.path().join(FILE)).unwrap();
        assert!(text.contains("\"phase\": \"failed\""), "{text}");
        std::fs::write(d.path().join(FILE), b"{\"request_id\": ").unwrap();
        let e = Journal::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("abandoned") && e.contains("remove the file"), "{e}");
        Journal::clear(d.path()).unwrap();
        assert_eq!(Journal::load(d.path()).unwrap(), None);
    }
}
