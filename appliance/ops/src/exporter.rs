//! `vigil-ops fleet exporter`: the fleet's state for Prometheus. One MQTT connection follows
//! every device's retained `status`, its `metrics` and its retained `ota` topic (docs/mqtt.md);
//! `GET /metrics` renders the latest of each in the Prometheus text format (version 0.0.4),
//! with the device and the camera as labels. The connection is made again whenever it drops
//! (clean session: subscribed again, the retained topics sent again).
//!
//! Only the latest message of each device is held, so memory grows with the fleet, not with
//! time; a scrape renders it in one pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde_json::Value;
use vigil_core::topic::{self, Topic};

use crate::fleet::{connect, pump, FleetArgs, Net};

/// The latest of what one device published.
#[derive(Default)]
struct DeviceView {
    status: Option<Value>,
    metrics: Option<Value>,
    metrics_at: Option<Instant>,
    ota: Option<Value>,
}

#[derive(Default)]
struct FleetView {
    devices: BTreeMap<String, DeviceView>,
    messages: u64,
    connected: bool,
    connections: u64,
}

impl FleetView {
    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else { return };
        self.messages += 1;
        match Topic::parse(topic, "") {
            Some(Topic::Status { device }) => self.devices.entry(device.to_owned()).or_default().status = Some(v),
            Some(Topic::Metrics { device }) => {
                let d = self.devices.entry(device.to_owned()).or_default();
                d.metrics = Some(rendered_part(v));
                d.metrics_at = Some(Instant::now());
            }
            Some(Topic::Ota { device }) => self.devices.entry(device.to_owned()).or_default().ota = Some(v),
            _ => {}
        }
    }
}

/// What [`render`] reads of a `metrics` message; the rest (most of `capture`, the scheduler's
/// batches, ...) is dropped on arrival, so that a large fleet's view stays small.
fn rendered_part(mut m: Value) -> Value {
    let keep = |v: &mut Value, keys: &[&str]| {
        if let Some(o) = v.as_object_mut() {
            o.retain(|k, _| keys.contains(&k.as_str()));
        }
    };
    keep(&mut m, &["uptime_s", "cameras", "store"]);
    if let Some(cameras) = m["cameras"].as_array_mut() {
        for c in cameras {
            keep(c, &["id", "capture", "inference"]);
            keep(&mut c["capture"], &["fps_out", "frames_in"]);
            let inference = &mut c["inference"];
            keep(
                inference,
                &[
                    "processed",
                    "deadline_misses",
                    "dropped_stale",
                    "dropped_error",
                    "queue",
                    "preprocess",
                    "inference",
                    "postprocess",
                    "total",
                ],
            );
        }
    }
    m
}

/// Appends a label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

/// Writes one family's header, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head<'o>(out: &'o mut String, name: &str, kind: &str, help: &str) -> Family<'o> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    /// One sample, written straight into the text (a scrape of 10 000 devices writes about
    /// 400 000 of them).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_into(self.out, v);
            self.out.push('"');
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

/// The states a camera and an update can be in (docs/mqtt.md): one series each, 1 for the
/// current one, so that a dashboard can count cameras by state.
const CAMERA_STATES: [&str; 6] = ["starting", "streaming", "stalled", "failed", "finished", "stopped"];
const UPDATE_STATES: [&str; 9] =
    ["downloading", "verifying", "accepting", "activating", "canary", "successful", "failed", "rolled_back", "idle"];

/// The cameras of a device's last `metrics` message.
fn cameras(d: &DeviceView) -> &[Value] {
    d.metrics.as_ref().and_then(|m| m["cameras"].as_array()).map_or(&[], Vec::as_slice)
}

/// A gauge of 1 or 0 per device that has a retained status: whether `flag` holds for it.
fn status_flag(out: &mut String, view: &FleetView, name: &str, help: &str, flag: impl Fn(&Value) -> bool) {
    let mut f = Family::head(out, name, "gauge", help);
    for (id, d) in &view.devices {
        if let Some(s) = &d.status {
            f.sample(name, &[("device", id)], if flag(s) { 1.0 } else { 0.0 });
        }
    }
}

