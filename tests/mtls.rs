//! The fleet broker as shipped (appliance/config/mosquitto): mutual TLS with certificates made by
//! the test, and the ACL that confines each device to `vigil/<its id>/`.

mod support;

use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use support::*;

#[test]
fn a_device_with_its_certificate_reports_over_mutual_tls() {
    let broker = TlsBroker::start(&["gate-01", "operator"]);
    let ops = Subscriber::start_tls(broker.port, "vigil/#", &broker.tls(Some("operator")));
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_uri();
    let config = write_config(dir.path(), "gate-01", &broker.url(), &[("clip", clip)]);
    append_config(&config, &broker.tls_toml("gate-01"));
    let vigil = Vigil::start(&config, dir.path());
    let arrived = wait_until(Duration::from_secs(30), || ops.count("vigil/gate-01/events") > 5);
    assert!(arrived, "events over mTLS:\n{}\nbroker:\n{}", vigil.log(), broker.log());
    // The operator's CLI over the same mutual TLS.
    let op = broker.tls(Some("operator"));
    let (ca, cert, key) =
        (op.ca.display().to_string(), op.cert.unwrap().display().to_string(), op.key.unwrap().display().to_string());
    let url = broker.url();
    let (code, out, err) =
        ops_cmd(&["fleet", "--broker", &url, "--ca", &ca, "--cert", &cert, "--key", &key, "cmd", "gate-01", "status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"device_id\": \"gate-01\""), "{out}");
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let states: Vec<serde_json::Value> =
        ops.on("vigil/gate-01/status").iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
    assert_eq!(states.first().map(|s| s["state"].clone()), Some("online".into()), "{states:?}");
}

/// Connects with `tls` and returns the first connection outcome: Ok on CONNACK, Err otherwise.
fn try_connect(port: u16, tls: &vigil_config::TlsConfig) -> Result<(), String> {
    let (_client, mut connection) = rumqttc::Client::new(mqtt_options(port, Some(tls)), 10);
    for event in connection.iter().take(5) {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == rumqttc::ConnectReturnCode::Success { Ok(()) } else { Err(format!("{ack:?}")) };
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("no CONNACK".into())
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let broker = TlsBroker::start(&["operator"]);
    assert_eq!(try_connect(broker.port, &broker.tls(Some("operator"))), Ok(()), "the control: a certified client");
    let refused = try_connect(broker.port, &broker.tls(None));
    assert!(refused.is_err(), "no client certificate, yet connected");
}

/// Publishes one QoS 1 message as the client in `tls` and waits for its PUBACK.
fn publish(port: u16, tls: &vigil_config::TlsConfig, topic: &str, payload: &[u8]) {
    let (client, mut connection) = rumqttc::Client::new(mqtt_options(port, Some(tls)), 10);
    client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).unwrap();
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publishing on {topic}: {e}"),
        }
    }
    let _ = client.disconnect();
}

#[test]
fn a_device_can_neither_read_nor_write_another_devices_topics() {
    let broker = TlsBroker::start(&["dev-a", "dev-b", "operator", "homeassistant"]);
    let (operator, dev_b) = (broker.tls(Some("operator")), broker.tls(Some("dev-b")));
    let ha = Subscriber::start_tls(broker.port, "homeassistant/#", &broker.tls(Some("homeassistant")));
    let ops = Subscriber::start_tls(broker.port, "vigil/#", &operator);
    // dev-b asks for everything; the ACL lets only its own topics through to it.
    let b_sees = Subscriber::start_tls(broker.port, "vigil/#", &dev_b);
    publish(broker.port, &operator, "vigil/dev-a/cmd/restart", b"{\"request_id\":\"1\"}");
    publish(broker.port, &operator, "vigil/dev-b/cmd/status", b"{\"request_id\":\"2\"}");
    assert!(wait_until(Duration::from_secs(10), || b_sees.count("vigil/dev-b/cmd/status") == 1), "{}", broker.log());
    assert_eq!(b_sees.count("vigil/dev-a/cmd/restart"), 0, "dev-b read dev-a's command");
    // dev-b writes: its own events reach the operator, a command on dev-a's topic does not.
    publish(broker.port, &dev_b, "vigil/dev-a/cmd/restart", b"{\"request_id\":\"forged\"}");
    publish(broker.port, &dev_b, "vigil/dev-b/events", b"{\"own\":true}");
    assert!(wait_until(Duration::from_secs(10), || ops.count("vigil/dev-b/events") == 1), "{}", broker.log());
    let forged = ops.on("vigil/dev-a/cmd/restart").iter().filter(|p| p.ends_with(b"\"forged\"}")).count();
    assert_eq!(forged, 0, "dev-b published on dev-a's topic");
    // The operator's own command on that topic did arrive: the check above can see messages there.
    assert_eq!(ops.count("vigil/dev-a/cmd/restart"), 1, "the operator's own command went through");
    // Home Assistant discovery: a device announces its own sensors only.
    publish(broker.port, &dev_b, "homeassistant/sensor/dev-a/cam_last_detection/config", b"{}");
    publish(broker.port, &dev_b, "homeassistant/sensor/dev-b/cam_last_detection/config", b"{}");
    let own = "homeassistant/sensor/dev-b/cam_last_detection/config";
    assert!(wait_until(Duration::from_secs(10), || ha.count(own) == 1), "{}", broker.log());
    assert_eq!(ha.count("homeassistant/sensor/dev-a/cam_last_detection/config"), 0, "dev-b announced for dev-a");
}

#[test]
fn a_device_with_another_devices_certificate_refuses_to_start() {
    // The broker would acknowledge and drop every message of a device whose certificate CN is
    // not its device_id: vigil refuses to run that way, and says how to fix it.
    let broker = TlsBroker::start(&["gate-01"]);
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_uri();
    let config = write_config(dir.path(), "gate-02", &broker.url(), &[("clip", clip)]);
    append_config(&config, &broker.tls_toml("gate-01"));
    let vigil = Vigil::start(&config, dir.path());
    let (status, log) = vigil.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "{log}");
    assert!(log.contains("is issued to `gate-01`, but device_id is `gate-02`"), "{log}");
}
