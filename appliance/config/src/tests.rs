//! Parsing and checking `vigil.toml`.

use super::*;

fn bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/bundles/shapes-v1")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_at(text, Path::new("test.toml"), Path::new("/"))
}

fn valid() -> String {
    format!(
        "device_id = \"dev-1\"\n[model]\nbundle = \"{}\"\n[[camera]]\nid = \"a\"\nuri = \"test://ball\"\n",
        bundle_dir().display()
    )
}

#[test]
fn a_minimal_config_gets_documented_defaults() {
    let cfg = parse(&valid()).expect("valid config");
    assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/vigil"));
    assert_eq!(cfg.mqtt.url, "mqtt://127.0.0.1:1883");
    assert_eq!(cfg.mqtt.max_inflight, 32);
    assert_eq!(cfg.inference.threads, 1);
    assert_eq!(cfg.client_id(), "vigil-dev-1");
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = parse(&format!("{}\ncolour = 3\n", valid())).unwrap_err().to_string();
    assert!(err.contains("unknown field") && err.contains("colour"), "{err}");
    let err = parse(&valid().replace("uri =", "url =")).unwrap_err().to_string();
    assert!(err.contains("url"), "{err}");
}

#[test]
fn wrong_types_are_rejected_with_location() {
    let err = parse(&valid().replace("[model]", "[model]\nlatency_budget_ms = \"fast\"")).unwrap_err().to_string();
    assert!(err.contains("latency_budget_ms") && err.contains("line 3") && err.contains("expected u64"), "{err}");
}

#[test]
fn every_problem_is_reported_by_field_path() {
    let text = "device_id = \"bad id/with+wildcards\"\n[mqtt]\nurl = \"http://x\"\nmax_inflight = 0\n\
                [model]\nbundle = \"/nonexistent/bundle\"\n\
                [[camera]]\nid = \"a\"\nuri = \"gopher://x\"\n[[camera]]\nid = \"a\"\nuri = \"test://ball\"\n";
    let Err(ConfigError::Invalid { problems, .. }) = parse(text) else { panic!("expected Invalid") };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["device_id", "mqtt.url", "mqtt.max_inflight", "model.bundle", "camera[0].uri", "camera[1].id"],
        "{problems:?}"
    );
}

#[test]
fn capture_settings_and_camera_options_are_checked() {
    let text = valid().replace(
        "[[camera]]",
        "[capture]\nbackoff_min_ms = 5000\nbackoff_max_ms = 1000\nwatchdog_ms = 50\n[[camera]]\n\
         decoder = \"vaapih264dec\"\nuser = \"admin\"\ncodec = \"h264\"",
    );
    let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else { panic!("expected Invalid") };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["camera[0].decoder", "camera[0].user", "capture.watchdog_ms", "capture.backoff_max_ms"]);
    assert!(problems[0].message.contains("avdec_h264"), "{problems:?}");
    let err = parse(&valid().replace("uri =", "codec = \"vp9\"\nuri =")).unwrap_err().to_string();
    assert!(err.contains("vp9") && err.contains("h264"), "{err}");
}

#[test]
fn zones_rules_and_event_settings_are_checked() {
    let text = valid().replace("[model]", "[events]\niou_threshold = 1.5\n[model]")
        + "[[camera.zone]]\nname = \"door\"\npolygon = [[0.0, 0.0], [1.2, 0.0], [0.0, 1.0]]\n\
           [[camera.zone]]\nname = \"door\"\npolygon = [[0.0, 0.0], [1.0, 0.0]]\n\
           [[rule]]\nname = \"r\"\ncameras = [\"b\"]\nzones = [\"gate\"]\nmin_score = 2.0\nmin_frames = 0\n\
           [[rule]]\nname = \"r\"\ndwell_s = 90000.5\n";
    let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else { panic!("expected Invalid") };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "camera[0].zone[0].polygon",
            "camera[0].zone[1].name",
            "camera[0].zone[1].polygon",
            "events.iou_threshold",
            "rule[0].cameras",
            "rule[0].zones",
            "rule[0].min_score",
            "rule[0].min_frames",
            "rule[1].name",
            "rule[1].dwell_s",
        ],
        "{problems:?}"
    );
    assert!(problems[4].message.contains("`a`"), "names the cameras there are: {problems:?}");
    // A negative duration is not one: refused while parsing, naming the key.
    let err = parse(&valid().replace("[model]", "[[rule]]\nname = \"r\"\ncooldown_s = -1.0\n[model]")).unwrap_err();
    assert!(err.to_string().contains("cooldown_s"), "{err}");
}

#[test]
fn tls_urls_require_tls_files() {
    let text = valid().replace("[model]", "[mqtt]\nurl = \"mqtts://broker.example\"\n[model]");
    let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else { panic!("expected Invalid") };
    assert_eq!(problems[0].path, "mqtt.tls");
    let text = valid().replace(
        "[model]",
        "[mqtt]\nurl = \"mqtts://b\"\n[mqtt.tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\n[model]",
    );
    let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else { panic!("expected Invalid") };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["mqtt.tls.ca", "mqtt.tls.cert", "mqtt.tls"]);
}