fn render(view: &FleetView) -> String {
    let mut out = String::with_capacity(512 * view.devices.len() + 1024);
    let num = |v: &Value| v.as_f64();
    status_flag(&mut out, view, "vigil_device_up", "1 while the device's retained status says online.", |s| {
        s["state"] == "online"
    });
    status_flag(
        &mut out,
        view,
        "vigil_device_store_failing",
        "1 while the device's store refuses writes (its retained status has store_error): events are lost.",
        |s| s["store_error"].is_string(),
    );
    let mut f =
        Family::head(&mut out, "vigil_device_info", "gauge", "The vigil version and model a device runs (value 1).");
    for (id, d) in &view.devices {
        if let Some(s) = &d.status {
            let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
            let (version, model, model_version, backend) = (
                str_of(&s["version"]),
                str_of(&s["model"]["name"]),
                str_of(&s["model"]["version"]),
                str_of(&s["model"]["backend"]),
            );
            let labels = [
                ("device", id.as_str()),
                ("version", &version),
                ("model", &model),
                ("model_version", &model_version),
                ("backend", &backend),
            ];
            f.sample("vigil_device_info", &labels, 1.0);
        }
    }
    let mut f = Family::head(&mut out, "vigil_device_uptime_seconds", "gauge", "Seconds since vigil started.");
    for (id, d) in &view.devices {
        if let Some(u) = d.metrics.as_ref().and_then(|m| num(&m["uptime_s"])) {
            f.sample("vigil_device_uptime_seconds", &[("device", id)], u);
        }
    }
    let mut f = Family::head(
        &mut out,
        "vigil_metrics_age_seconds",
        "gauge",
        "Seconds since the device's last metrics message reached the exporter.",
    );
    for (id, d) in &view.devices {
        if let Some(at) = d.metrics_at {
            f.sample("vigil_metrics_age_seconds", &[("device", id)], at.elapsed().as_secs_f64());
        }
    }
    let mut f = Family::head(&mut out, "vigil_camera_state", "gauge", "1 for the camera's current state (status).");
    for (id, d) in &view.devices {
        let listed = d.status.as_ref().and_then(|s| s["cameras"].as_array()).map_or(&[][..], Vec::as_slice);
        for c in listed {
            let (camera, state) = (c["id"].as_str().unwrap_or(""), c["state"].as_str().unwrap_or(""));
            for s in CAMERA_STATES {
                let labels = [("device", id.as_str()), ("camera", camera), ("state", s)];
                f.sample("vigil_camera_state", &labels, if s == state { 1.0 } else { 0.0 });
            }
        }
    }
    let per_camera: [(&str, &str, &str, &[&str]); 6] = [
        ("vigil_camera_fps", "gauge", "Frames per second delivered by the camera's capture.", &["capture", "fps_out"]),
        ("vigil_camera_frames_total", "counter", "Frames captured since vigil started.", &["capture", "frames_in"]),
        ("vigil_inference_frames_total", "counter", "Frames run through the model.", &["inference", "processed"]),
        (
            "vigil_inference_deadline_misses_total",
            "counter",
            "Frames whose result came after their latency budget (discarded).",
            &["inference", "deadline_misses"],
        ),
        (
            "vigil_inference_dropped_stale_total",
            "counter",
            "Frames dropped because they could not make their budget.",
            &["inference", "dropped_stale"],
        ),
        (
            "vigil_inference_dropped_error_total",
            "counter",
            "Frames dropped on inference errors.",
            &["inference", "dropped_error"],
        ),
    ];
    for (name, kind, help, path) in per_camera {
        let mut f = Family::head(&mut out, name, kind, help);
        for (id, d) in &view.devices {
            for c in cameras(d) {
                let v = path.iter().fold(c, |v, k| &v[*k]);
                if let Some(x) = num(v) {
                    f.sample(name, &[("device", id.as_str()), ("camera", c["id"].as_str().unwrap_or(""))], x);
                }
            }
        }
    }
    let mut f = Family::head(
        &mut out,
        "vigil_latency_seconds",
        "gauge",
        "Per-frame latency quantiles of each stage over the metrics period (stage: queue, preprocess, inference, \
         postprocess, total).",
    );
    for (id, d) in &view.devices {
        for c in cameras(d) {
            let camera = c["id"].as_str().unwrap_or("");
            for stage in ["queue", "preprocess", "inference", "postprocess", "total"] {
                for (key, q) in [("p50_ms", "0.5"), ("p95_ms", "0.95"), ("p99_ms", "0.99"), ("max_ms", "1")] {
                    if let Some(ms) = num(&c["inference"][stage][key]) {
                        let labels = [("device", id.as_str()), ("camera", camera), ("stage", stage), ("quantile", q)];
                        f.sample("vigil_latency_seconds", &labels, ms / 1000.0);
                    }
                }
            }
        }
    }
    let store: [(&str, &str, &str); 5] = [
        ("vigil_outbox_messages", "outbox", "Messages waiting in the device's outbox for the broker."),
        ("vigil_outbox_evicted_total", "outbox_evicted", "Outbox messages dropped, oldest first, when it was full."),
        ("vigil_store_events", "events", "Events held in the device's store."),
        ("vigil_store_size_bytes", "size_bytes", "The store's size on disk."),
        ("vigil_outbox_dropped_total", "outbox_dropped", "Outbox entries that could never be sent, removed."),
    ];
    for (name, key, help) in store {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        let mut f = Family::head(&mut out, name, kind, help);
        for (id, d) in &view.devices {
            if let Some(x) = d.metrics.as_ref().and_then(|m| num(&m["store"][key])) {
                f.sample(name, &[("device", id)], x);
            }
        }
    }
    let mut f = Family::head(
        &mut out,
        "vigil_update_state",
        "gauge",
        "1 for the state of the device's current or last update (retained ota topic); idle before any.",
    );
    for (id, d) in &view.devices {
        if d.status.is_none() && d.ota.is_none() {
            continue;
        }
        let (state, name, version) = match &d.ota {
            Some(o) => (
                o["state"].as_str().unwrap_or("idle").to_owned(),
                o["name"].as_str().unwrap_or("").to_owned(),
                o["version"].as_str().unwrap_or("").to_owned(),
            ),
            None => ("idle".to_owned(), String::new(), String::new()),
        };
        for s in UPDATE_STATES {
            let labels = [("device", id.as_str()), ("name", &name), ("version", &version), ("state", s)];
            f.sample("vigil_update_state", &labels, if s == state { 1.0 } else { 0.0 });
        }
    }
    let _ = writeln!(
        out,
        "# HELP vigil_exporter_devices Devices the exporter has heard from.\n# TYPE vigil_exporter_devices gauge\n\
         vigil_exporter_devices {}\n# HELP vigil_exporter_messages_total MQTT messages taken in.\n\
         # TYPE vigil_exporter_messages_total counter\nvigil_exporter_messages_total {}\n\
         # HELP vigil_exporter_broker_up 1 while the exporter is connected to the broker.\n\
         # TYPE vigil_exporter_broker_up gauge\nvigil_exporter_broker_up {}",
        view.devices.len(),
        view.messages,
        u8::from(view.connected)
    );
    out
}

