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
use std::time::{Duration, SystemTime};

use semver::Version;
use serde::{Deserialize, Serialize};
use vigil_ota::OtaError;

/// Starts a new binary gets to mark itself good; the guard reverts it before the one after.
/// vigil.service has no start limit, so every one of them happens (tests/ab.rs checks, also
/// for bad updates back to back).
pub const MAX_STARTS: u32 = 3;

/// The longest a binary stays on trial: a start later than this after the switch reverts it,
/// whatever its count (a binary that runs on without ever marking itself good, or a device
/// switched off mid-trial). A clock that reads earlier than the switch does not expire it.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Set by the launcher for the slot binary it runs (and so never launched twice).
pub const ENV_SLOT: &str = "VIGIL_SLOT";

/// systemd's id of one start of a unit: the same for its `ExecStartPre=` and `ExecStart=`
/// commands, new at each start. The guard records it with the count; the launcher counts a start
/// itself unless the guard recorded this one (docs/ota.md).
pub const ENV_INVOCATION: &str = "INVOCATION_ID";

const STATE: &str = "slots.json";

/// Fields a newer vigil wrote that this one does not know: kept as they were when the state is
/// saved again, so that the packaged guard and an OTA'd binary can share the file both ways.
type Unknown = serde_json::Map<String, serde_json::Value>;

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
    #[serde(flatten)]
    pub unknown: Unknown,
}

impl Installed {
    pub fn new(slot: Slot, version: Version, sha256: Option<String>) -> Self {
        Self { slot, version, sha256, unknown: Unknown::new() }
    }
}

/// A binary that has not marked itself good yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Starts counted so far.
    pub starts: u32,
    /// When it was switched to (RFC 3339); see [`TRIAL_TIMEOUT`].
    pub since: String,
    /// The systemd invocation whose start was counted last ([`ENV_INVOCATION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// A binary the guard (or the binary itself) took out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reverted {
    pub version: Version,
    pub reason: String,
}

/// `bin/slots.json`. Unknown fields are kept, not refused: the guard that reads it is the
/// package's, often older than the binary that wrote it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// What `vigil run` runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// The packaged binary (itself), and why not a slot's when one is active.
    Package(Option<String>),
    Slot(Installed, PathBuf),
    /// The binary kept to go back to, because the one on trial may not run at this start: why.
    Previous(Installed, PathBuf, String),
}

