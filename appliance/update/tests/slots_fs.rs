//! The A/B guard and launcher on real file systems that refuse the count: a full one (ENOSPC)
//! and a read-only one (EROFS). Each test mounts a small tmpfs, which needs root, as the README's
//! test command runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use semver::Version;
use vigil_update::slots::{self, Guarded, Installed, Launch, Slot, Slots};

/// A tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(path).output().unwrap();
        assert!(
            out.status.success(),
            "this test mounts a 1 MiB tmpfs, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_owned())
    }

    /// Fills it to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
    }

    fn read_only(&self) {
        let out = Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "remount read-only: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

/// A data directory on its own tmpfs with 0.3.0 on trial in slot b, one start counted; slot a
/// holds 0.2.0, kept to go back to when `with_previous`.
fn on_trial(dir: &Path, with_previous: bool) -> (Tmpfs, PathBuf) {
    let data = dir.join("data");
    let fs = Tmpfs::mount(&data);
    let src = dir.join("vigil");
    std::fs::write(&src, b"#!/bin/sh\n").unwrap();
    let mut slots = Slots::default();
    if with_previous {
        slots::stage(&src, &data, Slot::A).unwrap();
        slots.active = Some(Installed::new(Slot::A, v("0.2.0"), None));
    }
    slots.save(&data).unwrap();
    slots::stage(&src, &data, Slot::B).unwrap();
    slots::switch(&data, Installed::new(Slot::B, v("0.3.0"), None)).unwrap();
    let package = v("0.1.0");
    assert_eq!(slots::guard(&data, &package, Some("i1")).unwrap(), Guarded::Counted { version: v("0.3.0"), starts: 1 });
    assert!(matches!(slots::launch(&data, &package, Some("i1")), Launch::Slot(i, _) if i.slot == Slot::B));
    (fs, data)
}

#[test]
fn a_start_that_cannot_be_counted_never_runs_the_binary_on_trial() {
    for (how, errno) in [("full", "No space left on device"), ("read-only", "Read-only file system")] {
        for with_previous in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (fs, data) = on_trial(dir.path(), with_previous);
            if how == "full" {
                fs.fill()
            } else {
                fs.read_only()
            }
            let package = v("0.1.0");
            let e = slots::guard(&data, &package, Some("i2")).unwrap_err().to_string();
            assert!(e.contains(errno), "{how}: {e}");
            let why = match slots::launch(&data, &package, Some("i2")) {
                Launch::Previous(p, path, why) if with_previous => {
                    assert_eq!((p.slot, p.version, path), (Slot::A, v("0.2.0"), slots::binary(&data, Slot::A)));
                    why
                }
                Launch::Package(Some(why)) if !with_previous => why,
                other => panic!("{how}, previous {with_previous}: the binary on trial must not run: {other:?}"),
            };
            assert!(why.contains("this start of vigil 0.3.0 on trial could not be counted"), "{why}");
            assert!(why.contains(errno) && why.contains("free space on, or make writable"), "{why}");
            let state = Slots::load(&data).unwrap();
            assert_eq!(state.trial.map(|t| t.starts), Some(1), "{how}: the state on disk is unchanged");
            assert!(slots::binary(&data, Slot::B).exists());
        }
    }
}

#[test]
fn a_revert_that_cannot_be_saved_keeps_the_binary_the_state_names() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, data) = on_trial(dir.path(), true);
    fs.fill();
    let e = slots::revert(&data, "unhealthy".into()).unwrap_err().to_string();
    assert!(e.contains("No space left on device"), "{e}");
    let state = Slots::load(&data).unwrap();
    assert_eq!(state.active.map(|a| a.slot), Some(Slot::B), "the revert was not recorded");
    assert!(slots::binary(&data, Slot::B).exists(), "so the binary it names is still there");
}

#[test]
fn a_binary_that_cannot_run_from_a_noexec_data_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _fs = Tmpfs::mount(&data);
    let out = Command::new("mount").args(["-o", "remount,noexec"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "remount noexec: {}", String::from_utf8_lossy(&out.stderr));
    let path = data.join("vigil");
    std::fs::write(&path, b"#!/bin/sh\n").unwrap();
    // What exec answers for a file on a noexec file system.
    let refused = std::io::Error::from_raw_os_error(libc::EACCES);
    let why = slots::cannot_run(&path, &refused);
    assert!(why.contains("mounted noexec: mount the data directory with exec"), "{why}");
    // Elsewhere the reason is the error alone.
    let elsewhere = slots::cannot_run(&dir.path().join("vigil"), &refused);
    assert!(!elsewhere.contains("noexec"), "{elsewhere}");
}
