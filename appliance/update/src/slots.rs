//! vigil's own binary in two slots under `<data_dir>/bin` (docs/ota.md, "Updating vigil itself"):
//!
//! ```text
//! bin/a/vigil, bin/b/vigil   binaries installed over the air
//! bin/slots.json             which slot runs, which ran before it, its trial, the last revert
//! ```
//!
//! The packaged binary (`/usr/bin/vigil`, from the .deb or the Yocto image) is never replaced. It
//! is the **launcher**: `vigil run` execs the active slot's binary when that is newer than the
//! package (an installed package as new or newer wins). It is also the **guard**, which systemd
//! runs before every start (`ExecStartPre=`): while the active slot has not marked itself good
//! it counts the starts, and past [`MAX_STARTS`] it puts the previous binary back before the
//! next start. The guard is the package's code, not the new binary's, so a binary that crashes
//! before `main`, hangs before READY or stops its watchdog is reverted all the same.
//!
//! `slots.json` is replaced durably (synced, renamed, directory synced): after a kill at any
//! moment it holds the old state or the new one.

use std::path::{Path, PathBuf};

use semver::Version;
use serde::{Deserialize, Serialize};
use vigil_ota::OtaError;

/// Starts a new binary gets to mark itself good; the guard reverts it before the one after.
/// vigil.service's `StartLimitBurst=` must allow `MAX_STARTS + 1` starts (tests/ab.rs checks).
pub const MAX_STARTS: u32 = 3;

/// Set by the launcher for the slot binary it runs (and so never launched twice).
pub const ENV_SLOT: &str = "VIGIL_SLOT";

const STATE: &str = "slots.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

/// A binary in a slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Installed {
    pub slot: Slot,
    pub version: Version,
    /// The signed SHA-256 of the binary (hex): the launcher checks it before each start, so
    /// that a binary damaged on disk after it was marked good is not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A binary that has not marked itself good yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Starts the guard has let it have.
    pub starts: u32,
    /// When it was switched to (RFC 3339).
    pub since: String,
}

/// A binary the guard (or the binary itself) took out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reverted {
    pub version: Version,
    pub reason: String,
}

/// `bin/slots.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    /// What runs; `None`: the packaged binary.
    #[serde(default)]
    pub active: Option<Installed>,
    /// What ran before `active`, kept until `active` is good; `None`: the packaged binary.
    #[serde(default)]
    pub previous: Option<Installed>,
    /// Set from the switch until `active` marks itself good.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// The last binary taken out, until the vigil that runs next has reported it.
    #[serde(default)]
    pub reverted: Option<Reverted>,
}

/// What `vigil run` runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// The packaged binary (itself), and why not a slot's when one is active.
    Package(Option<String>),
    Slot(Installed, PathBuf),
}

/// What the guard did before a start.
#[derive(Debug, Clone, PartialEq)]
pub enum Guarded {
    /// No binary on trial (or the package wins): nothing to count.
    Nothing,
    /// The binary on trial gets its `starts`th start.
    Counted { version: Version, starts: u32 },
    /// The binary on trial used its starts: the previous one is back.
    Reverted(Reverted),
}

/// `<data_dir>/bin`.
pub fn bin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("bin")
}

/// The binary in `slot`.
pub fn binary(data_dir: &Path, slot: Slot) -> PathBuf {
    bin_dir(data_dir).join(slot.name()).join("vigil")
}

/// The slot this process was launched from (`None`: the packaged binary, or no launcher).
pub fn running_slot() -> Option<Slot> {
    std::env::var(ENV_SLOT).ok().as_deref().and_then(Slot::parse)
}

