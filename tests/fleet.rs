//! Fleet commands over a real broker: every command, valid and malformed, answered on
//! `vigil/<id>/reply/<request id>`; vigil stays up through all the bad ones. Each test runs on
//! mosquitto and again on rumqttd (a second implementation, installed by `make setup`), so that
//! nothing depends on mosquitto's ways.

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::*;

/// Which broker a test runs on.
#[derive(Clone, Copy)]
enum On {
    Mosquitto,
    Rumqttd,
}

/// A broker of either kind on a free loopback port, stopped when dropped.
struct AnyBroker {
    port: u16,
    _mosquitto: Option<Broker>,
    _rumqttd: Option<(vigil_testkit::LocalBroker, tempfile::TempDir)>,
}

impl AnyBroker {
    fn start(on: On) -> Self {
        match on {
            On::Mosquitto => {
                let b = Broker::start();
                Self { port: b.port, _mosquitto: Some(b), _rumqttd: None }
            }
            On::Rumqttd => {
                let dir = tempfile::tempdir().unwrap();
                let b = vigil_testkit::LocalBroker::rumqttd(dir.path(), 16).unwrap();
                Self { port: b.port, _mosquitto: None, _rumqttd: Some((b, dir)) }
            }
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

struct Operator {
    device: &'static str,
    replies: Subscriber,
    client: rumqttc::Client,
}

impl Operator {
    fn connect(port: u16) -> Self {
        Self::connect_to(port, "cmdr")
    }

    fn connect_to(port: u16, device: &'static str) -> Self {
        let replies = Subscriber::start(port, &format!("vigil/{device}/reply/#"));
        let (client, mut connection) = rumqttc::Client::new(mqtt_options(port, None), 10);
        std::thread::spawn(move || for _ in connection.iter() {});
        Self { device, replies, client }
    }

    fn send(&self, name: &str, payload: &[u8]) {
        let topic = format!("vigil/{}/cmd/{name}", self.device);
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).unwrap();
    }

    /// The reply on `reply/<id>`, waiting up to `within`.
    fn reply(&self, id: &str, within: Duration) -> serde_json::Value {
        let topic = format!("vigil/{}/reply/{id}", self.device);
        assert!(wait_until(within, || self.replies.count(&topic) > 0), "no reply on {topic}");
        self.last_on(&topic)
    }

    /// The latest message on `topic`, as JSON.
    fn last_on(&self, topic: &str) -> serde_json::Value {
        serde_json::from_slice(self.replies.on(topic).last().expect("a message")).unwrap()
    }

    /// Like [`Operator::ask`], for the first command to a service that has just connected:
    /// commands are not retained, so it sends again each second (30 s at most) until vigil has
    /// subscribed and answers. Only for commands that may run twice.
    fn ask_once_subscribed(&self, name: &str, payload: &[u8], expect_id: &str) -> serde_json::Value {
        let topic = format!("vigil/{}/reply/{expect_id}", self.device);
        let answered = wait_until(Duration::from_secs(30), || {
            self.send(name, payload);
            wait_until(Duration::from_secs(1), || self.replies.count(&topic) > 0)
        });
        assert!(answered, "no reply on {topic}");
        self.last_on(&topic)
    }

    /// Sends `payload` to `cmd/<name>` and returns the reply that arrives on `reply/<expect_id>`.
    fn ask(&self, name: &str, payload: &[u8], expect_id: &str) -> serde_json::Value {
        let topic = format!("vigil/{}/reply/{expect_id}", self.device);
        let before = self.replies.count(&topic);
        self.send(name, payload);
        assert!(wait_until(Duration::from_secs(10), || self.replies.count(&topic) > before), "no reply on {topic}");
        self.last_on(&topic)
    }
}

fn request(id: &str, args: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "request_id": id, "args": args })).unwrap()
}

#[test]
fn every_command_is_answered_and_bad_ones_are_refused_with_a_reason() {
    every_command_answered(On::Mosquitto);
}

#[test]
fn every_command_is_answered_the_same_through_rumqttd() {
    every_command_answered(On::Rumqttd);
}

