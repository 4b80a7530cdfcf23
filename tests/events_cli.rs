//! `vigil events list|show|tail|export` against the real service while it runs (through its
//! control socket) and after it stopped (the store itself).

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;
use vigil_core::event::{EndReason, Event, Phase};

fn events_cmd(data: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["events"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", data]);
    vigil_cmd(&all, &[])
}

fn parse_lines(out: &str) -> Vec<Event> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// `vigil events tail` as a child; its stdout and stderr lines arrive on channels.
struct Tail {
    child: std::process::Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

impl Tail {
    fn start(data: &str, last: &str) -> Self {
        let mut child = Command::new(vigil_bin())
            .args(["events", "tail", "--json", "--last", last, "--data-dir", data])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vigil events tail");
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::sync_channel(10_000);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Self { child, out, err }
    }

    /// Lines until `done` says so (or the timeout passes).
    fn until(rx: &mpsc::Receiver<String>, within: Duration, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
        let end = std::time::Instant::now() + within;
        let mut got = Vec::new();
        while !done(&got) {
            match rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now())) {
                Ok(l) => got.push(l),
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_are_read_live_and_after_a_stop_and_tail_follows_the_service_across_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap().to_owned();
    // No broker: events stay in the outbox, and the CLI is all that reads them.
    let nobody = format!("mqtt://127.0.0.1:{}", free_port());
    // The clip loops: however long the steps below take, shapes are in view at the stop.
    let clip = looping_clip_uri();
    let config = write_config(dir.path(), "cli", &nobody, &[("clip", clip)]);

    // Started before vigil: it waits for the service, then follows it.
    let tail = Tail::start(&data_s, "0");
    let waiting = Tail::until(&tail.err, Duration::from_secs(10), |l| !l.is_empty());
    assert!(waiting.iter().any(|l| l.contains("not running") && l.contains("waiting")), "{waiting:?}");

    let vigil = Vigil::start(&config, dir.path());
    let up = wait_until(Duration::from_secs(30), || data.join(vigil_fleet::control::SOCKET_FILE).exists());
    assert!(up, "vigil opens its control socket:\n{}", vigil.log());
    let mut live = Vec::new();
    let stored = wait_until(Duration::from_secs(60), || {
        let (code, out, err) = events_cmd(&data_s, &["list", "--json"]);
        assert_eq!(code, 0, "a running service answers `events list`: {err}\n{}", vigil.log());
        live = parse_lines(&out);
        live.len() >= 3
    });
    assert!(stored, "events are listed while vigil runs:\n{}", vigil.log());
    assert!(live.windows(2).all(|w| w[0].start_ns <= w[1].start_ns), "oldest first");

    // show: the same record, whole; and its snapshot.
    let first = &live[0];
    let (code, out, err) = events_cmd(&data_s, &["show", &first.id, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Event = serde_json::from_str(&out).unwrap();
    assert_eq!((shown.id.as_str(), shown.start_ns), (first.id.as_str(), first.start_ns));
    let jpeg = dir.path().join("shown.jpg");
    let (code, out, err) = events_cmd(&data_s, &["show", &first.id, "--snapshot", jpeg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&first.id) && out.contains("camera      clip"), "{out}");
    assert_eq!(&std::fs::read(&jpeg).unwrap()[..2], [0xff, 0xd8], "a JPEG");
    let (code, _, err) = events_cmd(&data_s, &["show", "no-such-event"]);
    assert_eq!(code, 1);
    assert!(err.contains("no event `no-such-event`"), "{err}");

    // export, live: a CSV with a row per event and the snapshots beside it.
    let csv = dir.path().join("events.csv");
    let shots = dir.path().join("shots");
    let (code, _, err) = events_cmd(
        &data_s,
        &["export", "--format", "csv", "-o", csv.to_str().unwrap(), "--snapshots", shots.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("id,camera,rule,label"), "{}", rows[0]);
    let exported = rows.len() - 1;
    assert!(exported >= live.len(), "every event listed before is exported ({exported} < {})", live.len());
    assert!(rows[1..].iter().any(|r| r.starts_with(&format!("{},clip,", first.id))), "{text}");
    assert!(err.contains(&format!("exported {exported} events")), "{err}");
    assert!(shots.join(format!("{}.jpg", first.id)).is_file());

    // tail followed the service once it came up: lifecycle messages as they were stored.
    let followed = Tail::until(&tail.out, Duration::from_secs(30), |l| l.len() >= 2);
    let followed = parse_lines(&followed.join("\n"));
    assert!(followed.len() >= 2, "tail follows the running service:\n{}", vigil.log());

    // A clean stop ends the open events; tail shows those `end` messages, then waits again.
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let said =
        Tail::until(&tail.err, Duration::from_secs(10), |l| l.iter().any(|l| l.contains("closed the connection")));
    assert!(said.iter().any(|l| l.contains("closed the connection")), "{said:?}");
    let (code, out, err) = events_cmd(&data_s, &["list", "--json"]);
    assert_eq!(code, 0, "a stopped store is read directly (the waiting tail does not hold it): {err}");
    let after = parse_lines(&out);
    let stored_shutdown = after.iter().filter(|e| e.end_reason == Some(EndReason::Shutdown)).count();
    // The looping clip always has shapes in view, so some events were open at the stop.
    assert!(stored_shutdown > 0, "{log}");
    let is_shutdown_end = |l: &String| {
        let e: Event = serde_json::from_str(l).unwrap();
        e.phase == Phase::End && e.end_reason == Some(EndReason::Shutdown)
    };
    let rest = Tail::until(&tail.out, Duration::from_secs(10), |l| {
        l.iter().filter(|l| is_shutdown_end(l)).count() >= stored_shutdown
    });
    let shown = rest.iter().filter(|l| is_shutdown_end(l)).count();
    assert_eq!(shown, stored_shutdown, "tail showed each shutdown end that was stored\n{log}");

    // --last N is the newest N of the whole list, and filters apply.
    let (code, out, err) = events_cmd(&data_s, &["list", "--json", "--last", "2"]);
    assert_eq!(code, 0, "{err}");
    let last: Vec<String> = parse_lines(&out).into_iter().map(|e| e.id).collect();
    let all: Vec<String> = after.iter().map(|e| e.id.clone()).collect();
    assert_eq!(last, all[all.len() - 2..]);
    // tail on a stopped store: the same newest two, then it waits without holding the store.
    let stopped = Tail::start(&data_s, "2");
    let shown: Vec<String> = Tail::until(&stopped.out, Duration::from_secs(10), |l| l.len() >= 2)
        .iter()
        .map(|l| serde_json::from_str::<Event>(l).unwrap().id)
        .collect();
    assert_eq!(shown, last);
    let waiting = Tail::until(&stopped.err, Duration::from_secs(10), |l| !l.is_empty());
    assert!(waiting.iter().any(|l| l.contains("waiting")), "{waiting:?}");
    assert_eq!(events_cmd(&data_s, &["list"]).0, 0, "the waiting tail has closed the store");
    drop(stopped);
    let (code, out, _) = events_cmd(&data_s, &["list", "--json", "--camera", "elsewhere"]);
    assert_eq!((code, out.as_str()), (0, ""));
    let until = &after[1].start;
    let (code, out, _) = events_cmd(&data_s, &["list", "--json", "--until", until]);
    assert_eq!(code, 0);
    assert!(parse_lines(&out).iter().all(|e| e.start_ns < after[1].start_ns));
    drop(tail);

    // An export that cannot be written fails: a full disk is not a finished export.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let failed =
        Command::new(vigil_bin()).args(["events", "export", "--data-dir", &data_s]).stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left"), "{err}");

    // A store held by another process, with no service answering, is a clear error.
    let held = vigil_store::Store::open(&data).unwrap();
    let (code, _, err) = events_cmd(&data_s, &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("is in use, and no vigil answers"), "{err}");
    drop(held);
}
