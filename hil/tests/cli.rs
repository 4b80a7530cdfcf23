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
    assert!(err.contains("name a target: --local BINARY, --qemu BINARY, --vm [ARCH] or --lab FILE"), "{err}");

    // The virtual board: refused before anything is built or booted.
    let (code, _, err) = hil(&["run", "--vm"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--vm needs --deb"), "{err}");
    let (code, _, err) = hil(&["run", "--vm", "--deb", "/nonexistent/vigil.deb"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--deb /nonexistent/vigil.deb"), "{err}");
    let deb = tempfile::NamedTempFile::new().unwrap();
    let deb = deb.path().to_str().unwrap();
    let (code, _, err) = hil(&["run", "--vm", "riscv", "--deb", deb]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--vm takes amd64 or arm64, not `riscv`"), "{err}");
    let (code, _, err) = hil(&["run", "--vm", "--deb", deb, "--vm-accel", "hvf"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--vm-accel takes auto, kvm or tcg"), "{err}");

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

    let (code, _, err) = hil(&["run", "--local", "/nonexistent/vigil", "--skip", "detection"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("give NAME=REASON"), "{err}");
    let (code, _, err) = hil(&["run", "--local", "/nonexistent/vigil", "--skip", "dettection=typo"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no scenario named [\"dettection\"]"), "{err}");
}

/// A vigil that answers `--version` and the guard, and fails at once when run.
fn broken_vigil(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vigil");
    let script = "#!/bin/sh\ncase \"$1\" in\n  --version) echo 'vigil 0.0.1' ;;\n  slots) exit 0 ;;\n  \
                  run) echo 'boom: this vigil cannot start' >&2; exit 1 ;;\n  *) exit 64 ;;\nesac\n";
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_failing_target_fails_each_scenario_with_its_log_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let vigil = broken_vigil(dir.path());
    let out = dir.path().join("report");
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let (code, _, err) = hil(&[
        "run",
        "--local",
        vigil.to_str().unwrap(),
        "--repo",
        repo,
        "--scenario",
        "power-cut",
        "--scenario",
        "broker-outage",
        "--scenario",
        "detection",
        "--skip",
        "detection=covered by another test here",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    let (skipped, scenarios): (Vec<_>, Vec<_>) = scenarios.iter().partition(|s| s["name"] == "detection");
    assert_eq!(skipped[0]["status"], "skipped", "{report:#}");
    assert_eq!(skipped[0]["message"], "left out of this run (--skip): covered by another test here");
    assert_eq!(scenarios.len(), 2, "the second ran after the first failed: {report:#}");
    for s in scenarios {
        assert_eq!(s["status"], "failed", "{s:#}");
        assert!(s["message"].as_str().unwrap().contains("did not report READY"), "{s:#}");
        assert!(s["log"].as_str().unwrap().contains("boom: this vigil cannot start"), "the target's log: {s:#}");
    }
    assert_eq!(report["vigil_version"], "vigil 0.0.1");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("tests=\"3\" failures=\"2\" skipped=\"1\""), "{junit}");
    assert!(junit.contains("boom: this vigil cannot start"), "{junit}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<b class=\"failed\">2 failed</b>"), "{html}");
}