fn every_command_answered(on: On) {
    let broker = AnyBroker::start(on);
    let dir = tempfile::tempdir().unwrap();
    let clip = looping_clip_uri();
    let ghost = format!("rtsp://127.0.0.1:{}/nothing", free_port());
    let config = write_config(dir.path(), "cmdr", &broker.url(), &[("clip", clip), ("ghost", ghost)]);
    append_config(&config, "password = \"hunter2\"\nuser = \"viewer\"\n");
    let vigil = Vigil::start(&config, dir.path());
    let events = Subscriber::start(broker.port, "vigil/cmdr/events");
    assert!(wait_until(Duration::from_secs(30), || events.count("vigil/cmdr/events") > 20), "{}", vigil.log());
    let op = Operator::connect(broker.port);

    let status = op.ask("status", &request("s1", serde_json::json!({})), "s1");
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["result"]["cameras"][0]["id"], "clip");
    assert_eq!(status["result"]["device_id"], "cmdr");

    let config = op.ask("config/get", &request("c1", serde_json::json!({})), "c1");
    assert_eq!(config["result"]["device_id"], "cmdr", "{config}");
    assert_eq!(config["result"]["camera"][1]["password"], "***");
    assert!(!config.to_string().contains("hunter2"), "the camera password left the device");

    // Two pages of events in capture order, the second after the first's cursor.
    let page1 = op.ask("events/query", &request("q1", serde_json::json!({ "camera": "clip", "limit": 3 })), "q1");
    let next = page1["result"]["next"].as_str().expect("more events than one page").to_owned();
    let page2 = op.ask(
        "events/query",
        &request("q2", serde_json::json!({ "camera": "clip", "limit": 3, "after": next })),
        "q2",
    );
    let times = |p: &serde_json::Value| -> Vec<u64> {
        p["result"]["events"].as_array().unwrap().iter().map(|e| e["start_ns"].as_u64().unwrap()).collect()
    };
    let (t1, t2) = (times(&page1), times(&page2));
    assert_eq!((t1.len(), t2.len()), (3, 3), "{page1}\n{page2}");
    assert!(t1.windows(2).all(|w| w[0] <= w[1]) && t1[2] <= t2[0], "pages in start order: {t1:?} {t2:?}");
    let ids = |p: &serde_json::Value| -> Vec<String> {
        p["result"]["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    assert!(ids(&page1).iter().all(|i| !ids(&page2).contains(i)), "no event on both pages");

    // A picture from a camera that streams; a clear error for one that does not, or is unknown.
    let snap = op.ask("snapshot", &request("p1", serde_json::json!({ "camera": "clip" })), "p1");
    assert_eq!(snap["ok"], true, "{snap}");
    let jpeg = {
        use base64::Engine as _;
        let b64 = snap["result"]["jpeg_base64"].as_str().unwrap();
        base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")
    };
    assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG");
    assert!(snap["result"]["width"].as_u64().unwrap() > 0 && snap["result"]["captured_at"].is_string(), "{snap}");
    let dark = op.ask("snapshot", &request("p2", serde_json::json!({ "camera": "ghost" })), "p2");
    assert!(dark["error"].as_str().unwrap().contains("processed no frame"), "{dark}");
    let nobody = op.ask("snapshot", &request("p3", serde_json::json!({ "camera": "nobody" })), "p3");
    assert!(nobody["error"].as_str().unwrap().contains("no camera `nobody`"), "{nobody}");

    let restarted = op.ask("restart", &request("r1", serde_json::json!({ "camera": "clip" })), "r1");
    assert_eq!(restarted["ok"], true, "{restarted}");
    let nobody = op.ask("restart", &request("r2", serde_json::json!({ "camera": "nobody" })), "r2");
    assert!(nobody["error"].as_str().unwrap().contains("no camera `nobody`"), "{nobody}");

    // Malformed and unknown requests: a reason each, on the asker's id when there is one.
    let unknown = op.ask("reboot", &request("u1", serde_json::json!({})), "u1");
    assert_eq!(unknown["ok"], false);
    assert!(unknown["error"].as_str().unwrap().contains("unknown command `reboot`"), "{unknown}");
    let extra = op.ask("status", br#"{"request_id":"x1","args":{},"please":true}"#, "x1");
    assert!(extra["error"].as_str().unwrap().contains("unknown field"), "{extra}");
    let not_json = op.ask("status", b"{{{", "invalid");
    assert_eq!(not_json["request_id"], "invalid");
    let huge = op.ask("status", &vec![b'x'; 70_000], "invalid");
    assert!(huge["error"].as_str().unwrap().contains("limit"), "{huge}");
    let bad_time = op.ask("events/query", &request("q3", serde_json::json!({ "from": "soon" })), "q3");
    assert!(bad_time["error"].as_str().unwrap().contains("RFC 3339"), "{bad_time}");

    // Still up and still reporting after all of that; then the service restart.
    let before = events.count("vigil/cmdr/events");
    assert!(wait_until(Duration::from_secs(15), || events.count("vigil/cmdr/events") > before), "{}", vigil.log());
    let bye = op.ask("restart", &request("r3", serde_json::json!({})), "r3");
    assert_eq!(bye["result"]["exit_code"], 75, "{bye}");
    let (status, log) = vigil.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(75), "exits for its supervisor to restart it:\n{log}");
    assert!(log.contains("restart requested over MQTT"), "{log}");
}

#[test]
fn the_fleet_cli_lists_devices_sends_commands_and_watches_events() {
    fleet_cli(On::Mosquitto);
}

#[test]
fn the_fleet_cli_works_the_same_through_rumqttd() {
    fleet_cli(On::Rumqttd);
}

fn fleet_cli(on: On) {
    let broker = AnyBroker::start(on);
    let dir = tempfile::tempdir().unwrap();
    let clip = looping_clip_uri();
    let config = write_config(dir.path(), "cli1", &broker.url(), &[("clip", clip)]);
    let vigil = Vigil::start(&config, dir.path());
    let url = broker.url();
    let fleet = |args: &[&str]| {
        let mut all = vec!["fleet", "--broker", url.as_str()];
        all.extend_from_slice(args);
        ops_cmd(&all)
    };
    assert!(
        wait_until(Duration::from_secs(20), || fleet(&["list", "--wait", "500ms"]).1.contains("cli1")),
        "{}",
        vigil.log()
    );
    let (code, out, _) = fleet(&["list", "--wait", "1s"]);
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.starts_with("cli1")).unwrap();
    assert!(line.contains("online") && line.contains("shapes"), "{line}");

    let (code, out, err) = fleet(&["show", "cli1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["device_id"], "cli1");

    let (code, out, err) = fleet(&["cmd", "cli1", "status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["result"]["device_id"], "cli1");
    // Paged: two events once there are at least two.
    let mut out = String::new();
    let paged = wait_until(Duration::from_secs(30), || {
        let code;
        (code, out, _) = fleet(&["cmd", "cli1", "events/query", "--args", r#"{"limit": 2}"#]);
        assert_eq!(code, 0, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["result"]["events"].as_array().unwrap().len() == 2
    });
    assert!(paged, "{out}");
    let (code, out, _) = fleet(&["cmd", "cli1", "reboot"]);
    assert_eq!(code, 1, "a refused command exits 1: {out}");
    assert!(out.contains("unknown command"), "{out}");
    let (code, _, err) = fleet(&["cmd", "nobody", "status", "--timeout", "1s"]);
    assert_eq!(code, 2, "no reply exits 2");
    assert!(err.contains("no reply from `nobody`"), "{err}");
    let (code, _, err) = fleet(&["cmd", "cli1", "status", "--args", "{not json"]);
    assert_ne!(code, 0);
    assert!(err.contains("--args is not JSON"), "{err}");

    let (code, out, err) = fleet(&["watch", "cli1", "--count", "3"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<vigil_core::event::Event> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.device_id == "cli1"));
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let (code, _, err) = ops_cmd(&["fleet", "--broker", "mqtts://127.0.0.1:1", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("--ca"), "TLS without a CA is named: {err}");
    // The device's binary carries no operator tools, and says where they went.
    let (code, _, err) = vigil_cmd(&["fleet", "list"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("run `vigil-ops fleet …`"), "{err}");
}

#[test]
fn config_set_keeps_a_healthy_configuration_and_rolls_back_an_unhealthy_one() {
    config_set(On::Mosquitto);
}

#[test]
fn config_set_works_the_same_through_rumqttd() {
    config_set(On::Rumqttd);
}

fn config_set(on: On) {
    let broker = AnyBroker::start(on);
    let dir = tempfile::tempdir().unwrap();
    let clip = looping_clip_uri();
    let config = write_config(dir.path(), "cfg", &broker.url(), &[("clip", clip)]);
    // config/set writes a file of its own under the data directory, which then runs instead;
    // the file vigil was started with (a package's, read-only on a device) is never written.
    let given = std::fs::read(&config).unwrap();
    let remote = vigil_fleet::config_change::remote_path(&vigil_config::Config::load(&config).unwrap().data_dir);
    let mut vigil = Vigil::start(&config, dir.path());
    let op = Operator::connect_to(broker.port, "cfg");
    let current = op.ask_once_subscribed("config/get", &request("g1", serde_json::json!({})), "g1")["result"].clone();
    // A healthy change gets a long window (a loaded machine may start slowly); a sick one fails
    // whatever the window, so it gets a short one.
    let set = |id: &str, config: &serde_json::Value, window_s: u64| {
        request(id, serde_json::json!({ "config": config, "health_window_s": window_s }))
    };

    // Refused at once, nothing changed, no restart: an invalid value, and another device id.
    let mut bad = current.clone();
    bad["mqtt"]["max_inflight"] = 0.into();
    bad["device_id"] = "someone-else".into();
    let refused = op.ask("config/set", &set("s0", &bad, 5), "s0");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("mqtt.max_inflight") && error.contains("device_id") && error.contains("nothing changed"),
        "{error}"
    );
    assert!(vigil.is_running());

    // A healthy change: a second camera. vigil restarts (exit 75, as for its supervisor), runs
    // the new configuration for the window, and then answers.
    let mut good = current.clone();
    good["camera"].as_array_mut().unwrap().push(serde_json::json!({ "id": "pattern", "uri": "test://ball" }));
    op.send("config/set", &set("s1", &good, 15));
    let (status, log) = vigil.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(75), "{log}");
    let vigil = Vigil::start(&config, dir.path());
    let applied = op.reply("s1", Duration::from_secs(40));
    assert_eq!(applied["ok"], true, "{applied}\n{}", vigil.log());
    assert_eq!(applied["result"]["applied"], true);
    let written = vigil_config::Config::load(&remote).expect("the written configuration loads");
    assert_eq!(written.cameras.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["clip", "pattern"]);
    assert_eq!(std::fs::read(&config).unwrap(), given, "the given file is untouched");
    let after_good = std::fs::read_to_string(&remote).unwrap();

    // An unhealthy change: the new camera's source does not exist. After the window vigil puts
    // the previous file back, restarts, and the restored service answers with the reason.
    let mut sick = good.clone();
    sick["camera"][1]["uri"] = file_uri(&dir.path().join("missing.mp4")).into();
    op.send("config/set", &set("s2", &sick, 5));
    let (status, log) = vigil.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(75), "restart to apply:\n{log}");
    let vigil = Vigil::start(&config, dir.path());
    let (status, log) = vigil.wait_exit(Duration::from_secs(40));
    assert_eq!(status.code(), Some(75), "restart to roll back:\n{log}");
    assert!(log.contains("configuration change rolled back"), "{log}");
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), after_good, "the previous file, byte for byte");
    assert_eq!(std::fs::read(&config).unwrap(), given);
    let vigil = Vigil::start(&config, dir.path());
    let rolled = op.reply("s2", Duration::from_secs(30));
    assert_eq!(rolled["ok"], false, "{rolled}");
    let error = rolled["error"].as_str().unwrap();
    assert!(error.contains("rolled back") && error.contains("camera `pattern` delivered no frame"), "{error}");
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
}
