//! `vigil-ops fleet-sim`: a simulated fleet that speaks docs/mqtt.md, for benchmarks, tests and
//! rehearsing a rollout before a real fleet sees it. Many devices run in one process, each with
//! its own MQTT connection (its own client id, clean session, last will), its retained `status`,
//! and answers to `ota/apply` with the documented `ota` states. How long each step of an update
//! takes, and which devices fail, never answer or are offline, are options; the choice of
//! devices is a hash of the seed and the device id, so a run can be repeated.
//!
//! On an `mqtts://` broker each device presents its own client certificate, whose common name is
//! its device id, as the shipped fleet broker requires (appliance/config/mosquitto: the CN is
//! the user name its ACL confines to `vigil/<id>/`); `fleet-bench` and the tests make them.
//!
//! It prints `READY <n>` on stdout once every device has connected and its status has been
//! acknowledged by the broker, and runs until its standard input closes (or SIGTERM), then
//! writes its report: every command each device received.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::json;
use vigil_core::topic;

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// The broker: mqtt://host:port, or mqtts://host:port with --ca, --device-certs and
    /// --device-key.
    #[arg(long, env = "VIGIL_FLEET_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// For mqtts://: the CA certificate (PEM) that the broker's certificate is checked against.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// For mqtts://: the devices' certificates (PEM), one per device in the order of their ids
    /// (the first for `<prefix>-00001`), each with its device id as common name.
    #[arg(long)]
    pub device_certs: Option<PathBuf>,
    /// For mqtts://: the private key (PEM) of every certificate in --device-certs.
    #[arg(long)]
    pub device_key: Option<PathBuf>,
    /// How many devices.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Device ids are `<prefix>-00001`, ….
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// The model every device serves at start.
    #[arg(long, default_value = "shapes")]
    pub model: String,
    #[arg(long, default_value = "1.0.0")]
    pub model_version: String,
    /// The vigil version every device runs at start.
    #[arg(long, default_value = "0.1.0")]
    pub vigil_version: String,
    /// How long each of an update's five steps (downloading … canary) takes.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// The share of devices (0 to 1) whose updates are rolled back by their canary.
    #[arg(long, default_value_t = 0.0)]
    pub fail: f64,
    /// The share of devices that take a command and never answer or update.
    #[arg(long, default_value_t = 0.0)]
    pub silent: f64,
    /// The share of devices whose status says `offline` (they are connected, but a rollout
    /// does not send to them).
    #[arg(long, default_value_t = 0.0)]
    pub offline: f64,
    /// Each device publishes its `metrics` this often (0: never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub metrics_every: Duration,
    /// Each device publishes an event (`new`, then `end`) this often (0: never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub events_every: Duration,
    /// New connections per second while the fleet comes up.
    #[arg(long, default_value_t = 2000)]
    pub connect_rate: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the report (JSON) at the end.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// What one simulated device saw.
#[derive(Debug, Default, Serialize)]
struct Seen {
    /// The request id of each `ota/apply`, in order.
    ota_apply: Vec<String>,
    /// Other commands, by name.
    other: Vec<String>,
}

/// The report: what each device received.
#[derive(Debug, Serialize)]
struct Report {
    devices: BTreeMap<String, Seen>,
    /// Connections made again after one was lost.
    reconnections: usize,
}

struct Shared {
    args: SimArgs,
    host: String,
    port: u16,
    seen: Mutex<BTreeMap<String, Seen>>,
    ready: AtomicUsize,
    reconnections: AtomicUsize,
    tls: Option<Tls>,
}

