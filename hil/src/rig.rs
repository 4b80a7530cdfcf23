//! What the rig itself runs for a target: a real mosquitto (the fleet's broker) and a synthetic
//! RTSP camera serving the ground-truth clip, each behind a network fault proxy the target
//! reaches it through, a signed update server, and a monitor subscribed to everything the
//! device publishes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use vigil_ota::repo::{self, Expiry, RoleKeyFiles};
use vigil_ota::target::{Compat, Kind, TargetMeta};
use vigil_testkit::https::Server;
use vigil_testkit::{local_broker_conf, spawn_mosquitto, RtspCam};

use crate::fault_proxy::{Fault, FaultProxy};

/// The most messages the monitor keeps (a soak of hours at the suite's rates stays far below);
/// past it, messages are counted as dropped and the scenario fails rather than miscount.
const MONITOR_CAP: usize = 500_000;

/// One message the device published, as the rig received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The rig's wall clock at receipt, Unix nanoseconds.
    pub at_ns: i64,
}

/// A real mosquitto with persistence: a stop and restart keeps the monitor's session and the
/// messages queued for it, as a production broker does.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
}

impl Broker {
    fn start(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        // mosquitto drops to its own user when started as root: let it write its state here.
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let conf = dir.join("mosquitto.conf");
            let text =
                local_broker_conf(port) + &format!("persistence true\npersistence_location {}/\n", dir.display());
            std::fs::write(&conf, text)?;
            if let Some(child) = spawn_mosquitto(&conf, port, Stdio::null()) {
                return Ok(Self { child: Some(child), port, conf });
            }
        }
        bail!("mosquitto did not start on a free port in 5 tries (is it installed? make setup)")
    }

    /// Stops the broker as an outage does (SIGTERM: it saves its state).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn_mosquitto(&self.conf, self.port, Stdio::null()) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("mosquitto did not restart on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Everything the device publishes under `vigil/<device>/#`, with receipt times.
pub struct Monitor {
    messages: Arc<Mutex<Vec<Received>>>,
    dropped: Arc<AtomicU64>,
    connects: Arc<AtomicUsize>,
    client: rumqttc::Client,
}

