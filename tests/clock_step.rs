//! NTP steps the wall clock while an object is tracked, with the real binary: the wall clock is
//! stepped under libfaketime while the monotonic clock runs untouched, as on a Jetson without
//! an RTC battery when NTP syncs after boot. Before durations moved to the monotonic clock, a
//! +1 h step ended the object's event as `lost` and opened a new one.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

/// libfaketime, as `make setup` installs it (Debian's `libfaketime`).
fn libfaketime() -> PathBuf {
    let candidates =
        ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"];
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    found.expect("libfaketime is installed (make setup installs Debian's libfaketime)")
}

/// The stored events (`vigil events list`); `None` while there is no store or service to ask.
fn stored_events(data: &Path) -> Option<Vec<serde_json::Value>> {
    let d = data.to_str().unwrap();
    let (code, out, _) = vigil_cmd(&["events", "list", "--json", "--data-dir", d], &[]);
    (code == 0).then(|| out.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

#[test]
fn a_wall_clock_step_forward_and_back_leaves_the_tracked_ball_one_event_with_its_true_dwell() {
    let dir = tempfile::tempdir().unwrap();
    // No broker: events stay in the store, which is what this test reads.
    let broker = format!("mqtt://127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), "step", &broker, &[("ball", "test://ball".into())]);
    let data = dir.path().join("data");
    // libfaketime reads the offset of the wall clock from this file at every call.
    let offset = dir.path().join("wall-offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let lib = libfaketime();
    let vigil = Vigil::start_with_env(
        &config,
        dir.path(),
        &[
            ("LD_PRELOAD", &lib),
            ("FAKETIME_TIMESTAMP_FILE", &offset),
            ("FAKETIME_NO_CACHE", Path::new("1")),
            ("FAKETIME_DONT_FAKE_MONOTONIC", Path::new("1")),
        ],
    );
    let open = wait_until(Duration::from_secs(30), || stored_events(&data).is_some_and(|events| !events.is_empty()));
    assert!(open, "the ball became an event; log:\n{}", vigil.log());
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&offset, "+1h\n").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    std::fs::write(&offset, "+0\n").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("wall clock stepped"), "the steps happened: {log}");

    let events = stored_events(&data).expect("the stopped store reads");
    let ball: Vec<&serde_json::Value> = events.iter().filter(|e| e["camera_id"] == "ball").collect();
    assert_eq!(ball.len(), 1, "one event, not one lost and one new at the step: {events:#?}");
    let e = ball[0];
    assert_eq!(e["end_reason"], "shutdown", "{e:#}");
    // True dwell: about the 11 s it was watched, not an hour more or less.
    let dwell = e["dwell_s"].as_f64().unwrap();
    assert!((8.0..60.0).contains(&dwell), "dwell {dwell} s: {e:#}");
    // Labels never went back: the last sighting is after the start.
    assert!(e["last_ns"].as_u64() >= e["start_ns"].as_u64(), "{e:#}");
}