/// What devices present on an `mqtts://` broker.
struct Tls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: Arc<rustls::RootCertStore>,
    /// One per device, in the order of their ids.
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl Tls {
    fn load(args: &SimArgs) -> anyhow::Result<Self> {
        let need = |p: &Option<PathBuf>, name: &str| {
            p.clone().with_context(|| format!("an mqtts:// broker needs {name} (see fleet-sim --help)"))
        };
        let (ca, certs, key) = (
            need(&args.ca, "--ca")?,
            need(&args.device_certs, "--device-certs")?,
            need(&args.device_key, "--device-key")?,
        );
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut read(&ca)?.as_slice()) {
            roots.add(cert.with_context(|| ca.display().to_string())?)?;
        }
        let certs = rustls_pemfile::certs(&mut read(&certs)?.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| certs.display().to_string())?;
        anyhow::ensure!(
            certs.len() >= args.devices,
            "--device-certs holds {} certificates for {} devices: one per device",
            certs.len(),
            args.devices
        );
        let key = rustls_pemfile::private_key(&mut read(&key)?.as_slice())
            .with_context(|| key.display().to_string())?
            .with_context(|| format!("{} holds no private key", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Self { provider, roots: Arc::new(roots), certs, key })
    }

    /// The TLS client configuration of device `index` (from 0).
    fn config(&self, index: usize) -> anyhow::Result<rustls::ClientConfig> {
        Ok(rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(vec![self.certs[index].clone()], self.key.clone_key())?)
    }
}

/// A device id's draw from `[0, 1)` for `what`, from the seed.
fn draw(seed: u64, id: &str, what: &str) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, id, what).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

pub fn run(args: &SimArgs) -> anyhow::Result<u8> {
    let url = vigil_config::BrokerUrl::parse(&args.broker).map_err(|e| anyhow::anyhow!("--broker: {e}"))?;
    for (name, v) in [("--fail", args.fail), ("--silent", args.silent), ("--offline", args.offline)] {
        anyhow::ensure!((0.0..=1.0).contains(&v), "{name} is a share of the devices, from 0 to 1: {v}");
    }
    anyhow::ensure!(args.connect_rate > 0, "--connect-rate must be at least 1");
    let tls = if url.tls { Some(Tls::load(args)?) } else { None };
    let shared = Arc::new(Shared {
        args: args.clone(),
        host: url.host,
        port: url.port,
        seen: Mutex::new(BTreeMap::new()),
        ready: AtomicUsize::new(0),
        reconnections: AtomicUsize::new(0),
        tls,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(fleet(shared.clone()))?;
    let report = Report {
        devices: std::mem::take(&mut *shared.seen.lock().unwrap()),
        reconnections: shared.reconnections.load(Ordering::Relaxed),
    };
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(0)
}

async fn fleet(shared: Arc<Shared>) -> anyhow::Result<()> {
    let n = shared.args.devices;
    let gap = Duration::from_secs(1) / shared.args.connect_rate;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=n {
        let id = device_id(&shared.args.prefix, i);
        shared.seen.lock().unwrap().insert(id.clone(), Seen::default());
        let mut opts = MqttOptions::new(id.clone(), shared.host.clone(), shared.port);
        if let Some(tls) = &shared.tls {
            let config = tls.config(i - 1).with_context(|| format!("{id}'s TLS client configuration"))?;
            opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(
                config,
            ))));
        }
        tasks.spawn(device(shared.clone(), id, opts));
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    while shared.ready.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("READY {n}");
    // The caller ends the fleet by closing our standard input (or with SIGTERM).
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = closed => {}
        _ = term.recv() => {}
    }
    tasks.abort_all();
    Ok(())
}

/// The id of the `i`th device (from 1): `<prefix>-00001`, ….
pub fn device_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

/// The retained status, as vigil publishes it.
fn status(id: &str, state: &str, vigil: &str, model: &str, model_version: &str) -> Vec<u8> {
    json!({
        "state": state,
        "device_id": id,
        "version": vigil,
        "started_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "uptime_s": 0,
        "model": { "name": model, "version": model_version, "backend": "simulated" },
        "cameras": [ { "id": "cam-1", "state": "streaming" } ],
    })
    .to_string()
    .into_bytes()
}

struct Device {
    id: String,
    shared: Arc<Shared>,
    client: AsyncClient,
    /// What it runs now: vigil's version, the model's name and version.
    running: Mutex<(String, String, String)>,
    busy: AtomicBool,
    online: bool,
    silent: bool,
    fails: bool,
}

