//! The device's clock against the signed metadata's expiry: `vigil-ota fetch` (the service's
//! trust and transport) run under libfaketime, its wall clock set ahead and then right again,
//! against a real HTTPS server. A clock that was ahead must not block updates once it is right;
//! metadata the device once saw expire must not be trusted again (docs/ota.md, "Time").

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use vigil_ota::repo::Expiry;

/// libfaketime, as `make setup` installs it (Debian's `libfaketime`).
fn libfaketime() -> PathBuf {
    let candidates =
        ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"];
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    found.expect("libfaketime is installed (make setup installs Debian's libfaketime)")
}

/// `vigil-ota fetch` of the newest `people` with the wall clock `offset` away from the real one
/// (`+20h`, `+400d`; `None`: the real clock). Returns the exit code and stderr.
async fn fetch(f: &Fixture, offset: Option<&str>) -> (i32, String) {
    let c = f.config();
    let out = f.dest("fetched.tar");
    let _ = std::fs::remove_file(&out);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vigil-ota"));
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    cmd.args(["fetch", "--metadata-url", c.metadata_url.as_str(), "--targets-url", c.targets_url.as_str()])
        .args(["--root", &p(&c.shipped_root), "--ca", &p(&c.ca), "--state", &p(&c.state_dir)])
        .args(["--name", MODEL, "--out", &p(&out), "--assume-synchronized"]);
    if let Some(offset) = offset {
        cmd.env("LD_PRELOAD", libfaketime()).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    let o = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await.expect("vigil-ota ends").unwrap();
    let code = o.status.code().unwrap_or(-1);
    if code == 0 {
        assert!(out.exists(), "a successful fetch leaves the file");
    }
    (code, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_that_was_20_hours_ahead_blocks_nothing_once_it_is_right() {
    // The repository's timestamp is valid for a day (the default).
    let f = Fixture::new(1, 1, 4096).await;
    let (code, err) = fetch(&f, Some("+20h")).await;
    assert_eq!(code, 0, "a clock 20 h ahead still finds the day-long timestamp valid: {err}");
    let (code, err) = fetch(&f, None).await;
    assert_eq!(code, 0, "the clock is right again; the next check updates: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_that_was_400_days_ahead_blocks_nothing_once_it_is_right() {
    let days = |d: u64| Duration::from_secs(d * 86_400);
    let long =
        Expiry { root: days(900), targets: days(900), snapshot: days(900), timestamp: days(800), delegated: days(900) };
    let f = Fixture::with_expiry(1, 1, 4096, long).await;
    let (code, err) = fetch(&f, Some("+400d")).await;
    assert_eq!(code, 0, "metadata valid for 800 days is valid 400 days ahead: {err}");
    let (code, err) = fetch(&f, None).await;
    assert_eq!(code, 0, "the clock is right again; the next check updates: {err}");
    f.add("models/people-1.1.0", &payload(4096, 2), &model("1.1.0")).await;
    let (code, err) = fetch(&f, None).await;
    assert_eq!(code, 0, "and a new version after it: {err}");
    let fetched = std::fs::read(f.dest("fetched.tar")).unwrap();
    assert_eq!(fetched, payload(4096, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_the_device_saw_expire_is_not_trusted_again_until_it_is_re_signed() {
    let f = Fixture::new(1, 1, 4096).await;
    let (code, err) = fetch(&f, None).await;
    assert_eq!(code, 0, "{err}");
    // Two days on, the day-long timestamp has expired: refused, and the device remembers seeing it.
    let (code, err) = fetch(&f, Some("+2d")).await;
    assert_ne!(code, 0, "an expired timestamp is refused");
    assert!(err.contains("expired"), "{err}");
    // Set back (by an attacker, or corrected), the clock would make the same timestamp look fresh.
    let (code, err) = fetch(&f, None).await;
    assert_ne!(code, 0, "the timestamp it saw expire is not revived by a clock set back");
    assert!(err.contains("which this device saw expire"), "{err}");
    // The online key's next signing is taken at the next check.
    vigil_ota::repo::refresh(&f.repo(), &f.keys.roles.timestamp, None, &f.expiry).await.unwrap();
    let (code, err) = fetch(&f, None).await;
    assert_eq!(code, 0, "a re-signed timestamp is accepted: {err}");
}
