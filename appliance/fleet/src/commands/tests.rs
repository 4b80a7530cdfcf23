//! Command parsing, execution and replies.

use super::*;

#[test]
fn requests_parse_and_every_kind_of_bad_request_is_named() {
    let ok = parse("restart", br#"{"request_id":"r-1","args":{"camera":"gate"}}"#).unwrap();
    assert_eq!(ok, Request { request_id: "r-1".into(), command: Command::Restart { camera: Some("gate".into()) } });
    assert_eq!(parse("status", br#"{"request_id":"a"}"#).unwrap().command, Command::Status);
    let cases: &[(&str, &[u8], Option<&str>, &str)] = &[
        ("status", b"not json", None, "is not"),
        ("status", br#"{"request_id":"a","extra":1}"#, Some("a"), "unknown field"),
        ("status", br#"{"request_id":"a/b"}"#, None, "request_id"),
        ("status", br#"{"request_id":""}"#, None, "request_id"),
        ("status", br#"{"request_id":"a","args":{"x":1}}"#, Some("a"), "takes no args"),
        ("reboot", br#"{"request_id":"a"}"#, Some("a"), "unknown command `reboot`"),
        ("restart", br#"{"request_id":"a","args":{"camera":5}}"#, Some("a"), "bad args"),
        ("snapshot", br#"{"request_id":"a"}"#, Some("a"), "missing field `camera`"),
        ("snapshot", br#"{"request_id":"a","args":{"camera":"x","size":1}}"#, Some("a"), "unknown field"),
        ("events/query", br#"{"request_id":"a","args":{"limit":0}}"#, Some("a"), "limit"),
        ("events/query", br#"{"request_id":"a","args":{"from":"yesterday"}}"#, Some("a"), "RFC 3339"),
        ("events/query", br#"{"request_id":"a","args":{"after":"nope"}}"#, Some("a"), "cursor"),
        ("events/query", br#"{"request_id":"a","args":{"order":"up"}}"#, Some("a"), "unknown variant"),
        ("events/get", br#"{"request_id":"a"}"#, Some("a"), "missing field `id`"),
        ("events/get", br#"{"request_id":"a","args":{"id":""}}"#, Some("a"), "event id"),
        ("events/tail", br#"{"request_id":"a","args":{"last":100000}}"#, Some("a"), "last must be"),
    ];
    for (name, payload, id, needle) in cases {
        let r = parse(name, payload).unwrap_err();
        assert_eq!(r.request_id.as_deref(), *id, "{name} {:?}", String::from_utf8_lossy(payload));
        assert!(r.message.contains(needle), "{name}: {}", r.message);
    }
    let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
    assert!(parse("status", &huge).unwrap_err().message.contains("limit"));
}

fn fleet(store: Store, config: Config) -> Fleet {
    Fleet {
        config: Arc::new(config),
        started: Instant::now(),
        cameras: Vec::new(),
        inference: Arc::new(SchedulerStats::new::<&str>(&[])),
        store,
        restart: tokio_util::sync::CancellationToken::new(),
        snapshots: vigil_pipeline::scheduler::SnapshotRequests::default(),
        config_path: None,
        labels: Vec::new(),
        changing: Default::default(),
        updates: None,
    }
}

#[test]
fn two_configuration_changes_at_once_let_exactly_one_through() {
    // Each round: two config/set requests released together on two threads. Before the
    // changes were serialized both passed the probation check, and the second kept the
    // first one's file as `.previous`, so a rollback restored the wrong file.
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests();
        config.data_dir = dir.path().join("data");
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let path = dir.path().join("vigil.toml");
        let original = toml::to_string(&config).unwrap();
        std::fs::write(&path, &original).unwrap();
        let labels = vec!["circle".to_owned(), "square".to_owned(), "triangle".to_owned()];
        let mut f = fleet(Store::open(&config.data_dir.join("store")).unwrap(), config.clone());
        f.config_path = Some(path.clone());
        f.labels = labels;
        let f = Arc::new(f);
        let gate = Arc::new(std::sync::Barrier::new(2));
        let runs: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|id| {
                let (f, gate, mut asked) = (f.clone(), gate.clone(), serde_json::to_value(&config).unwrap());
                asked["mqtt"]["metrics_interval_s"] = if id == "a" { 11 } else { 22 }.into();
                std::thread::spawn(move || {
                    gate.wait();
                    f.config_set(id, &asked, 30)
                })
            })
            .collect();
        let results: Vec<Result<(), String>> = runs.into_iter().map(|t| t.join().unwrap()).collect();
        let through = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(through, 1, "round {round}: {results:?}");
        let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(refused.contains("on probation"), "{refused}");
        // The file to roll back to is the one before the change: the given file, untouched, and
        // no remote file kept (a second change let through would have kept the first's).
        assert_eq!(std::fs::read_to_string(&path).unwrap(), original, "round {round}");
        let remote = crate::config_change::remote_path(&config.data_dir);
        assert!(!crate::config_change::previous_path(&remote).exists(), "round {round}");
    }
}

/// A fleet over a store in `dir` holding one event whose snapshot file holds `jpeg`.
fn fleet_with_event(dir: &std::path::Path, jpeg: &[u8]) -> (Fleet, vigil_core::event::Event) {
    let store = Store::open(dir).unwrap();
    let mut e = vigil_core::event::test_event(7);
    e.snapshot = Some(vigil_core::event::snapshot_path(&e.id));
    store.write_snapshot(&e.id, jpeg).unwrap();
    store.append(std::slice::from_ref(&e), "t").unwrap();
    (fleet(store, Config::for_tests()), e)
}

#[test]
fn events_get_returns_the_event_and_its_snapshot_or_says_it_is_gone() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (fleet, e) = fleet_with_event(dir.path(), b"\xff\xd8jpeg");

    let got = fleet.execute(&Command::EventsGet { id: e.id.clone(), snapshot: false }).unwrap();
    assert_eq!(serde_json::from_value::<vigil_core::event::Event>(got["event"].clone()).unwrap(), e);
    assert!(got.get("jpeg_base64").is_none());
    let got = fleet.execute(&Command::EventsGet { id: e.id.clone(), snapshot: true }).unwrap();
    let jpeg = base64::engine::general_purpose::STANDARD.decode(got["jpeg_base64"].as_str().unwrap()).unwrap();
    assert_eq!(jpeg, b"\xff\xd8jpeg");

    let missing = fleet.execute(&Command::EventsGet { id: "nope".into(), snapshot: false }).unwrap_err();
    assert!(missing.contains("no event `nope`"), "{missing}");
    // events/tail streams only on the local socket; over MQTT the asker is told where to look.
    let (topic, reply) = fleet.answer("events/tail", br#"{"request_id":"t1"}"#).unwrap();
    assert!(topic.ends_with("/reply/t1"));
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("/events"), "{reply}");
}

#[test]
fn a_reply_over_the_packet_limit_becomes_an_error_reply_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    // 900 kB of JPEG is 1.2 MB of base64: over the broker's limit.
    let (fleet, e) = fleet_with_event(dir.path(), &vec![0xAB; 900_000]);
    let asked = format!(r#"{{"request_id":"big","args":{{"id":"{}","snapshot":true}}}}"#, e.id);
    let (topic, payload) = fleet.answer("events/get", asked.as_bytes()).unwrap();
    assert!(topic::publish_packet_bytes(&topic, payload.len()) <= topic::MAX_PACKET_BYTES);
    let reply: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!((reply["ok"].as_bool(), reply["request_id"].as_str()), (Some(false), Some("big")));
    assert!(reply["error"].as_str().unwrap().contains("packet limit"), "{reply}");
    // Without the snapshot it fits and is answered.
    let asked = format!(r#"{{"request_id":"small","args":{{"id":"{}"}}}}"#, e.id);
    let (_, payload) = fleet.answer("events/get", asked.as_bytes()).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["ok"], true);
}

#[test]
fn config_get_redacts_camera_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests();
    config.cameras[0].uri = "rtsp://admin:secret@10.0.0.2/s".into();
    config.cameras[0].password = Some(vigil_core::secret::Secret::new("hunter2"));
    let fleet = fleet(Store::open(dir.path()).unwrap(), config);
    let got = fleet.execute(&Command::ConfigGet).unwrap().to_string();
    assert!(!got.contains("secret") && got.contains("rtsp://***@10.0.0.2/s"), "{got}");
    assert!(!got.contains("hunter2"), "{got}");
}

/// A fuzz loop over the parser (deterministic, so any failure reproduces): random bytes,
/// and valid requests with random bytes flipped. The parser must never panic, and an
/// accepted request id is always a safe topic level.
#[test]
fn the_parser_survives_random_and_mutated_input() {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: [&[u8]; 3] = [
        br#"{"request_id":"r1","args":{"from":"2026-11-24T00:00:00Z","limit":5,"camera":"c"}}"#,
        br#"{"request_id":"r2","args":{"camera":"gate"}}"#,
        br#"{"request_id":"r3"}"#,
    ];
    for i in 0..20_000 {
        let payload: Vec<u8> = if i % 2 == 0 {
            (0..next() % 200).map(|_| next() as u8).collect()
        } else {
            let mut p = seeds[i % 3].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % p.len();
                p[at] = next() as u8;
            }
            p
        };
        for name in COMMANDS.iter().chain(&["", "cmd/../x"]) {
            match parse(name, &payload) {
                Ok(r) => assert!(valid_request_id(&r.request_id)),
                Err(r) => assert!(r.request_id.as_deref().is_none_or(valid_request_id)),
            }
        }
    }
}