/// What the guard did before a start.
#[derive(Debug, Clone, PartialEq)]
pub enum Guarded {
    /// No binary on trial (or the package wins, or this start is counted already): nothing to
    /// count.
    Nothing,
    /// The binary on trial gets its `starts`th start.
    Counted { version: Version, starts: u32 },
    /// The binary on trial used its starts (or its time): the previous one is back.
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

/// This start's systemd invocation id, if systemd (or the test supervisor) started it.
pub fn invocation() -> Option<String> {
    std::env::var(ENV_INVOCATION).ok().filter(|s| !s.is_empty())
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

    /// What the launcher runs, for a package of version `package`. A binary on trial past
    /// [`MAX_STARTS`] is never chosen, whoever should have reverted it.
    pub fn choose(&self, data_dir: &Path, package: &Version) -> Launch {
        let Some(active) = &self.active else { return Launch::Package(None) };
        if active.version <= *package {
            return Launch::Package(Some(format!(
                "the installed package ({package}) is as new as or newer than vigil {} in slot {}",
                active.version,
                active.slot.name()
            )));
        }
        if let Some(t) = self.trial.as_ref().filter(|t| t.starts > MAX_STARTS) {
            let why = format!(
                "vigil {} on trial has had {} starts, past its {MAX_STARTS}, and was not reverted",
                active.version, t.starts
            );
            return self.previous_or_package(data_dir, package, why);
        }
        let path = binary(data_dir, active.slot);
        if !is_executable(&path) {
            return Launch::Package(Some(format!("{} is missing or not executable", path.display())));
        }
        Launch::Slot(active.clone(), path)
    }

    /// The binary kept to go back to when it is runnable and newer than the package, else the
    /// package; `why` the active one may not run.
    fn previous_or_package(&self, data_dir: &Path, package: &Version, why: String) -> Launch {
        if let Some(p) = self.previous.as_ref().filter(|p| p.version > *package) {
            let path = binary(data_dir, p.slot);
            if is_executable(&path) {
                return Launch::Previous(p.clone(), path, why);
            }
        }
        Launch::Package(Some(why))
    }

    /// Takes the active binary out for `reason` (the previous one runs again). Returns the slot
    /// whose binary to remove once this state is saved.
    fn revert(&mut self, reason: String) -> Option<(Reverted, Option<Slot>)> {
        let out = self.active.take()?;
        self.active = self.previous.take();
        self.trial = None;
        let remove = self.active.as_ref().is_none_or(|a| a.slot != out.slot).then_some(out.slot);
        let reverted = Reverted { version: out.version, reason };
        self.reverted = Some(reverted.clone());
        Some((reverted, remove))
    }

    /// Counts this start of a binary on trial (in memory), or reverts it when it has used its
    /// starts or its time. `None`: nothing to count (no trial, the package wins, or the start of
    /// `invocation` was counted already). The slot to remove goes with a revert.
    fn count_start(
        &mut self,
        data_dir: &Path,
        package: &Version,
        invocation: Option<&str>,
        now: SystemTime,
    ) -> Option<(Guarded, Option<Slot>)> {
        let trial = self.trial.as_ref()?;
        if invocation.is_some() && trial.counted.as_deref() == invocation {
            return None;
        }
        let active = match self.choose(data_dir, package) {
            Launch::Slot(active, _) => active,
            // Past its starts: put back below. Anything else runs the package without a count.
            Launch::Previous(..) => self.active.clone()?,
            Launch::Package(_) => return None,
        };
        let since = humantime::parse_rfc3339(&trial.since).ok();
        let trial = self.trial.as_mut().expect("checked above");
        trial.starts += 1;
        trial.counted = invocation.map(str::to_owned);
        let starts = trial.starts;
        let expired = since.and_then(|s| now.duration_since(s).ok()).filter(|d| *d > TRIAL_TIMEOUT);
        let reason = if starts > MAX_STARTS {
            format!(
                "vigil {} did not mark itself good within {MAX_STARTS} starts (it crashed, hung before READY, \
                 stopped its watchdog or stopped before its health window ended)",
                active.version
            )
        } else if let Some(d) = expired {
            format!(
                "vigil {} was on trial for {} without marking itself good (at most {})",
                active.version,
                humantime::format_duration(Duration::from_secs(d.as_secs())),
                humantime::format_duration(TRIAL_TIMEOUT)
            )
        } else {
            return Some((Guarded::Counted { version: active.version, starts }, None));
        };
        let (reverted, remove) = self.revert(reason).expect("a slot is active");
        Some((Guarded::Reverted(reverted), remove))
    }
}

/// Removes the binary of a slot that was taken out, and its voucher (after the state saying so
/// is on disk).
fn remove_slot_binary(data_dir: &Path, slot: Option<Slot>) {
    if let Some(slot) = slot {
        let _ = std::fs::remove_file(binary(data_dir, slot));
        let _ = std::fs::remove_file(voucher(data_dir, slot));
    }
}

/// The guard (`vigil slots guard`, `ExecStartPre=`): counts this start of a binary on trial and,
/// past [`MAX_STARTS`] or [`TRIAL_TIMEOUT`], restores the previous binary before it. An error:
/// the count could not be saved, and [`launch`] will not run the binary on trial.
pub fn guard(data_dir: &Path, package: &Version, invocation: Option<&str>) -> Result<Guarded, OtaError> {
    let mut slots = Slots::load(data_dir)?;
    let Some((out, remove)) = slots.count_start(data_dir, package, invocation, SystemTime::now()) else {
        return Ok(Guarded::Nothing);
    };
    slots.save(data_dir)?;
    remove_slot_binary(data_dir, remove);
    Ok(out)
}

/// What the launcher (`vigil run`, the package's code) runs at this start. A start of a binary
/// on trial that the guard did not count for `invocation` (no `ExecStartPre=`, or it could not
/// save) is counted here; a start that cannot be counted never runs the binary on trial.
pub fn launch(data_dir: &Path, package: &Version, invocation: Option<&str>) -> Launch {
    let mut slots = match Slots::load(data_dir) {
        Ok(s) => s,
        Err(e) => return Launch::Package(Some(e.to_string())),
    };
    let before = slots.clone();
    if let Some((out, remove)) = slots.count_start(data_dir, package, invocation, SystemTime::now()) {
        if let Err(e) = slots.save(data_dir) {
            let version = before.active.as_ref().map_or_else(String::new, |a| a.version.to_string());
            let why = format!(
                "this start of vigil {version} on trial could not be counted ({e}); it runs only on a start \
                 that is counted: free space on, or make writable, {}",
                bin_dir(data_dir).display()
            );
            // The state on disk is still the one before this start's count.
            return before.previous_or_package(data_dir, package, why);
        }
        remove_slot_binary(data_dir, remove);
        if let Guarded::Reverted(r) = out {
            tracing::error!("{}; the previous vigil runs from this start", r.reason);
        }
    }
    slots.choose(data_dir, package)
}

/// The signed targets metadata kept beside a slot's binary: what the launcher checks it against.
pub fn voucher(data_dir: &Path, slot: Slot) -> PathBuf {
    bin_dir(data_dir).join(slot.name()).join("targets.json")
}

/// Opens the binary at `path` for the launcher to run, once its bytes are found to be vigil
/// `installed.version` as signed by this device's update repository: the kept targets metadata
/// beside it, verified through the chain of roots from `shipped_root` ([`vigil_ota::offline`]).
/// The file that was read is the file that runs ([`exec`]): nothing is opened again by path.
/// `Err` says why it may not run.
pub fn open_signed(
    installed: &Installed,
    path: &Path,
    data_dir: &Path,
    shipped_root: Option<&Path>,
) -> Result<std::fs::File, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let (length, sha256) =
        vigil_ota::repo::hash_reader(&mut file, |_| {}).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let unsigned =
        |why: String| format!("{} is not vigil {} as signed for this device: {why}", path.display(), installed.version);
    if installed.sha256.as_ref().is_some_and(|want| *want != hex::encode(&sha256)) {
        return Err(unsigned("it does not match the SHA-256 signed for it (damaged on disk, or replaced)".into()));
    }
    let root =
        shipped_root.ok_or_else(|| unsigned("the configuration names no [ota] root to check it against".into()))?;
    let voucher = voucher(data_dir, installed.slot);
    let targets = std::fs::read(&voucher).map_err(|e| unsigned(format!("cannot read {}: {e}", voucher.display())))?;
    let roots = vigil_ota::offline::roots_in(&crate::ota_dir(data_dir));
    let found = vigil_ota::offline::signed_as(root, &roots, &targets, length, &sha256).map_err(unsigned)?;
    let is_it = |m: &vigil_ota::TargetMeta| {
        m.kind == vigil_ota::Kind::Binary && m.name == BINARY_TARGET && m.version == installed.version
    };
    if !found.iter().any(|(_, m)| is_it(m)) {
        return Err(unsigned(format!(
            "no signed vigil {} target has its length ({length} bytes) and SHA-256",
            installed.version
        )));
    }
    Ok(file)
}

