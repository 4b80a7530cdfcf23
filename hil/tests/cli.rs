//! `vigil-hil`'s command line: what it says about bad input, before it starts anything.

use std::process::Command;

fn hil(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-hil")).args(args).output().expect("vigil-hil runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_list_names_every_scenario_and_what_it_needs() {
    let (code, out, _) = hil(&["list"]);
    assert_eq!(code, Some(0));
    for s in vigil_hil::suite::all() {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(s.name))
            .unwrap_or_else(|| panic!("{}: {out}", s.name));
        for need in s.needs {
            assert!(line.contains(need.name()), "{line}");
        }
    }
    assert!(out.contains("[power-cut]") && out.contains("[any target]"), "{out}");
}

#[test]
fn bad_input_exits_2_saying_what_to_do() {
    let (code, _, err) = hil(&["run"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("name a target: --local BINARY, --qemu BINARY or --lab FILE"), "{err}");

    let (code, _, err) =
        hil(&["run", "--local", "/nonexistent/vigil", "--scenario", "detection", "--scenario", "dettection"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no scenario named [\"dettection\"]") && err.contains("detection, "), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(&lab, "targets:\n  a:\n    resources:\n      NetworkService: {address: x, username: u}\n    drivers: {SSHDriver: {}}\n").unwrap();
    let (code, _, err) = hil(&["run", "--lab", lab.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("lab.yaml") && err.contains("vigil_rig_address is missing"), "{err}");

    let (code, _, err) = hil(&["run", "--local", "/nonexistent/vigil"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--local"), "{err}");
}
