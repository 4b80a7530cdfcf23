//! The device's OTA state directory, written crash-safely (each file synced and renamed into
//! place, then the directory synced):
//!
//! ```text
//! <state>/trusted/root.json            the newest trusted root (the shipped root is the fallback)
//! <state>/trusted/timestamp.json       the last trusted timestamp, snapshot and targets: TUF's
//! <state>/trusted/snapshot.json        rollback checks compare new metadata with these
//! <state>/trusted/targets.json
//! <state>/trusted/latest_known_time.json  the latest time seen, capped at the earliest expiry of
//!                                      what was held then (docs/ota.md, "Time")
//! <state>/trusted/roots/N.root.json    every root trusted after the shipped one, in order (the
//!                                      launcher checks slot binaries against this chain offline)
//! <state>/minimum.json                 anti-rollback: the lowest version accepted, per target name
//! <state>/downloads/                   partial downloads (`.part`) and their validators
//! ```
//!
//! <state>/lock                         held (flock) by whoever refreshes, downloads or records
//!                                      a minimum: the service, or `vigil-ota fetch` run by hand
//!
//! A refresh keeps nothing until everything it fetched has verified; then each file is replaced
//! whole, the roots first. A crash in between leaves files that were each trusted, which the next
//! refresh's rollback checks compare with as they would with the older set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;

use crate::error::OtaError;

/// The latest time this device has seen, capped at the earliest expiry of the metadata it held
/// then (a JSON string, RFC 3339): [`crate::trust`].
pub const LATEST_KNOWN_TIME: &str = "latest_known_time.json";

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the state directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, OtaError> {
        let root = root.into();
        for dir in [root.clone(), root.join("trusted"), root.join("downloads")] {
            std::fs::create_dir_all(&dir).map_err(OtaError::io("cannot create", &dir))?;
        }
        Ok(Self { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn trusted(&self) -> PathBuf {
        self.root.join("trusted")
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Takes the state directory for one operation (a refresh, a download, a minimum): a second
    /// user (the service and a `vigil-ota fetch` run by hand, say) is refused until the first is
    /// done, instead of the two writing the same files. Released when dropped.
    pub fn lock(&self) -> Result<StateLock, OtaError> {
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(OtaError::io("cannot open", &path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(StateLock { file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(OtaError::Busy(format!(
                "{} is in use by another vigil or vigil-ota (a refresh, a download); try again when it has finished",
                self.root.display()
            ))),
            Err(e) => Err(OtaError::io("cannot lock", path)(e.into())),
        }
    }

    /// The bytes of a trusted metadata file, if there is one.
    pub fn trusted_file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.trusted().join(name)).ok()
    }

    /// Keeps `bytes` as the trusted file `name` (synced, renamed into place).
    pub fn keep(&self, name: &str, bytes: &[u8]) -> Result<(), OtaError> {
        write_synced(&self.trusted().join(name), bytes)
    }

    /// Keeps root `version` (verified by the refresh that walked to it) in the chain of roots.
    pub fn keep_root(&self, version: u64, bytes: &[u8]) -> Result<(), OtaError> {
        let dir = self.roots();
        std::fs::create_dir_all(&dir).map_err(OtaError::io("cannot create", &dir))?;
        write_synced(&crate::offline::root_file(&dir, version), bytes)
    }

    /// The chain of roots trusted after the shipped one ([`crate::offline`]).
    pub fn roots(&self) -> PathBuf {
        crate::offline::roots_in(&self.root)
    }

    /// Removes leftovers of refreshes a crash interrupted.
    pub fn tidy(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".refresh-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The lowest version this device accepts per target name.
    pub fn minimums(&self) -> Result<BTreeMap<String, Version>, OtaError> {
        let path = self.root.join("minimum.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                OtaError::Config(format!(
                    "{} is unreadable ({e}); it holds the anti-rollback minimums: restore it from a backup, \
                     or delete it to accept any signed version once",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(OtaError::io("cannot read", path)(e)),
        }
    }

    /// Raises the minimum for `name` to `version` (a signed downgrade lowers it).
    pub fn set_minimum(&self, name: &str, version: &Version) -> Result<(), OtaError> {
        let _lock = self.lock()?;
        let mut all = self.minimums()?;
        all.insert(name.to_owned(), version.clone());
        let path = self.root.join("minimum.json");
        write_synced(&path, &serde_json::to_vec_pretty(&all).expect("versions serialise"))
    }
}

/// The state directory taken by one user ([`StateDir::lock`]).
#[derive(Debug)]
pub struct StateLock {
    file: std::fs::File,
}

impl Drop for StateLock {
    /// Unlocks before the file is closed. Closing alone releases an flock only once every
    /// descriptor of the open file is closed, and a process spawned by another thread holds a
    /// copy of ours until it execs: under load, the next lock of the same directory was refused
    /// as "in use" (ota/tests/attacks.rs, beside another test binary).
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
    }
}

/// Replaces `path` with `bytes` durably (the file and its directory entry).
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), OtaError> {
    vigil_core::fsutil::write_durably(path, bytes).map_err(OtaError::io("cannot write", path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), OtaError> {
    vigil_core::fsutil::sync_dir(dir).map_err(OtaError::io("cannot sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimums_persist_and_an_unreadable_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path().join("ota")).unwrap();
        assert!(s.minimums().unwrap().is_empty());
        s.set_minimum("people", &Version::new(1, 2, 0)).unwrap();
        s.set_minimum("vigil", &Version::new(0, 3, 0)).unwrap();
        let again = StateDir::open(dir.path().join("ota")).unwrap();
        assert_eq!(again.minimums().unwrap()["people"], Version::new(1, 2, 0));
        std::fs::write(dir.path().join("ota/minimum.json"), b"{").unwrap();
        let e = again.minimums().unwrap_err().to_string();
        assert!(e.contains("anti-rollback") && e.contains("restore it"), "{e}");
    }

    #[test]
    fn trusted_files_are_replaced_whole_and_leftovers_of_old_refreshes_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.keep("timestamp.json", b"old").unwrap();
        s.keep("timestamp.json", b"new").unwrap();
        assert_eq!(s.trusted_file("timestamp.json").unwrap(), b"new");
        // A scratch directory of an older release's refresh (through tough), left by a crash.
        let left = dir.path().join(".refresh-abc");
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("root.json"), b"root").unwrap();
        s.tidy();
        assert!(!left.exists(), "a crashed refresh's scratch directory is removed");
    }

    #[test]
    fn a_second_user_is_refused_and_a_released_lock_is_free_whoever_holds_a_copy_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let lock = s.lock().unwrap();
        assert!(matches!(s.lock(), Err(OtaError::Busy(_))), "a second user waits");
        // What a process spawned by another thread holds until it execs: a copy of the
        // descriptor, on the same open file.
        let inherited = lock.file.try_clone().unwrap();
        drop(lock);
        let again = s.lock();
        drop(inherited);
        again.expect("released, though a copy of its descriptor is still open");
    }
}