/// The name vigil's own binary is signed under (`vigil-ota add --kind binary --name vigil`).
pub const BINARY_TARGET: &str = "vigil";

/// Runs the open `file` in place of this process (`fexecve`: the bytes checked, not whatever a
/// path names by now) with `args` (the first is argv\[0\]) and this environment plus `env`.
/// Returns only on failure. The descriptor is left open across the exec so that a script's
/// interpreter can read it (`/dev/fd/N`); for an ELF binary it is one harmless read-only fd.
pub fn exec(file: std::fs::File, args: &[std::ffi::OsString], env: &[(&str, &str)]) -> std::io::Error {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let cstring = |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::other("an argument holds a NUL byte"));
    let argv: Result<Vec<CString>, _> = args.iter().map(|a| cstring(a.as_bytes())).collect();
    let mut vars: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        std::env::vars_os().filter(|(k, _)| !env.iter().any(|(n, _)| k.as_bytes() == n.as_bytes())).collect();
    vars.extend(env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    let envp: Result<Vec<CString>, _> =
        vars.iter().map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat())).collect();
    let (argv, envp) = match (argv, envp) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let ptrs =
        |v: &[CString]| v.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect::<Vec<_>>();
    let (argv_ptrs, envp_ptrs) = (ptrs(&argv), ptrs(&envp));
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open for the call (owned by `file`, dropped only on failure below); the
    // pointer arrays are NUL-terminated and point into `argv`/`envp`, which outlive the call.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
            return std::io::Error::last_os_error();
        }
        libc::fexecve(fd, argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
    }
    std::io::Error::last_os_error()
}