/// Serves `GET /metrics` (and `/` with a pointer to it) on `listener`, one connection at a time.
fn serve(listener: TcpListener, view: Arc<Mutex<FleetView>>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        let _ = answer(&mut stream, &view);
    }
}

fn answer(stream: &mut TcpStream, view: &Mutex<FleetView>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > 16 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let body = render(&view.lock().unwrap_or_else(|p| p.into_inner()));
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", "vigil fleet exporter: see /metrics\n".to_owned()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found: see /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_owned()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Messages the network thread may hold for the exporter.
const MESSAGE_QUEUE: usize = 65_536;

/// Runs the exporter until killed.
pub fn run(fleet: &FleetArgs, listen: SocketAddr) -> anyhow::Result<u8> {
    let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let view = Arc::new(Mutex::new(FleetView::default()));
    eprintln!("serving http://{}/metrics for the fleet on {}", listener.local_addr()?, fleet.broker);
    {
        let view = view.clone();
        std::thread::Builder::new().name("http".into()).spawn(move || serve(listener, view))?;
    }
    let (client, connection) = connect(fleet, 16)?;
    let filters = vec![topic::status("+"), topic::metrics("+"), topic::ota("+")];
    let (tx, events) = std::sync::mpsc::sync_channel(MESSAGE_QUEUE);
    {
        let client = client.clone();
        std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || pump(connection, &client, &filters, &tx, &AtomicBool::new(false)))?;
    }
    let mut complained: Option<SystemTime> = None;
    for event in events {
        match event {
            Net::Connected => {
                let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
                v.connected = true;
                v.connections += 1;
                if v.connections > 1 {
                    eprintln!("connected to {} again", fleet.broker);
                }
                complained = None;
            }
            Net::Message(topic, payload) => {
                view.lock().unwrap_or_else(|p| p.into_inner()).on_message(&topic, &payload);
            }
            Net::Subscribed => {}
            Net::Down(e) => {
                let first = view.lock().unwrap_or_else(|p| p.into_inner()).connections == 0;
                if first {
                    anyhow::bail!("cannot reach the broker at {}: {e}", fleet.broker);
                }
                view.lock().unwrap_or_else(|p| p.into_inner()).connected = false;
                if complained.is_none_or(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60)) {
                    eprintln!("the broker at {}: {e}; reconnecting", fleet.broker);
                    complained = Some(SystemTime::now());
                }
            }
        }
    }
    anyhow::bail!("the connection to {} closed", fleet.broker)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_grafana_dashboard_asks_only_for_series_the_exporter_serves() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/vigil-fleet.json");
        let dash: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let served: BTreeSet<String> = render(&FleetView::default())
            .lines()
            .filter_map(|l| Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_owned()))
            .collect();
        let mut exprs: Vec<String> = dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
            .collect();
        exprs.extend(
            dash["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["definition"].as_str().map(str::to_owned)),
        );
        let asked: BTreeSet<&str> = exprs
            .iter()
            .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|w| w.starts_with("vigil_"))
            .collect();
        assert!(asked.len() >= 8, "{asked:?}");
        for name in asked {
            assert!(served.contains(name), "the dashboard asks for {name}, which the exporter does not serve");
        }
    }

    #[test]
    fn a_device_renders_as_labelled_series_in_the_text_format() {
        let mut view = FleetView::default();
        let status = serde_json::json!({ "state": "online", "device_id": "gate-1", "version": "0.1.0",
            "model": { "name": "shapes", "version": "1.0.0", "backend": "onnxruntime-cpu" },
            "cameras": [ { "id": "door", "state": "streaming" } ] });
        view.on_message("vigil/gate-1/status", status.to_string().as_bytes());
        let metrics = serde_json::json!({ "device_id": "gate-1", "uptime_s": 60, "cameras": [ { "id": "door",
            "capture": { "fps_out": 15.0, "frames_in": 900 },
            "inference": { "processed": 898, "deadline_misses": 2, "dropped_stale": 1, "dropped_error": 0,
                           "total": { "p50_ms": 4.0, "p95_ms": 5.0, "p99_ms": 6.5, "max_ms": 9.0 } } } ],
            "store": { "events": 12, "outbox": 3, "outbox_evicted": 0, "outbox_dropped": 0, "size_bytes": 4096 } });
        view.on_message("vigil/gate-1/metrics", metrics.to_string().as_bytes());
        view.on_message(
            "vigil/gate-2/status",
            br#"{"state": "offline", "store_error": "store I/O failed", "cameras": [{"id": "a\"b\\c\nd", "state": "failed"}]}"#,
        );
        view.on_message("vigil/gate-2/ota", br#"{"state": "canary", "name": "shapes", "version": "1.0.1"}"#);
        view.on_message("vigil/gate-3/status", b"not json");
        let text = render(&view);
        for line in [
            r#"vigil_device_up{device="gate-1"} 1"#,
            r#"vigil_device_up{device="gate-2"} 0"#,
            r#"vigil_device_store_failing{device="gate-1"} 0"#,
            r#"vigil_device_store_failing{device="gate-2"} 1"#,
            r#"vigil_device_info{device="gate-1",version="0.1.0",model="shapes",model_version="1.0.0",backend="onnxruntime-cpu"} 1"#,
            r#"vigil_camera_state{device="gate-1",camera="door",state="streaming"} 1"#,
            r#"vigil_camera_state{device="gate-2",camera="a\"b\\c\nd",state="failed"} 1"#,
            r#"vigil_inference_deadline_misses_total{device="gate-1",camera="door"} 2"#,
            r#"vigil_latency_seconds{device="gate-1",camera="door",stage="total",quantile="0.99"} 0.0065"#,
            r#"vigil_outbox_messages{device="gate-1"} 3"#,
            r#"vigil_update_state{device="gate-2",name="shapes",version="1.0.1",state="canary"} 1"#,
            r#"vigil_update_state{device="gate-1",name="",version="",state="idle"} 1"#,
            "vigil_exporter_devices 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // Every sample's family is declared once, before its samples.
        let mut declared = std::collections::BTreeSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                assert!(declared.insert(rest.split(' ').next().unwrap().to_owned()), "declared twice: {l}");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} sampled before its TYPE line");
            }
        }
    }
}
