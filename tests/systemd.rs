//! vigil under a supervisor that follows systemd's `Type=notify`, watchdog and restart rules
//! (`vigil_testkit::supervisor`; systemd cannot be PID 1 here), with the unit's settings from
//! `appliance/vigil/package/vigil.service`: READY once started, a status line, watchdog pings,
//! STOPPING and a clean exit on stop; a process that stops making progress is aborted by the
//! watchdog and started again.

mod support;

use std::time::Duration;

use support::*;
use vigil_testkit::supervisor::{Record, Supervisor, Unit};

fn unit(config: &std::path::Path, dir: &std::path::Path) -> Unit {
    let mut unit = Unit::new(vigil_bin(), &["run", "--config", config.to_str().unwrap()], &dir.join("vigil.log"));
    unit.env.push(("VIGIL_LOG".into(), "info,ort=warn".into()));
    unit.timeout_start = Duration::from_secs(60);
    unit.timeout_stop = Duration::from_secs(30);
    unit.watchdog = Some(Duration::from_secs(3));
    unit
}

/// vigil as device `device` with one camera at `uri`, under the supervisor; the directory (its
/// log is `vigil.log` there) and the broker live as long as the test holds them.
fn supervised(device: &str, uri: &str) -> (tempfile::TempDir, Broker, Supervisor) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let config = write_config(dir.path(), device, &broker.url(), &[("yard", uri.to_owned())]);
    let sup = Supervisor::start(unit(&config, dir.path()), dir.path()).unwrap();
    (dir, broker, sup)
}

#[test]
fn vigil_tells_its_supervisor_when_it_is_ready_how_it_is_and_that_it_lives() {
    let (dir, _broker, sup) = supervised("sd-1", "test://ball");
    let log = || std::fs::read_to_string(dir.path().join("vigil.log")).unwrap_or_default();
    assert!(sup.wait_for(Duration::from_secs(60), |r| *r == Record::Ready), "{:?}\n{}", sup.records(), log());
    // The status line names the cameras, the model and the broker.
    let streaming = sup.wait_for(Duration::from_secs(20), |r| {
        matches!(r, Record::Status(s) if s.starts_with("1/1 cameras streaming; model shapes 1.0.0 on onnxruntime-cpu; broker reached"))
    });
    assert!(streaming, "{:?}", sup.records());
    // Pinged every half period (1.5 s) while the scheduler turns.
    std::thread::sleep(Duration::from_secs(4));
    let pings = sup.records().iter().filter(|r| **r == Record::Watchdog).count();
    assert!(pings >= 2, "{pings} pings in 4 s: {:?}", sup.records());
    let records = sup.stop();
    let stopping = records.iter().position(|r| *r == Record::Stopping).expect("STOPPING=1 on stop");
    assert_eq!(records.last(), Some(&Record::Exited { code: Some(0), signal: None }), "{records:?}\n{}", log());
    assert!(stopping < records.len() - 1);
    assert!(!records.contains(&Record::WatchdogTimeout), "{records:?}");
}

#[test]
fn a_vigil_that_stops_making_progress_is_aborted_by_the_watchdog_and_started_again() {
    let (_dir, _broker, sup) = supervised("sd-2", "test://ball");
    assert!(sup.wait_for(Duration::from_secs(60), |r| *r == Record::Ready), "{:?}", sup.records());
    // Frozen: no thread runs, so no ping goes out.
    let pid = i32::try_from(sup.pid().unwrap()).unwrap();
    // SAFETY: kill(2) on the supervisor's child, which it has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let again =
        sup.wait_for(Duration::from_secs(60), |_| sup.records().iter().filter(|r| **r == Record::Ready).count() == 2);
    let records = sup.stop();
    assert!(again, "{records:?}");
    let timeout = records.iter().position(|r| *r == Record::WatchdogTimeout).expect("the watchdog fired");
    assert!(matches!(records[timeout + 1], Record::Exited { code: None, .. }), "{records:?}");
    assert!(matches!(records[timeout + 2], Record::Spawned { .. }), "started again: {records:?}");
}

#[test]
fn a_camera_whose_file_has_ended_does_not_stop_the_watchdog() {
    // The 12 s clip, played once: its camera finishes and its thread ends.
    let (_dir, _broker, sup) = supervised("sd-3", &clip_uri());
    let streamed = |r: &Record| matches!(r, Record::Status(s) if s.starts_with("1/1 cameras streaming"));
    let done = |r: &Record| matches!(r, Record::Status(s) if s.starts_with("0/1 cameras streaming"));
    // The index of the first `0/1` status after a `1/1` one: the clip has ended.
    let ended = |records: &[Record]| {
        let streaming = records.iter().position(streamed)?;
        records[streaming..].iter().position(done).map(|i| streaming + i)
    };
    assert!(
        sup.wait_for(Duration::from_secs(60), |_| ended(&sup.records()).is_some()),
        "the clip streamed and ended: {:?}",
        sup.records()
    );
    std::thread::sleep(Duration::from_secs(5));
    let records = sup.stop();
    let pings_after = records[ended(&records).unwrap()..].iter().filter(|r| **r == Record::Watchdog).count();
    assert!(pings_after >= 2, "{pings_after} pings in the 5 s after the clip ended: {records:?}");
    assert!(!records.contains(&Record::WatchdogTimeout), "{records:?}");
}

/// A warm-up slower than the watchdog's period (a cold TensorRT engine, a slow board: seen in a
/// guest under emulation) runs before READY, while the start deadline is extended: the watchdog,
/// which starts with READY, never waits on it.
#[test]
fn a_warm_up_slower_than_the_watchdog_runs_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let bundle = dir.path().join("bundle");
    dynamic_batch_bundle(&bundle);
    let config = write_config(dir.path(), "sd-4", &broker.url(), &[("yard", "test://ball".to_owned())]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&bundle_dir().display().to_string(), bundle.to_str().unwrap());
    // Warmed at batches of 64 on one thread: seconds of inference.
    std::fs::write(&config, text + "[inference]\nmax_batch = 64\nthreads = 1\n").unwrap();
    let mut unit = unit(&config, dir.path());
    let watchdog = Duration::from_secs(1);
    unit.watchdog = Some(watchdog);
    let sup = Supervisor::start(unit, dir.path()).unwrap();
    let log = || std::fs::read_to_string(dir.path().join("vigil.log")).unwrap_or_default();
    assert!(sup.wait_for(Duration::from_secs(120), |r| *r == Record::Ready), "{:?}\n{}", sup.records(), log());
    std::thread::sleep(3 * watchdog);
    let records = sup.stop();
    let text = log();
    // The premise: the warm-up took longer than the watchdog's period.
    let warm_up_ms: f64 = text
        .lines()
        .find(|l| l.contains("inference cost measured"))
        .and_then(|l| l.split("warm_up_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no warm-up time in the log:\n{text}"));
    assert!(warm_up_ms > 1.5 * watchdog.as_millis() as f64, "the warm-up took only {warm_up_ms} ms\n{text}");
    assert!(!records.contains(&Record::WatchdogTimeout), "{records:?}\n{text}");
    let ready = records.iter().position(|r| *r == Record::Ready).unwrap();
    let extended = records[..ready].iter().filter(|r| matches!(r, Record::ExtendTimeout(_))).count();
    assert!(extended >= 2, "the deadline is extended for the model and again for the warm-up: {records:?}");
    assert_eq!(records.iter().filter(|r| **r == Record::Ready).count(), 1, "{records:?}");
    assert!(records[ready..].iter().filter(|r| **r == Record::Watchdog).count() >= 2, "{records:?}");
}
