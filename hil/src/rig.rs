//! What the rig itself runs for a target: a real mosquitto (the fleet's broker), the network
//! fault proxy the target reaches it through, a synthetic RTSP camera serving the ground-truth
//! clip, and a monitor subscribed to everything the device publishes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
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

/// The rig for one target.
pub struct Rig {
    pub rt: tokio::runtime::Runtime,
    pub broker: Broker,
    /// The target's way to the broker.
    pub proxy: FaultProxy,
    pub camera: RtspCam,
    pub monitor: Monitor,
    pub device_id: String,
    /// The clip the camera serves and its ground truth.
    pub clip: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Starts the rig's services on `address` (what the target reaches the rig at) for the
    /// device `device_id`, the camera serving `clip` (its ground truth beside it).
    pub fn start(address: &str, device_id: &str, clip: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("vigil-hil-rig-").tempdir()?;
        let broker = Broker::start(&dir.path().join("broker"))?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let listen: SocketAddr = format!("{address}:0").parse().with_context(|| format!("rig address {address:?}"))?;
        let upstream: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let proxy = rt.block_on(FaultProxy::start_on(listen, upstream))?;
        let clip_arg = clip.to_str().context("clip path")?;
        let camera = RtspCam::start(&["--clip", clip_arg, "--private", "--address", address, "--mount", "cam"])?;
        let monitor = Monitor::start(broker.port, device_id)?;
        Ok(Self {
            rt,
            broker,
            proxy,
            camera,
            monitor,
            device_id: device_id.to_owned(),
            clip: clip.to_owned(),
            _dir: dir,
        })
    }

    /// `mqtt://ADDR:PORT` of the proxy, as the target's configuration names the broker.
    pub fn broker_url(&self) -> String {
        format!("mqtt://{}", self.proxy.addr)
    }

    pub fn set_fault(&self, fault: Fault) {
        self.proxy.set(fault);
    }
}