impl Monitor {
    fn start(port: u16, device: &str) -> Result<Self> {
        let mut opts =
            rumqttc::MqttOptions::new(format!("vigil-hil-monitor-{}", std::process::id()), "127.0.0.1", port);
        // A persistent session: what the device publishes while the monitor reconnects (after
        // a broker outage) is queued for it, so the rig's count is the broker's.
        opts.set_clean_session(false).set_keep_alive(Duration::from_secs(5)).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = rumqttc::Client::new(opts, 100);
        let filter = format!("vigil/{device}/#");
        client.subscribe(&filter, rumqttc::QoS::AtLeastOnce)?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(AtomicU64::new(0));
        let connects = Arc::new(AtomicUsize::new(0));
        let (sink, lost, seen) = (messages.clone(), dropped.clone(), connects.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name("hil-monitor".into()).spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let mut all = sink.lock().unwrap_or_else(|p| p.into_inner());
                        if all.len() >= MONITOR_CAP {
                            lost.fetch_add(1, Ordering::Relaxed);
                        } else {
                            all.push(Received { topic: p.topic.clone(), payload: p.payload.to_vec(), at_ns: now_ns() });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the broker did not acknowledge the monitor's subscription")?;
        Ok(Self { messages, dropped, connects, client })
    }

    /// The messages received so far on `vigil/<device>/<leaf>`.
    pub fn on(&self, leaf: &str) -> Vec<Received> {
        let suffix = format!("/{leaf}");
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|m| m.topic.ends_with(&suffix))
            .cloned()
            .collect()
    }

    /// Messages the monitor could not keep ([`MONITOR_CAP`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// Forgets what was received (between scenarios).
    pub fn clear(&self) {
        self.messages.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// The rig's wall clock, Unix nanoseconds.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// A signed TUF repository (the operator's keys, on the rig) served over HTTPS: what devices
/// update from.
pub struct UpdateServer {
    pub server: Server,
    roles: RoleKeyFiles,
    dir: PathBuf,
}

impl UpdateServer {
    async fn start(dir: &Path, ip: std::net::IpAddr) -> Result<Self> {
        for sub in ["pki", "files"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let roles = repo::init_with_new_keys(&dir.join("repo"), &dir.join("keys"), &Expiry::default()).await?;
        let server = Server::start_on(dir.join("repo"), &dir.join("pki"), ip).await;
        Ok(Self { server, roles, dir: dir.to_owned() })
    }

    /// `https://ADDR:PORT/`, as the device's `ota.server`.
    pub fn url(&self) -> String {
        format!("https://{}/", SocketAddr::new(self.server.ip, self.server.port))
    }

    /// The repository's first root, which a device ships with.
    pub fn root_json(&self) -> PathBuf {
        self.dir.join("repo/metadata/1.root.json")
    }

    /// A copy of the bundle at `bundle` as model `shapes` `version`, its manifest changed by
    /// `edit`, packed and signed into the repository.
    pub fn publish_model(
        &self,
        rt: &tokio::runtime::Runtime,
        bundle: &Path,
        version: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Result<()> {
        let copy = self.dir.join(format!("files/shapes-{version}"));
        vigil_testkit::copy_bundle(bundle, &copy)?;
        let manifest = copy.join("manifest.toml");
        let text = std::fs::read_to_string(&manifest)?;
        let text = text.lines().map(|l| {
            if l.starts_with("version = ") {
                format!("version = \"{version}\"")
            } else {
                l.to_owned()
            }
        });
        std::fs::write(&manifest, edit(text.collect::<Vec<_>>().join("\n") + "\n"))?;
        let archive = self.dir.join(format!("files/shapes-{version}.tar"));
        vigil_ota::archive::pack_dir(&copy, &archive)?;
        self.add(
            rt,
            &archive,
            &format!("models/shapes-{version}.tar"),
            Kind::Model,
            "shapes",
            version,
            Compat::default(),
        )
    }

    /// Signs the executable `file` into the repository as vigil's binary `version` for `arch`.
    pub fn publish_binary(&self, rt: &tokio::runtime::Runtime, file: &Path, version: &str, arch: &str) -> Result<()> {
        let compat = Compat { arch: vec![arch.to_owned()], ..Compat::default() };
        self.add(rt, file, &format!("binaries/vigil-{version}"), Kind::Binary, "vigil", version, compat)
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        rt: &tokio::runtime::Runtime,
        file: &Path,
        target: &str,
        kind: Kind,
        name: &str,
        version: &str,
        compat: Compat,
    ) -> Result<()> {
        let version = version.parse().with_context(|| format!("version {version:?}"))?;
        let meta = TargetMeta { kind, name: name.into(), version, compat, allow_downgrade: false };
        rt.block_on(repo::add(&self.dir.join("repo"), file, target, &meta, &self.roles, &Expiry::default(), |_| {}))
            .map(drop)
    }
}

/// The rig for one target.
pub struct Rig {
    pub rt: tokio::runtime::Runtime,
    pub broker: Broker,
    /// The target's way to the broker.
    pub proxy: FaultProxy,
    pub camera: RtspCam,
    /// The target's way to the camera (RTSP over TCP, interleaved).
    pub camera_proxy: FaultProxy,
    pub monitor: Monitor,
    pub updates: UpdateServer,
    /// The fleet operator's client: commands to the device.
    operator: rumqttc::Client,
    pub device_id: String,
    /// The clip the camera serves and its ground truth.
    pub clip: PathBuf,
    /// The model bundle updates are made from (the shipped one, on the rig).
    pub bundle: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Starts the rig's services on `address` (what the target reaches the rig at) for the
    /// device `device_id`, the camera serving `clip` (its ground truth beside it); model updates
    /// are made from `bundle`.
    pub fn start(address: &str, device_id: &str, clip: &Path, bundle: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("vigil-hil-rig-").tempdir()?;
        let broker = Broker::start(&dir.path().join("broker"))?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let listen: SocketAddr = format!("{address}:0").parse().with_context(|| format!("rig address {address:?}"))?;
        let upstream: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let proxy = rt.block_on(FaultProxy::start_on(listen, upstream))?;
        let clip_arg = clip.to_str().context("clip path")?;
        let camera = RtspCam::start(&["--clip", clip_arg, "--private", "--address", address, "--mount", "cam"])?;
        let camera_addr = SocketAddr::new(listen.ip(), camera.port);
        let camera_proxy = rt.block_on(FaultProxy::start_on(listen, camera_addr))?;
        let monitor = Monitor::start(broker.port, device_id)?;
        let updates = rt.block_on(UpdateServer::start(&dir.path().join("updates"), listen.ip()))?;
        let opts =
            rumqttc::MqttOptions::new(format!("vigil-hil-operator-{}", std::process::id()), "127.0.0.1", broker.port);
        let (operator, mut connection) = rumqttc::Client::new(opts, 10);
        // Its event loop only needs driving; a broker outage is retried by the next poll.
        std::thread::Builder::new().name("hil-operator".into()).spawn(move || {
            for ev in connection.iter() {
                if ev.is_err() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })?;
        Ok(Self {
            rt,
            broker,
            proxy,
            camera,
            camera_proxy,
            monitor,
            updates,
            operator,
            device_id: device_id.to_owned(),
            clip: clip.to_owned(),
            bundle: bundle.to_owned(),
            _dir: dir,
        })
    }

    /// `mqtt://ADDR:PORT` of the proxy, as the target's configuration names the broker.
    pub fn broker_url(&self) -> String {
        format!("mqtt://{}", self.proxy.addr)
    }

    /// `rtsp://ADDR:PORT/cam` of the camera's proxy, as the target's configuration names it.
    pub fn camera_url(&self) -> String {
        format!("rtsp://{}/cam", self.camera_proxy.addr)
    }

    /// Puts right what a scenario that failed half-way may have left: faults on the links, a
    /// stopped broker, a killed camera, a trickling update server.
    pub fn restore(&mut self) -> Result<()> {
        self.proxy.set(Fault::Pass);
        self.camera_proxy.set(Fault::Pass);
        self.updates.server.set(|b| *b = Default::default());
        if self.broker.child.is_none() {
            self.broker.restart()?;
        }
        if std::net::TcpStream::connect(SocketAddr::new(self.camera_proxy.addr.ip(), self.camera.port)).is_err() {
            self.camera.restart()?;
        }
        Ok(())
    }

    /// `fault` on the link to the broker.
    pub fn set_fault(&self, fault: Fault) {
        self.proxy.set(fault);
    }

    /// Sends the fleet command `name` with `args` as request `request_id` once, and waits for the
    /// reply: for a command that must not be repeated while it runs (`config/set`, answered
    /// after its health window, refuses a second change meanwhile). Send it once the device
    /// has its commands subscribed (after another command's reply).
    pub fn command_once(
        &self,
        name: &str,
        request_id: &str,
        args: serde_json::Value,
        within: Duration,
    ) -> Result<serde_json::Value> {
        self.ask(name, request_id, &args, within, within)
    }

    /// Sends the fleet command `name` with `args` as request `request_id`, repeating it until
    /// the device answers (commands are not retained: it may not have subscribed yet), and
    /// returns the reply.
    pub fn command(
        &self,
        name: &str,
        request_id: &str,
        args: serde_json::Value,
        within: Duration,
    ) -> Result<serde_json::Value> {
        self.ask(name, request_id, &args, within, Duration::from_secs(1))
    }

    /// Publishes the command every `every` until its reply comes, for at most `within`.
    fn ask(
        &self,
        name: &str,
        request_id: &str,
        args: &serde_json::Value,
        within: Duration,
        every: Duration,
    ) -> Result<serde_json::Value> {
        let topic = format!("vigil/{}/cmd/{name}", self.device_id);
        let payload = serde_json::json!({ "request_id": request_id, "args": args }).to_string();
        let reply = format!("reply/{request_id}");
        let until = Instant::now() + within;
        loop {
            self.operator.publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload.clone().into_bytes())?;
            let asked = Instant::now();
            while asked.elapsed() < every && Instant::now() < until {
                if let Some(m) = self.monitor.on(&reply).first() {
                    return serde_json::from_slice(&m.payload).context("the reply is not JSON");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() >= until {
                bail!("no reply to {name} within {}s", within.as_secs());
            }
        }
    }
}