/// Why `path` did not run (`error`, from [`exec`]), naming a data directory mounted `noexec`.
pub fn cannot_run(path: &Path, error: &std::io::Error) -> String {
    let noexec = rustix::fs::statvfs(path).is_ok_and(|fs| fs.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC));
    let hint = if noexec { " (its file system is mounted noexec: mount the data directory with exec)" } else { "" };
    format!("cannot run {}: {error}{hint}", path.display())
}

static LAUNCH_NOTE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Why the launcher ran the packaged binary instead of the active slot's (read when the start
/// reports the update's outcome, so that it names the real cause).
pub fn note_launch(why: String) {
    let _ = LAUNCH_NOTE.set(why);
}

/// What [`note_launch`] recorded in this process.
pub fn launch_note() -> Option<&'static str> {
    LAUNCH_NOTE.get().map(String::as_str)
}

/// Makes `new` the active binary, on trial; the one running now is kept to go back to.
pub fn switch(data_dir: &Path, new: Installed) -> Result<(), OtaError> {
    let mut slots = Slots::load(data_dir)?;
    slots.previous = slots.active.take();
    slots.active = Some(new);
    slots.trial = Some(Trial {
        starts: 0,
        since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        counted: None,
        unknown: Unknown::new(),
    });
    slots.reverted = None;
    slots.save(data_dir)
}

/// The active binary is good: its trial ends and the previous binary's slot is freed.
pub fn mark_good(data_dir: &Path) -> Result<(), OtaError> {
    let mut slots = Slots::load(data_dir)?;
    slots.trial = None;
    let previous = slots.previous.take();
    slots.save(data_dir)?;
    remove_slot_binary(
        data_dir,
        previous.filter(|p| slots.active.as_ref().is_none_or(|a| a.slot != p.slot)).map(|p| p.slot),
    );
    Ok(())
}