impl Slots {
    /// The state in `data_dir`; none written yet is the package alone.
    pub fn load(data_dir: &Path) -> Result<Self, OtaError> {
        let path = bin_dir(data_dir).join(STATE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                OtaError::Config(format!(
                    "{} is unreadable ({e}): the packaged vigil runs; remove the file to clear the slots",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(OtaError::io("cannot read", path)(e)),
        }
    }

    /// Replaces the state durably.
    pub fn save(&self, data_dir: &Path) -> Result<(), OtaError> {
        let dir = bin_dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(OtaError::io("cannot create", dir.clone()))?;
        let path = dir.join(STATE);
        let bytes = serde_json::to_vec_pretty(self).expect("slot state serialises");
        vigil_core::fsutil::write_durably(&path, &bytes).map_err(OtaError::io("cannot write", path))
    }

    /// The slot a new binary is staged into: never the active one nor the one kept to go back
    /// to. None while a binary is on trial (both are taken).
    pub fn free(&self) -> Option<Slot> {
        match (&self.active, &self.previous) {
            _ if self.trial.is_some() => None,
            (Some(a), _) => Some(a.slot.other()),
            (None, Some(p)) => Some(p.slot.other()),
            (None, None) => Some(Slot::A),
        }
    }

    /// What the launcher runs, for a package of version `package`.
    pub fn choose(&self, data_dir: &Path, package: &Version) -> Launch {
        let Some(active) = &self.active else { return Launch::Package(None) };
        if active.version <= *package {
            return Launch::Package(Some(format!(
                "the installed package ({package}) is as new as or newer than vigil {} in slot {}",
                active.version,
                active.slot.name()
            )));
        }
        let path = binary(data_dir, active.slot);
        if !is_executable(&path) {
            return Launch::Package(Some(format!("{} is missing or not executable", path.display())));
        }
        Launch::Slot(active.clone(), path)
    }

    /// Takes the active binary out for `reason` (the previous one runs again) and removes it.
    fn revert(&mut self, data_dir: &Path, reason: String) -> Option<Reverted> {
        let out = self.active.take()?;
        self.active = self.previous.take();
        self.trial = None;
        if self.active.as_ref().is_none_or(|a| a.slot != out.slot) {
            let _ = std::fs::remove_file(binary(data_dir, out.slot));
        }
        let reverted = Reverted { version: out.version, reason };
        self.reverted = Some(reverted.clone());
        Some(reverted)
    }
}

/// The guard (`vigil slots guard`, `ExecStartPre=`): counts this start of a binary on trial and,
/// past [`MAX_STARTS`], restores the previous binary before it.
pub fn guard(data_dir: &Path, package: &Version) -> Result<Guarded, OtaError> {
    let mut slots = Slots::load(data_dir)?;
    if slots.trial.is_none() {
        return Ok(Guarded::Nothing);
    }
    let Launch::Slot(active, _) = slots.choose(data_dir, package) else {
        return Ok(Guarded::Nothing);
    };
    let trial = slots.trial.as_mut().expect("checked above");
    trial.starts += 1;
    let starts = trial.starts;
    let out = if starts > MAX_STARTS {
        let reason = format!(
            "vigil {} did not mark itself good within {MAX_STARTS} starts (it crashed, hung before READY, \
             stopped its watchdog or stopped before its health window ended)",
            active.version
        );
        Guarded::Reverted(slots.revert(data_dir, reason).expect("a slot is active"))
    } else {
        Guarded::Counted { version: active.version, starts }
    };
    slots.save(data_dir)?;
    Ok(out)
}

/// Whether the binary at `path` is still the one `installed` records (its SHA-256, when
/// recorded): `Err` says why not.
pub fn verify(installed: &Installed, path: &Path) -> Result<(), String> {
    let Some(want) = &installed.sha256 else { return Ok(()) };
    match vigil_ota::repo::hash_file(path, |_| {}) {
        Ok((_, hash)) if hex::encode(&hash) == *want => Ok(()),
        Ok(_) => Err(format!(
            "{} does not match the SHA-256 signed for vigil {} (damaged on disk)",
            path.display(),
            installed.version
        )),
        Err(e) => Err(format!("cannot read {}: {e:#}", path.display())),
    }
}

/// Makes `new` the active binary, on trial; the one running now is kept to go back to.
pub fn switch(data_dir: &Path, new: Installed) -> Result<(), OtaError> {
    let mut slots = Slots::load(data_dir)?;
    slots.previous = slots.active.take();
    slots.active = Some(new);
    slots.trial =
        Some(Trial { starts: 0, since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string() });
    slots.reverted = None;
    slots.save(data_dir)
}

/// The active binary is good: its trial ends and the previous binary's slot is freed.
pub fn mark_good(data_dir: &Path) -> Result<(), OtaError> {
    let mut slots = Slots::load(data_dir)?;
    slots.trial = None;
    let previous = slots.previous.take();
    slots.save(data_dir)?;
    if let Some(p) = previous.filter(|p| slots.active.as_ref().is_none_or(|a| a.slot != p.slot)) {
        let _ = std::fs::remove_file(binary(data_dir, p.slot));
    }
    Ok(())
}

/// The binary on trial found itself unhealthy: the previous one runs from the next start.
pub fn revert(data_dir: &Path, reason: String) -> Result<Option<Reverted>, OtaError> {
    let mut slots = Slots::load(data_dir)?;
    if slots.trial.is_none() {
        return Ok(None);
    }
    let out = slots.revert(data_dir, reason);
    slots.save(data_dir)?;
    Ok(out)
}

/// The last revert, forgotten once taken (it is reported once).
pub fn take_reverted(data_dir: &Path) -> Result<Option<Reverted>, OtaError> {
    let mut slots = Slots::load(data_dir)?;
    let out = slots.reverted.take();
    if out.is_some() {
        slots.save(data_dir)?;
    }
    Ok(out)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Copies `from` into `slot` as its binary: written beside it, made executable, synced, renamed
/// over it, the directory synced.
pub fn stage(from: &Path, data_dir: &Path, slot: Slot) -> Result<PathBuf, OtaError> {
    use std::os::unix::fs::PermissionsExt;
    let path = binary(data_dir, slot);
    let dir = path.parent().expect("a slot binary has a directory");
    std::fs::create_dir_all(dir).map_err(OtaError::io("cannot create", dir.to_owned()))?;
    let tmp = dir.join("vigil.new");
    let written = (|| {
        std::fs::copy(from, &tmp)?;
        let f = std::fs::File::open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        vigil_core::fsutil::sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(OtaError::io("cannot stage the new binary at", path.clone()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    /// A data directory whose slot `slot` holds an executable.
    fn with_binary(slot: Slot) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, b"#!/bin/sh\n").unwrap();
        stage(&src, d.path(), slot).unwrap();
        d
    }

    #[test]
    fn the_launcher_runs_a_slot_only_when_it_is_newer_than_the_package_and_runnable() {
        let d = with_binary(Slot::A);
        let mut slots = Slots::default();
        assert_eq!(slots.choose(d.path(), &v("0.1.0")), Launch::Package(None));
        slots.active = Some(Installed { slot: Slot::A, version: v("0.2.0"), sha256: None });
        assert_eq!(
            slots.choose(d.path(), &v("0.1.0")),
            Launch::Slot(slots.active.clone().unwrap(), binary(d.path(), Slot::A))
        );
        // apt installed 0.2.0 or newer: the package wins.
        for package in ["0.2.0", "0.3.0"] {
            let Launch::Package(Some(why)) = slots.choose(d.path(), &v(package)) else { panic!("the package wins") };
            assert!(why.contains(&format!("the installed package ({package}) is as new as or newer")), "{why}");
        }
        std::fs::remove_file(binary(d.path(), Slot::A)).unwrap();
        let Launch::Package(Some(why)) = slots.choose(d.path(), &v("0.1.0")) else { panic!("nothing to run") };
        assert!(why.contains("missing or not executable"), "{why}");
    }

    #[test]
    fn the_guard_reverts_a_binary_that_used_its_starts_before_the_next_start() {
        let d = with_binary(Slot::B);
        stage(&d.path().join("src"), d.path(), Slot::A).unwrap();
        let (old, new) = (
            Installed { slot: Slot::A, version: v("0.2.0"), sha256: None },
            Installed { slot: Slot::B, version: v("0.3.0"), sha256: None },
        );
        Slots { active: Some(old.clone()), ..Default::default() }.save(d.path()).unwrap();
        assert_eq!(guard(d.path(), &v("0.1.0")).unwrap(), Guarded::Nothing, "no trial: nothing counted");
        switch(d.path(), new.clone()).unwrap();
        assert_eq!(Slots::load(d.path()).unwrap().free(), None, "on trial: both slots are taken");
        for starts in 1..=MAX_STARTS {
            assert_eq!(guard(d.path(), &v("0.1.0")).unwrap(), Guarded::Counted { version: v("0.3.0"), starts });
        }
        let Guarded::Reverted(r) = guard(d.path(), &v("0.1.0")).unwrap() else { panic!("reverted") };
        assert_eq!(r.version, v("0.3.0"));
        assert!(r.reason.contains("did not mark itself good within 3 starts"), "{}", r.reason);
        let slots = Slots::load(d.path()).unwrap();
        assert_eq!((slots.active, slots.previous, slots.trial), (Some(old), None, None));
        assert!(!binary(d.path(), Slot::B).exists(), "the reverted binary is removed");
        assert!(binary(d.path(), Slot::A).exists());
        assert_eq!(take_reverted(d.path()).unwrap().map(|r| r.version), Some(v("0.3.0")));
        assert_eq!(take_reverted(d.path()).unwrap(), None, "reported once");
    }

    #[test]
    fn a_good_binary_frees_the_previous_slot_and_a_package_upgrade_ends_the_counting() {
        let d = with_binary(Slot::A);
        stage(&d.path().join("src"), d.path(), Slot::B).unwrap();
        Slots { active: Some(Installed { slot: Slot::A, version: v("0.2.0"), sha256: None }), ..Default::default() }
            .save(d.path())
            .unwrap();
        switch(d.path(), Installed { slot: Slot::B, version: v("0.3.0"), sha256: None }).unwrap();
        // apt installed 0.3.0 meanwhile: the package runs and the guard counts nothing.
        assert_eq!(guard(d.path(), &v("0.3.0")).unwrap(), Guarded::Nothing);
        assert_eq!(guard(d.path(), &v("0.1.0")).unwrap(), Guarded::Counted { version: v("0.3.0"), starts: 1 });
        mark_good(d.path()).unwrap();
        let slots = Slots::load(d.path()).unwrap();
        assert_eq!((&slots.trial, &slots.previous), (&None, &None));
        assert!(!binary(d.path(), Slot::A).exists(), "the previous binary's slot is freed");
        assert_eq!(slots.free(), Some(Slot::A));
        assert_eq!(guard(d.path(), &v("0.1.0")).unwrap(), Guarded::Nothing, "a good binary is not counted");
        // Only a binary on trial can take itself out.
        assert_eq!(revert(d.path(), "x".into()).unwrap(), None);
    }

    #[test]
    fn a_binary_damaged_on_disk_fails_its_recorded_hash() {
        let d = with_binary(Slot::A);
        let path = binary(d.path(), Slot::A);
        let (_, hash) = vigil_ota::repo::hash_file(&path, |_| {}).unwrap();
        let mut installed = Installed { slot: Slot::A, version: v("0.2.0"), sha256: Some(hex::encode(hash)) };
        assert_eq!(verify(&installed, &path), Ok(()));
        std::fs::write(&path, b"#!/bin/sh\nexit 1\n").unwrap();
        let e = verify(&installed, &path).unwrap_err();
        assert!(e.contains("does not match the SHA-256 signed for vigil 0.2.0"), "{e}");
        installed.sha256 = None;
        assert_eq!(verify(&installed, &path), Ok(()), "nothing recorded: nothing to check");
    }

    #[test]
    fn an_unreadable_state_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bin_dir(d.path())).unwrap();
        std::fs::write(bin_dir(d.path()).join(STATE), b"{").unwrap();
        let e = Slots::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("the packaged vigil runs; remove the file"), "{e}");
    }
}