impl Device {
    fn status(&self) -> Vec<u8> {
        let (vigil, model, version) = self.running.lock().unwrap().clone();
        let state = if self.online { "online" } else { "offline" };
        status(&self.id, state, &vigil, &model, &version)
    }

    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) {
        // The client's queue is bounded; waiting here is the device being slow, as a real one.
        let _ = self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await;
    }

    async fn reply(&self, request: &str, body: serde_json::Value) {
        let mut v = json!({ "request_id": request });
        v.as_object_mut().expect("an object").extend(body.as_object().expect("an object").clone());
        self.publish(topic::reply(&self.id, request), false, v.to_string().into_bytes()).await;
    }

    async fn on_command(self: Arc<Self>, name: String, payload: Vec<u8>) {
        let request: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
        let Some(request_id) = request["request_id"].as_str().map(str::to_owned) else { return };
        {
            let mut seen = self.shared.seen.lock().unwrap();
            let seen = seen.entry(self.id.clone()).or_default();
            if name == "ota/apply" {
                seen.ota_apply.push(request_id.clone());
            } else {
                seen.other.push(name.clone());
            }
        }
        if self.silent {
            return;
        }
        match name.as_str() {
            "ota/apply" => {}
            "status" => {
                let v: serde_json::Value = serde_json::from_slice(&self.status()).unwrap_or_default();
                return self.reply(&request_id, json!({ "ok": true, "result": v })).await;
            }
            _ => {
                let error = format!("{name}: not simulated by fleet-sim");
                return self.reply(&request_id, json!({ "ok": false, "error": error })).await;
            }
        }
        if self.busy.swap(true, Ordering::SeqCst) {
            let error = format!("{}; follow vigil/{}/ota and send ota/apply again", topic::UPDATE_IN_PROGRESS, self.id);
            return self.reply(&request_id, json!({ "ok": false, "error": error })).await;
        }
        let follow = topic::ota(&self.id);
        self.reply(&request_id, json!({ "ok": true, "result": { "queued": true, "follow": follow } })).await;
        let name = request["args"]["name"].as_str().unwrap_or_default().to_owned();
        let version = request["args"]["version"].as_str().unwrap_or("0.0.0").to_owned();
        let state = |state: &str| {
            json!({
                "request_id": request_id, "name": name, "version": version,
                "target": format!("models/{name}-{version}"), "state": state,
                "at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            })
        };
        for step in ["downloading", "verifying", "accepting", "activating", "canary"] {
            let mut v = state(step);
            if step == "canary" {
                v["detail"] = json!({ "frames_lost_at_swap": 0 });
            }
            self.publish(topic::ota(&self.id), true, v.to_string().into_bytes()).await;
            tokio::time::sleep(self.shared.args.step).await;
        }
        let end = if self.fails {
            let mut v = state("rolled_back");
            v["reason"] = "canary: 3.10 detections per frame against 4.20 before (simulated)".into();
            v
        } else {
            {
                let mut running = self.running.lock().unwrap();
                if name == "vigil" {
                    running.0 = version.clone();
                } else {
                    (running.1, running.2) = (name.clone(), version.clone());
                }
            }
            // As vigil: the new status first, then the outcome.
            self.publish(topic::status(&self.id), true, self.status()).await;
            let mut v = state("successful");
            v["detail"] = json!({ "canary": {
                "previous": { "frames": 300, "deadline_misses": 0, "errors": 0, "detections_per_frame": 3.5 },
                "new": { "frames": 300, "deadline_misses": 0, "errors": 0, "detections_per_frame": 3.5 } } });
            v
        };
        // The busy flag is cleared before the outcome is published (as vigil does).
        self.busy.store(false, Ordering::SeqCst);
        self.publish(topic::ota(&self.id), true, end.to_string().into_bytes()).await;
    }

    /// Metrics and events, from the devices whose status says online.
    async fn chatter(self: Arc<Self>) {
        if !self.online {
            return;
        }
        let metrics_every = self.shared.args.metrics_every;
        let events_every = self.shared.args.events_every;
        let mut metrics = (!metrics_every.is_zero()).then(|| tokio::time::interval(metrics_every));
        let mut events = (!events_every.is_zero()).then(|| tokio::time::interval(events_every));
        let started = std::time::Instant::now();
        let mut frames = 0u64;
        loop {
            tokio::select! {
                _ = async { metrics.as_mut().expect("guarded").tick().await }, if metrics.is_some() => {
                    frames += 15 * metrics_every.as_secs().max(1);
                    let v = metrics_payload(&self.id, started.elapsed().as_secs(), frames);
                    self.publish(topic::metrics(&self.id), false, v.to_string().into_bytes()).await;
                }
                _ = async { events.as_mut().expect("guarded").tick().await }, if events.is_some() => {
                    let id = uuid::Uuid::now_v7().to_string();
                    for (phase, revision) in [("new", 0), ("end", 1)] {
                        let v = json!({ "id": id, "phase": phase, "revision": revision, "device_id": self.id,
                                        "camera_id": "cam-1", "rule": "objects", "label": "person", "best_score": 0.9 });
                        self.publish(topic::events(&self.id), false, v.to_string().into_bytes()).await;
                    }
                }
                else => return,
            }
        }
    }
}

/// A `metrics` message in the shape docs/mqtt.md gives.
fn metrics_payload(id: &str, uptime_s: u64, frames: u64) -> serde_json::Value {
    let q = |p50: f64| json!({ "p50_ms": p50, "p95_ms": p50 * 1.3, "p99_ms": p50 * 1.6, "max_ms": p50 * 2.5 });
    json!({
        "device_id": id,
        "at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "uptime_s": uptime_s,
        "cameras": [ {
            "id": "cam-1",
            "capture": { "state": "streaming", "fps_in": 15.0, "fps_out": 15.0, "frames_in": frames, "frames_out": frames },
            "inference": { "processed": frames, "dropped_stale": 0, "dropped_error": 0, "deadline_misses": 0,
                           "inference": q(3.1), "total": q(4.0) }
        } ],
        "store": { "events": 0, "outbox": 0, "outbox_evicted": 0, "outbox_dropped": 0, "size_bytes": 1 << 20 }
    })
}

async fn device(shared: Arc<Shared>, id: String, mut opts: MqttOptions) {
    let args = &shared.args;
    let running = (args.vigil_version.clone(), args.model.clone(), args.model_version.clone());
    // A small footprint per connection: thousands share one process.
    opts.set_keep_alive(Duration::from_secs(60)).set_inflight(8).set_max_packet_size(64 << 10, 64 << 10);
    let offline = status(&id, "offline", &running.0, &running.1, &running.2);
    opts.set_last_will(LastWill::new(topic::status(&id), offline, QoS::AtLeastOnce, true));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let me = Arc::new(Device {
        online: draw(args.seed, &id, "offline") >= args.offline,
        silent: draw(args.seed, &id, "silent") < args.silent,
        fails: draw(args.seed, &id, "fail") < args.fail,
        id,
        shared: shared.clone(),
        client,
        running: Mutex::new(running),
        busy: AtomicBool::new(false),
    });
    tokio::spawn(me.clone().chatter());
    let mut connections = 0usize;
    let mut announced = false;
    let mut status_pkid = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connections += 1;
                if connections > 1 {
                    shared.reconnections.fetch_add(1, Ordering::Relaxed);
                }
                let (client, filter, status) = (me.client.clone(), topic::command_filter(&me.id), me.status());
                let status_topic = topic::status(&me.id);
                tokio::spawn(async move {
                    let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
                    let _ = client.publish(status_topic, QoS::AtLeastOnce, true, status).await;
                });
                status_pkid = None;
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) if status_pkid.is_none() => {
                status_pkid = Some(pkid);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) if !announced && Some(ack.pkid) == status_pkid => {
                announced = true;
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(name) = topic::command_name(&p.topic, &me.id) {
                    tokio::spawn(me.clone().on_command(name.to_owned(), p.payload.to_vec()));
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
