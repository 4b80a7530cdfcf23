//! `make demo`'s script, as a new user runs it: scripted (DEMO_SECONDS) and piped.

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_piped_demo_returns_and_leaves_no_process_behind() {
    let mut child = Command::new("bash")
        .arg(repo_root().join("appliance/scripts/demo.sh"))
        .arg(vigil_bin())
        .env("DEMO_SECONDS", "4")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: whatever the script starts can be found (and cleaned up) by it.
        .process_group(0)
        .spawn()
        .expect("bash runs the demo script");
    let group = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > until {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Give stragglers a moment, then look for any process left in the demo's group.
    std::thread::sleep(Duration::from_millis(500));
    let leftover = members(group);
    // SAFETY: ends whatever is left of the group this test started, so a failure cleans up.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let status = status.expect("the demo script ends by itself within 60 s of DEMO_SECONDS=4");
    let out = reader.join().unwrap();
    assert!(status.success(), "demo exited {status}; output:\n{out}");
    assert!(leftover.is_empty(), "processes of the demo outlived it: {leftover:?}; output:\n{out}");
    assert!(out.contains("demo: stopped"), "{out}");
}

/// The processes of process group `group`, running or not yet reaped (`name state`), from /proc.
fn members(group: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
            let (name, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let pgrp: i32 = fields.get(2)?.parse().ok()?;
            (pgrp == group).then(|| format!("{}) {}", name, fields[0]))
        })
        .collect()
}