/// The binary on trial found itself unhealthy: the previous one runs from the next start.
pub fn revert(data_dir: &Path, reason: String) -> Result<Option<Reverted>, OtaError> {
    let mut slots = Slots::load(data_dir)?;
    if slots.trial.is_none() {
        return Ok(None);
    }
    let Some((out, remove)) = slots.revert(reason) else { return Ok(None) };
    // Saved first: a binary removed while the state still named it would leave nothing to run.
    slots.save(data_dir)?;
    remove_slot_binary(data_dir, remove);
    Ok(Some(out))
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
        slots.active = Some(Installed::new(Slot::A, v("0.2.0"), None));
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
        let (old, new) = (Installed::new(Slot::A, v("0.2.0"), None), Installed::new(Slot::B, v("0.3.0"), None));
        Slots { active: Some(old.clone()), ..Default::default() }.save(d.path()).unwrap();
        assert_eq!(guard(d.path(), &v("0.1.0"), None).unwrap(), Guarded::Nothing, "no trial: nothing counted");
        switch(d.path(), new.clone()).unwrap();
        assert_eq!(Slots::load(d.path()).unwrap().free(), None, "on trial: both slots are taken");
        for starts in 1..=MAX_STARTS {
            assert_eq!(guard(d.path(), &v("0.1.0"), None).unwrap(), Guarded::Counted { version: v("0.3.0"), starts });
        }
        let Guarded::Reverted(r) = guard(d.path(), &v("0.1.0"), None).unwrap() else { panic!("reverted") };
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
        Slots { active: Some(Installed::new(Slot::A, v("0.2.0"), None)), ..Default::default() }.save(d.path()).unwrap();
        switch(d.path(), Installed::new(Slot::B, v("0.3.0"), None)).unwrap();
        // apt installed 0.3.0 meanwhile: the package runs and the guard counts nothing.
        assert_eq!(guard(d.path(), &v("0.3.0"), None).unwrap(), Guarded::Nothing);
        assert_eq!(guard(d.path(), &v("0.1.0"), None).unwrap(), Guarded::Counted { version: v("0.3.0"), starts: 1 });
        mark_good(d.path()).unwrap();
        let slots = Slots::load(d.path()).unwrap();
        assert_eq!((&slots.trial, &slots.previous), (&None, &None));
        assert!(!binary(d.path(), Slot::A).exists(), "the previous binary's slot is freed");
        assert_eq!(slots.free(), Some(Slot::A));
        assert_eq!(guard(d.path(), &v("0.1.0"), None).unwrap(), Guarded::Nothing, "a good binary is not counted");
        // Only a binary on trial can take itself out.
        assert_eq!(revert(d.path(), "x".into()).unwrap(), None);
    }

    #[test]
    fn a_binary_runs_only_with_its_recorded_hash_and_signed_metadata() {
        let d = with_binary(Slot::A);
        let path = binary(d.path(), Slot::A);
        let (_, hash) = vigil_ota::repo::hash_file(&path, |_| {}).unwrap();
        let installed = Installed::new(Slot::A, v("0.2.0"), Some(hex::encode(hash)));
        // The hash matches, but nothing signed says so (tests/ab.rs and vigil-ota's own tests
        // cover the signed paths).
        let e = open_signed(&installed, &path, d.path(), None).unwrap_err();
        assert!(
            e.contains("is not vigil 0.2.0 as signed for this device: the configuration names no [ota] root"),
            "{e}"
        );
        let e = open_signed(&installed, &path, d.path(), Some(&d.path().join("root.json"))).unwrap_err();
        assert!(e.contains("targets.json"), "{e}");
        std::fs::write(&path, b"#!/bin/sh\nexit 1\n").unwrap();
        let e = open_signed(&installed, &path, d.path(), None).unwrap_err();
        assert!(e.contains("does not match the SHA-256 signed for it"), "{e}");
    }

    #[test]
    fn an_unreadable_state_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bin_dir(d.path())).unwrap();
        std::fs::write(bin_dir(d.path()).join(STATE), b"{").unwrap();
        let e = Slots::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("the packaged vigil runs; remove the file"), "{e}");
    }

    /// Slot a holds 0.2.0 (good), slot b 0.3.0 on trial; the package is 0.1.0.
    fn on_trial() -> tempfile::TempDir {
        let d = with_binary(Slot::A);
        stage(&d.path().join("src"), d.path(), Slot::B).unwrap();
        Slots { active: Some(Installed::new(Slot::A, v("0.2.0"), None)), ..Default::default() }.save(d.path()).unwrap();
        switch(d.path(), Installed::new(Slot::B, v("0.3.0"), None)).unwrap();
        d
    }

    #[test]
    fn a_start_is_counted_once_by_the_guard_or_else_by_the_launcher() {
        let d = on_trial();
        let slot_b = Launch::Slot(Installed::new(Slot::B, v("0.3.0"), None), binary(d.path(), Slot::B));
        assert_eq!(
            guard(d.path(), &v("0.1.0"), Some("i1")).unwrap(),
            Guarded::Counted { version: v("0.3.0"), starts: 1 }
        );
        assert_eq!(launch(d.path(), &v("0.1.0"), Some("i1")), slot_b, "counted by the guard: runs");
        assert_eq!(Slots::load(d.path()).unwrap().trial.unwrap().starts, 1, "not counted twice");
        // No guard ran for this start (a unit without ExecStartPre=): the launcher counts it.
        assert_eq!(launch(d.path(), &v("0.1.0"), Some("i2")), slot_b);
        let trial = Slots::load(d.path()).unwrap().trial.unwrap();
        assert_eq!((trial.starts, trial.counted.as_deref()), (2, Some("i2")));
        assert_eq!(guard(d.path(), &v("0.1.0"), Some("i2")).unwrap(), Guarded::Nothing, "already counted");
        launch(d.path(), &v("0.1.0"), Some("i3"));
        // The fourth start is the previous binary's: the launcher reverts by itself.
        let Launch::Slot(back, _) = launch(d.path(), &v("0.1.0"), Some("i4")) else { panic!("the previous binary") };
        assert_eq!((back.slot, back.version), (Slot::A, v("0.2.0")));
        let slots = Slots::load(d.path()).unwrap();
        assert!(slots.reverted.unwrap().reason.contains("within 3 starts"));
        assert!(!binary(d.path(), Slot::B).exists(), "the reverted binary is removed after the state is saved");
    }

    #[test]
    fn a_trial_past_its_starts_is_never_chosen_even_when_nothing_reverted_it() {
        let d = on_trial();
        let mut slots = Slots::load(d.path()).unwrap();
        slots.trial.as_mut().unwrap().starts = MAX_STARTS + 1;
        let Launch::Previous(p, _, why) = slots.choose(d.path(), &v("0.1.0")) else { panic!("the previous binary") };
        assert_eq!(p.slot, Slot::A);
        assert!(why.contains("has had 4 starts, past its 3"), "{why}");
        // Kept to go back to only while it is newer than the package.
        let Launch::Package(Some(why)) = slots.choose(d.path(), &v("0.2.5")) else { panic!("the package") };
        assert!(why.contains("past its 3"), "{why}");
    }

    #[test]
    fn a_trial_older_than_its_time_bound_is_reverted_at_the_next_start() {
        let d = on_trial();
        let mut slots = Slots::load(d.path()).unwrap();
        let switched = SystemTime::now() - TRIAL_TIMEOUT - Duration::from_secs(60);
        slots.trial.as_mut().unwrap().since = humantime::format_rfc3339_seconds(switched).to_string();
        slots.save(d.path()).unwrap();
        let Guarded::Reverted(r) = guard(d.path(), &v("0.1.0"), Some("i1")).unwrap() else { panic!("reverted") };
        assert!(r.reason.contains("was on trial for 1h 1m") && r.reason.contains("at most 1h"), "{}", r.reason);
        // A clock behind the switch (a board without its time yet) does not expire a trial.
        let d = on_trial();
        let mut slots = Slots::load(d.path()).unwrap();
        let ahead = SystemTime::now() + 10 * TRIAL_TIMEOUT;
        slots.trial.as_mut().unwrap().since = humantime::format_rfc3339_seconds(ahead).to_string();
        slots.save(d.path()).unwrap();
        assert_eq!(guard(d.path(), &v("0.1.0"), None).unwrap(), Guarded::Counted { version: v("0.3.0"), starts: 1 });
    }

    #[test]
    fn fields_a_newer_vigil_wrote_are_read_and_kept() {
        let d = on_trial();
        let path = bin_dir(d.path()).join(STATE);
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["boot_counter"] = 7.into();
        json["active"]["signature"] = "abc".into();
        json["trial"]["deadline"] = "later".into();
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        assert!(matches!(guard(d.path(), &v("0.1.0"), None).unwrap(), Guarded::Counted { starts: 1, .. }));
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            (
                &saved["boot_counter"],
                &saved["active"]["signature"],
                &saved["trial"]["deadline"],
                &saved["trial"]["starts"]
            ),
            (&7.into(), &"abc".into(), &"later".into(), &1.into())
        );
    }
}