#[test]
fn broker_urls_parse_with_default_ports() {
    assert_eq!(
        BrokerUrl::parse("mqtt://localhost").unwrap(),
        BrokerUrl { tls: false, host: "localhost".into(), port: 1883 }
    );
    assert_eq!(
        BrokerUrl::parse("mqtts://10.0.0.1:9000").unwrap(),
        BrokerUrl { tls: true, host: "10.0.0.1".into(), port: 9000 }
    );
    assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884").unwrap().host, "::1");
    assert!(BrokerUrl::parse("mqtt://host:99999").is_err());
    assert!(BrokerUrl::parse("mqtt://host/path").is_err());
    assert!(BrokerUrl::parse("localhost:1883").is_err());
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let text = "device_id = \"d\"\ndata_dir = \"data\"\n[model]\nbundle = \"b\"\n\
                [[camera]]\nid = \"c\"\nuri = \"file://clips/x.mp4?loop=true\"\n";
    let mut cfg: Config = toml::from_str(text).unwrap();
    cfg.resolve_paths(Path::new("/etc/vigil"));
    assert_eq!(cfg.data_dir, PathBuf::from("/etc/vigil/data"));
    assert_eq!(cfg.model.bundle, PathBuf::from("/etc/vigil/b"));
    assert_eq!(cfg.cameras[0].uri.as_written(), "file:///etc/vigil/clips/x.mp4?loop=true");
}

#[test]
fn the_embedded_default_parses() {
    let cfg: Config = toml::from_str(EMBEDDED_DEFAULT).expect("embedded default parses");
    assert!(!cfg.cameras.is_empty());
}

#[test]
fn the_demo_is_found_in_a_source_checkout_and_named_when_it_is_not() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let demo = Config::demo(&root).expect("the checkout's demo loads");
    assert!(demo.model.bundle.ends_with("models/bundles/shapes-v1"), "{:?}", demo.model.bundle);
    let elsewhere = tempfile::tempdir().unwrap();
    let err = Config::demo(elsewhere.path()).unwrap_err().to_string();
    assert!(err.contains(DEMO_CONFIG) && err.contains("make demo"), "{err}");
}

#[test]
fn without_a_named_file_the_system_configuration_is_read_or_its_absence_explained() {
    let err = ConfigError::Missing.to_string();
    assert!(err.contains(SYSTEM_CONFIG) && err.contains("--config") && err.contains("vigil demo"), "{err}");
    if !Path::new(SYSTEM_CONFIG).exists() {
        assert!(matches!(Config::load_or_system(None), Err(ConfigError::Missing)));
    }
}

#[test]
fn a_bundle_alone_gets_every_default() {
    let cfg = Config::for_bundle(&bundle_dir()).expect("defaults with a bundle are valid");
    assert_eq!(cfg.model.bundle, bundle_dir());
    assert_eq!(cfg.inference.backend, BackendKind::Auto);
}

#[test]
fn launch_paths_of_reads_only_its_keys_so_a_newer_configuration_still_finds_the_slots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.toml");
    // A key this vigil does not know (a newer one's) and no camera: `load` refuses it.
    std::fs::write(
        &path,
        "device_id = \"d\"\ndata_dir = \"state\"\nfuture_key = 1\n[ota]\nroot = \"root.json\"\nnew = 2\n",
    )
    .unwrap();
    assert!(Config::load(&path).is_err());
    let paths = Config::launch_paths_of(&path).unwrap();
    assert_eq!((paths.data_dir, paths.ota_root), (dir.path().join("state"), Some(dir.path().join("root.json"))));
    std::fs::write(&path, "device_id = \"d\"\n").unwrap();
    let paths = Config::launch_paths_of(&path).unwrap();
    assert_eq!((paths.data_dir, paths.ota_root), (PathBuf::from("/var/lib/vigil"), None));
    std::fs::write(&path, "data_dir = 3\n").unwrap();
    let e = Config::launch_paths_of(&path).unwrap_err().to_string();
    assert!(e.contains("data_dir must be a string, not integer"), "{e}");
    std::fs::write(&path, "data_dir = \"/srv/vigil\"\n[ota]\nroot = []\n").unwrap();
    let e = Config::launch_paths_of(&path).unwrap_err().to_string();
    assert!(e.contains("ota.root must be a string, not array"), "{e}");
    std::fs::write(&path, "data_dir = \"/srv/vigil\"\n[ota]\nroot = \"/etc/vigil/root.json\"\n").unwrap();
    let paths = Config::launch_paths_of(&path).unwrap();
    assert_eq!(
        (paths.data_dir, paths.ota_root),
        (PathBuf::from("/srv/vigil"), Some(PathBuf::from("/etc/vigil/root.json")))
    );
}

#[test]
fn software_decoders_share_the_cores_out_unless_told() {
    let mut c = CaptureConfig::default();
    assert_eq!(
        (c.decode_threads(4, 2), c.decode_threads(1, 2), c.decode_threads(2, 6), c.decode_threads(0, 1)),
        (1, 2, 3, 1)
    );
    c.software_decode_threads = 3;
    assert_eq!(c.decode_threads(4, 2), 3);
}
