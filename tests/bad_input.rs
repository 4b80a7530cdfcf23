//! Bad input gets a clear error that says what to do, or a logged, retried condition — never a
//! panic, never lost data.

mod support;

use std::time::Duration;

use support::*;

/// Rust's exit code for a panic; no bad input may produce it.
const PANIC_EXIT: i32 = 101;

fn config_with(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn base_config() -> String {
    format!(
        "device_id = \"d1\"\n[model]\nbundle = \"{}\"\n[[camera]]\nid = \"a\"\nuri = \"test://ball\"\n",
        bundle_dir().display()
    )
}

#[test]
fn check_config_accepts_the_shipped_demo_config() {
    let demo = repo_root().join("appliance/config/demo.toml");
    let (code, out, err) = vigil_cmd(&["check-config", demo.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn a_config_named_by_a_relative_path_resolves_against_its_own_directory() {
    // Tests run in appliance/vigil/; the demo config's paths are relative to appliance/config/.
    assert!(std::path::Path::new("../config/demo.toml").is_file(), "tests run in the package directory");
    let (code, out, err) = vigil_cmd(&["check-config", "../config/demo.toml"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn run_without_a_configuration_reads_etc_vigil_or_says_what_to_do() {
    let system = std::path::Path::new("/etc/vigil/vigil.toml");
    assert!(!system.exists(), "this test needs a machine without {} (vigil would start on it)", system.display());
    let (code, _, err) = vigil_cmd(&["run"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/etc/vigil/vigil.toml") && err.contains("--config") && err.contains("vigil demo"), "{err}");
}

#[test]
fn the_demo_runs_only_in_a_source_checkout_and_says_so_elsewhere() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(vigil_bin()).arg("demo").current_dir(elsewhere.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("appliance/config/demo.toml") && err.contains("make demo"), "{err}");
}

#[test]
fn check_config_names_unknown_keys_and_wrong_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with(dir.path(), &format!("{}\n[mqtt]\nurl = \"mqtt://x\"\nqos = 2\n", base_config()));
    let (code, _, err) = vigil_cmd(&["check-config", &path], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `qos`"), "{err}");

    let path = config_with(dir.path(), &base_config().replace("device_id = \"d1\"", "device_id = 7"));
    let (code, _, err) = vigil_cmd(&["check-config", &path], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("device_id") && err.contains("line 1"), "{err}");
}

#[test]
fn check_config_reports_every_semantic_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = "device_id = \"d/1\"\n[model]\nbundle = \"/nonexistent/bundle\"\n\
                [[camera]]\nid = \"a\"\nuri = \"ftp://cam\"\n";
    let path = config_with(dir.path(), text);
    let (code, _, err) = vigil_cmd(&["check-config", &path], &[]);
    assert_eq!(code, 2, "{err}");
    for expected in ["device_id:", "model.bundle:", "camera[0].uri:", "3 problem(s)"] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn run_refuses_an_invalid_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with(dir.path(), &base_config().replace("test://ball", "rtsp://"));
    let (code, _, err) = vigil_cmd(&["run", "--config", &path], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("camera[0].uri"), "{err}");
}

#[test]
fn a_bundle_without_its_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::copy(bundle_dir().join("manifest.toml"), bundle.join("manifest.toml")).unwrap();
    let text = base_config().replace(&bundle_dir().display().to_string(), &bundle.display().to_string());
    let path = config_with(dir.path(), &format!("data_dir = \"{}\"\n{text}", dir.path().join("data").display()));
    let (code, _, err) = vigil_cmd(&["run", "--config", &path], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("model.int8.onnx") && err.contains("No such file"), "{err}");
}

#[test]
fn a_missing_onnxruntime_library_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        config_with(dir.path(), &format!("data_dir = \"{}\"\n{}", dir.path().join("data").display(), base_config()));
    let (code, _, err) =
        vigil_cmd(&["run", "--config", &path], &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    assert_ne!(code, PANIC_EXIT, "{err}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so does not exist") && err.contains("make setup"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_is_retried_while_events_are_kept_in_sled() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("mqtt://127.0.0.1:{}", free_port());
    let clip = clip_uri();
    let config = write_config(dir.path(), "offline", &nobody, &[("clip", clip)]);
    let vigil = Vigil::start(&config, dir.path());
    let retried = wait_until(Duration::from_secs(30), || vigil.log().matches("MQTT connection lost").count() >= 3);
    assert!(retried, "connection failures are logged and retried:\n{}", vigil.log());

    let data = dir.path().join("data");
    // Events are being stored (asked over the control socket while vigil runs).
    let d = data.to_str().unwrap();
    let storing = wait_until(Duration::from_secs(30), || {
        vigil_cmd(&["events", "list", "--json", "--last", "1", "--data-dir", d], &[]).1.lines().count() > 0
    });
    assert!(storing, "no events stored while the broker is unreachable:\n{}", vigil.log());
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let (code, out, err) = vigil_cmd(&["events", "list", "--json", "--data-dir", d], &[]);
    assert_eq!(code, 0, "{err}");
    let stored: Vec<vigil_core::event::Event> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!stored.is_empty(), "events made while the broker was unreachable are stored:\n{log}");
    // Every message of each (new, updates, end: revisions 0..=last) still waits in the outbox.
    let messages: usize = stored.iter().map(|e| e.revision as usize + 1).sum();
    let store = vigil_store::Store::open(&data).unwrap();
    assert_eq!(store.outbox_len(), messages, "and all their messages still wait in the outbox");
}

#[test]
fn a_camera_that_does_not_exist_is_retried_and_the_others_keep_working() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(broker.port, "vigil/two/events");
    let clip = clip_uri();
    let ghost = file_uri(&dir.path().join("no-such-clip.mp4"));
    let config = write_config(dir.path(), "two", &broker.url(), &[("ghost", ghost), ("clip", clip)]);
    let mut vigil = Vigil::start(&config, dir.path());
    let retried = wait_until(Duration::from_secs(30), || {
        vigil.log().lines().filter(|l| l.contains("camera fault") && l.contains("ghost")).count() >= 3
    });
    assert!(retried, "the missing source is retried with backoff:\n{}", vigil.log());
    assert!(wait_until(Duration::from_secs(20), || sub.count("vigil/two/events") > 20), "{}", vigil.log());
    assert!(vigil.is_running());
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let fault = log.lines().find(|l| l.contains("camera fault") && l.contains("ghost")).unwrap();
    assert!(
        fault.contains("no-such-clip.mp4") || fault.contains("not found") || fault.contains("No such file"),
        "{fault}"
    );
    let events: Vec<vigil_core::event::Event> =
        sub.on("vigil/two/events").iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
    assert!(events.iter().all(|e| e.camera_id == "clip"));
}

#[test]
fn asking_for_tensorrt_where_it_cannot_run_falls_back_to_the_cpu_and_says_why() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(broker.port, "vigil/gpu-less/events");
    let clip = clip_uri();
    let config = write_config(dir.path(), "gpu-less", &broker.url(), &[("clip", clip)]);
    append_config(&config, "[inference]\nbackend = \"tensorrt\"\n");
    let vigil = Vigil::start(&config, dir.path());
    assert!(wait_until(Duration::from_secs(30), || sub.count("vigil/gpu-less/events") > 5), "{}", vigil.log());
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let warning = log.lines().find(|l| l.contains("TensorRT was asked for")).expect("the fallback is logged");
    assert!(warning.contains("WARN") && warning.contains("using ONNX Runtime"), "{warning}");
    let event: vigil_core::event::Event = serde_json::from_slice(&sub.on("vigil/gpu-less/events")[0]).unwrap();
    assert_eq!(event.model.backend, "onnxruntime-cpu");
}

#[test]
fn a_new_configuration_that_no_longer_loads_is_rolled_back_at_start() {
    // config/set checked the file, but at the next start it does not load (here: garbage; on a
    // device, say, a certificate it names was removed): vigil restores the previous file and
    // exits 75 for its supervisor, instead of failing with 2 on the new one forever.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = config_with(dir.path(), &format!("data_dir = \"{}\"\n{}", data.display(), base_config()));
    let original = std::fs::read(&path).unwrap();
    let config = vigil_config::Config::load(std::path::Path::new(&path)).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let remote =
        vigil_fleet::config_change::commit(&config, std::path::Path::new(&path), "r-bad", Duration::from_secs(60))
            .unwrap();
    std::fs::write(&remote, "[mqtt]\nurl = 5\n").unwrap();

    let (code, _, err) = vigil_cmd(&["run", "--config", &path], &[]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("url"), "the problem is printed: {err}");
    assert!(!remote.exists(), "the remote file is gone: the given one runs again");
    assert_eq!(std::fs::read(&path).unwrap(), original, "the given file was never touched");
    let marker = std::fs::read_to_string(data.join(vigil_fleet::config_change::MARKER)).unwrap();
    assert!(marker.contains("vigil cannot load it"), "the reply-to-be records why: {marker}");
    // Without a change in progress, a bad file is plain bad input.
    std::fs::write(&path, "[mqtt]\nurl = 5\n").unwrap();
    std::fs::remove_file(data.join(vigil_fleet::config_change::MARKER)).unwrap();
    let (code, _, err) = vigil_cmd(&["run", "--config", &path], &[]);
    assert_eq!(code, 2, "{err}");
}
