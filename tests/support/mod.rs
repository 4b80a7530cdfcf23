//! Shared pieces of the end-to-end tests: a real mosquitto on a free port, the real `vigil`
//! binary in a temporary directory, an MQTT subscriber, and the generated clip's ground truth.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigil_testkit::spawn_mosquitto;
pub use vigil_testkit::truth::{iou, GroundTruth};

pub mod ota;
mod tls;
#[allow(unused_imports)] // the TLS tests use it, the others do not
pub use tls::TlsBroker;

/// The held-out clip's first frame resized (aspect not kept) to `w`×`h`, as a JPEG file in `dir`.
pub fn clip_picture(dir: &Path, w: u32, h: u32) -> PathBuf {
    use gstreamer::prelude::*;
    let out = dir.join(format!("{w}x{h}.jpg"));
    let desc = format!(
        "filesrc location={} ! decodebin ! videoconvert ! videoscale ! video/x-raw,width={w},height={h} \
         ! jpegenc snapshot=true quality=95 ! filesink location={}",
        eval_clip().display(),
        out.display()
    );
    vigil_capture::init_gstreamer().unwrap();
    let p = gstreamer::parse::launch(&desc).unwrap().downcast::<gstreamer::Pipeline>().unwrap();
    p.set_state(gstreamer::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gstreamer::ClockTime::from_seconds(30),
        &[gstreamer::MessageType::Eos, gstreamer::MessageType::Error],
    );
    p.set_state(gstreamer::State::Null).unwrap();
    assert!(matches!(msg.as_ref().map(|m| m.view()), Some(gstreamer::MessageView::Eos(_))), "{w}x{h}: {msg:?}");
    out
}

/// The exporter's own pipeline (tests/exporter/opencv_pipeline.py: OpenCV's resize and border,
/// ONNX Runtime) on `picture`: its detections file, and how many it holds.
pub fn exporter_detections(model: &Path, picture: &Path, out: &Path, args: &[&str]) -> usize {
    let script = repo_root().join("tests/exporter/opencv_pipeline.py");
    let python = repo_root().join(".venv/bin/python");
    let o = std::process::Command::new(python)
        .arg(script)
        .args([model, picture, out])
        .args(args)
        .output()
        .expect("runs .venv's python (make setup)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dets: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    dets.len()
}

/// Frame 80 of the held-out clip (five objects) at 700×400, as a PNG written by OpenCV: into 320,
/// 183 rows of picture and an odd border of 137.
pub fn exporter_picture(dir: &Path) -> PathBuf {
    let out = dir.join("700x400.png");
    let o = std::process::Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/exporter/clip_frame.py"))
        .arg(eval_clip())
        .args(["80", "700", "400"])
        .arg(&out)
        .output()
        .expect("runs .venv's python (make setup)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn bundle_dir() -> PathBuf {
    repo_root().join("models/bundles/shapes-v1")
}

pub fn eval_clip() -> PathBuf {
    repo_root().join("models/clips/shapes-eval.mp4")
}

/// A camera URI for the file at `path`, played once.
pub fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// The held-out clip as a camera, played once (12 s in real time).
pub fn clip_uri() -> String {
    file_uri(&eval_clip())
}

/// The held-out clip as a camera that loops for as long as the test needs.
pub fn looping_clip_uri() -> String {
    clip_uri() + "?loop=true"
}

/// A copy of the shipped bundle (its files and its reference directory) in `to`.
pub fn copy_bundle(to: &Path) {
    vigil_testkit::copy_bundle(&bundle_dir(), to).expect("copy the shipped bundle");
}

/// The shipped bundle with the same model made with a dynamic batch dimension (tests/fixtures,
/// made by models/recipe/dynamic_batch.py), copied to `to`.
pub fn dynamic_batch_bundle(to: &Path) {
    use sha2::Digest;
    copy_bundle(to);
    let model = std::fs::read(repo_root().join("tests/fixtures/shapes-int8-dynbatch.onnx")).unwrap();
    std::fs::write(to.join("model.int8.onnx"), &model).unwrap();
    let manifest = to.join("manifest.toml");
    let shipped = vigil_infer::Bundle::load(&bundle_dir()).unwrap().manifest.model.sha256;
    let text =
        std::fs::read_to_string(&manifest).unwrap().replace(&shipped, &hex::encode(sha2::Sha256::digest(&model)));
    std::fs::write(&manifest, text).unwrap();
}

pub fn vigil_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vigil"))
}

/// The operator's binary, `vigil-ops`, beside `vigil` (`cargo test --workspace` builds it; a
/// test of this package alone needs `cargo build -p vigil-ops` first).
pub fn ops_bin() -> PathBuf {
    let path = vigil_bin().with_file_name("vigil-ops");
    assert!(path.is_file(), "{} is not built: cargo build -p vigil-ops", path.display());
    path
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind an ephemeral port").port()
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A real mosquitto broker on a free loopback port, stopped when dropped.
pub struct Broker {
    child: Child,
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With persistence: sessions and queued messages survive [`Broker::stop`] + [`Broker::restart`].
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Self {
        // Another process may grab the port between our probe and mosquitto's bind: retry.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            let mut text = vigil_testkit::local_broker_conf(port);
            if persistent {
                // mosquitto drops to its own user when started as root: let it write here.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
                text += &format!("persistence true\npersistence_location {}/\n", dir.path().display());
            } else {
                text += "persistence false\n";
            }
            std::fs::write(&conf, text).expect("write mosquitto.conf");
            if let Some(child) = spawn_mosquitto(&conf, port, Stdio::null()) {
                return Self { child, port, conf, _dir: dir };
            }
        }
        panic!("mosquitto did not start on a free port in 5 tries");
    }

    /// Stops the broker (SIGTERM: it saves its persistent state) and waits for it to exit.
    pub fn stop(&mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn_mosquitto(&self.conf, self.port, Stdio::null()) {
                self.child = child;
                return;
            }
            assert!(Instant::now() < until, "mosquitto did not restart on port {}", self.port);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a vigil.toml in `dir` and returns its path. `cameras` are (id, uri) pairs.
pub fn write_config(dir: &Path, device_id: &str, broker_url: &str, cameras: &[(&str, String)]) -> PathBuf {
    let mut text = format!(
        "device_id = \"{device_id}\"\ndata_dir = \"{}\"\n[mqtt]\nurl = \"{broker_url}\"\n[model]\nbundle = \"{}\"\n",
        dir.join("data").display(),
        bundle_dir().display()
    );
    for (id, uri) in cameras {
        text.push_str(&format!("[[camera]]\nid = \"{id}\"\nuri = \"{uri}\"\n"));
    }
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).expect("write vigil.toml");
    path
}

/// Adds `line` (a `key = value`) to the `[mqtt]` table of a config written by [`write_config`].
pub fn set_mqtt(config: &Path, line: &str) {
    let text = std::fs::read_to_string(config).expect("read vigil.toml");
    assert!(text.contains("[mqtt]\n"), "write_config writes an [mqtt] table");
    std::fs::write(config, text.replacen("[mqtt]\n", &format!("[mqtt]\n{line}\n"), 1)).expect("write vigil.toml");
}

/// Appends `text` to a config: keys of the last table (the last camera), or new tables.
pub fn append_config(config: &Path, text: &str) {
    let mut all = std::fs::read_to_string(config).expect("read vigil.toml");
    all.push_str(text);
    std::fs::write(config, all).expect("write vigil.toml");
}

/// The real vigil binary as a child process; its stderr (the log) goes to a file.
pub struct Vigil {
    child: Child,
    log: PathBuf,
}

impl Vigil {
    pub fn start(config: &Path, log_dir: &Path) -> Self {
        Self::start_with_env(config, log_dir, &[])
    }

    /// As [`Vigil::start`], with these environment variables set for vigil.
    pub fn start_with_env(config: &Path, log_dir: &Path, env: &[(&str, &Path)]) -> Self {
        let log = log_dir.join("vigil.log");
        let file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = Command::new(vigil_bin());
        cmd.args(["run", "--config"]).arg(config).stdout(Stdio::null()).stderr(file);
        cmd.env("VIGIL_LOG", "info,ort=warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self { child: cmd.spawn().expect("spawn vigil"), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL: no shutdown, no flush; what the store holds is what was already durable.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    /// Waits for vigil to exit by itself.
    pub fn wait_exit(mut self, within: Duration) -> (ExitStatus, String) {
        let done = wait_until(within, || self.child.try_wait().ok().flatten().is_some());
        if !done {
            let _ = self.child.kill();
            panic!("vigil did not exit within {within:?}; log:\n{}", self.log());
        }
        let status = self.child.wait().expect("wait");
        let log = self.log();
        (status, log)
    }

    pub fn terminate(mut self) -> (ExitStatus, String) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let done = wait_until(Duration::from_secs(15), || self.child.try_wait().ok().flatten().is_some());
        if !done {
            let _ = self.child.kill();
            panic!("vigil did not exit within 15 s of SIGTERM; log:\n{}", self.log());
        }
        let status = self.child.wait().expect("wait");
        let log = self.log();
        (status, log)
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `vigil ARGS` to completion: (exit code, stdout, stderr).
pub fn vigil_cmd(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_cmd(Command::new(vigil_bin()), args, env)
}

/// `vigil-ops` with `args`: exit code, stdout, stderr.
pub fn ops_cmd(args: &[&str]) -> (i32, String, String) {
    run_cmd(Command::new(ops_bin()), args, &[])
}

fn run_cmd(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Client options for the broker on `port`, over TLS when `tls` is given.
pub fn mqtt_options(port: u16, tls: Option<&vigil_config::TlsConfig>) -> rumqttc::MqttOptions {
    let mut opts = rumqttc::MqttOptions::new(format!("test-{}", uuid::Uuid::now_v7().simple()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10)).set_max_packet_size(1 << 20, 1 << 20);
    if let Some(tls) = tls {
        let config = vigil_uplink::rustls_config(tls).expect("test TLS settings are valid");
        opts.set_transport(rumqttc::Transport::tls_with_config(config.into()));
    }
    opts
}

/// (topic, payload, when received)
type Received = Vec<(String, Vec<u8>, Instant)>;

/// Collects every message on a topic filter, with receive times.
pub struct Subscriber {
    messages: Arc<Mutex<Received>>,
    /// Connections the broker has accepted (CONNACKs), first one included.
    connects: Arc<std::sync::atomic::AtomicUsize>,
    client: rumqttc::Client,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str) -> Self {
        Self::connect(mqtt_options(port, None), filter)
    }

    /// With a persistent session under `client_id`: the broker queues QoS 1 messages for it
    /// while it is away (or the broker restarts, with persistence), and it reconnects by itself.
    pub fn start_persistent(port: u16, filter: &str, client_id: &str) -> Self {
        let mut opts = mqtt_options(port, None);
        opts.set_client_id(client_id.to_owned()).set_clean_session(false);
        Self::connect(opts, filter)
    }

    /// Over TLS with the client identity in `tls`.
    pub fn start_tls(port: u16, filter: &str, tls: &vigil_config::TlsConfig) -> Self {
        Self::connect(mqtt_options(port, Some(tls)), filter)
    }

    fn connect(opts: rumqttc::MqttOptions, filter: &str) -> Self {
        let (client, mut connection) = rumqttc::Client::new(opts, 100);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).expect("subscribe");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connects_seen = connects.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        connects_seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        sink.lock().unwrap().push((p.topic.clone(), p.payload.to_vec(), Instant::now()));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscription acknowledged");
        Self { messages, connects, client }
    }

    /// Waits (10 s at most) until the last status on `topic` says `offline`. vigil publishes it
    /// after its final drain, on the same connection, so everything vigil sent before it has
    /// been delivered here by then.
    pub fn wait_offline(&self, topic: &str) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.on(topic)
                .last()
                .is_some_and(|p| serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|s| s["state"] == "offline"))
        })
    }

    /// How many times the broker has accepted this subscriber's connection.
    pub fn connects(&self) -> usize {
        self.connects.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().iter().filter(|(t, ..)| t == topic).map(|(_, p, _)| p.clone()).collect()
    }

    pub fn count(&self, topic: &str) -> usize {
        self.messages.lock().unwrap().iter().filter(|(t, ..)| t == topic).count()
    }

    /// Time since the last message on `topic` (None before the first).
    pub fn idle_for(&self, topic: &str) -> Option<Duration> {
        self.messages.lock().unwrap().iter().rev().find(|(t, ..)| t == topic).map(|(.., at)| at.elapsed())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Precision and recall of (frame index, label, box) detections against the ground truth at
/// IoU ≥ 0.5 with matching labels; each ground-truth object matches at most one detection.
pub fn precision_recall(gt: &GroundTruth, dets: &[(usize, String, [f32; 4])], frames: &[usize]) -> (f64, f64, usize) {
    let mut matched = 0usize;
    let mut gt_total = 0usize;
    for &fi in frames {
        let objects = &gt.frames[fi].objects;
        gt_total += objects.len();
        let mut used = vec![false; objects.len()];
        for (_, label, bbox) in dets.iter().filter(|(f, ..)| *f == fi) {
            let best = objects
                .iter()
                .enumerate()
                .filter(|(i, o)| !used[*i] && &o.label == label)
                .map(|(i, o)| (i, iou(o.bbox, *bbox)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((i, v)) = best {
                if v >= 0.5 {
                    used[i] = true;
                    matched += 1;
                }
            }
        }
    }
    let det_total = dets.iter().filter(|(f, ..)| frames.contains(f)).count();
    let precision = if det_total == 0 { 0.0 } else { matched as f64 / det_total as f64 };
    let recall = if gt_total == 0 { 0.0 } else { matched as f64 / gt_total as f64 };
    (precision, recall, matched)
}

/// An ended event as vigil stores it: camera `c`, label `circle`, `best.seq` = `n`, started at
/// `ns` (Unix nanoseconds).
pub fn stored_event(n: u32, ns: u64) -> vigil_core::event::Event {
    serde_json::from_value(serde_json::json!({
        "id": format!("019ab3c2-7f1e-7c3a-9d52-{n:012}"), "phase": "end", "revision": 1, "device_id": "d",
        "camera_id": "c", "rule": "objects", "label": "circle", "class_id": 0, "track_id": n, "best_score": 0.9,
        "box": { "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0 }, "box_norm": [0.0, 0.0, 0.1, 0.1],
        "best": { "seq": n, "pts_ns": null, "captured_at": "", "captured_at_ns": ns, "width": 10, "height": 10 },
        "zones": [], "start": "", "start_ns": ns, "last": "", "last_ns": ns, "end": "", "end_ns": ns,
        "end_reason": "lost", "dwell_s": 0.0, "frames": 3,
        "model": { "name": "m", "version": "1", "backend": "b" }, "snapshot": null
    }))
    .expect("a valid event")
}

/// Groups event messages by id, checks each lifecycle (`new`, then `update`s, then one `end`,
/// revisions 0, 1, 2, … with repeats only as identical copies) and returns them.
pub fn lifecycles(
    messages: &[vigil_core::event::Event],
) -> std::collections::BTreeMap<String, Vec<vigil_core::event::Event>> {
    use vigil_core::event::Phase;
    let mut by_id: std::collections::BTreeMap<String, Vec<vigil_core::event::Event>> = Default::default();
    for m in messages {
        let msgs = by_id.entry(m.id.clone()).or_default();
        match msgs.iter().find(|e| e.revision == m.revision) {
            Some(earlier) => assert_eq!(earlier, m, "a repeat carries the same content"),
            None => msgs.push(m.clone()),
        }
    }
    for (id, msgs) in &by_id {
        let revisions: Vec<u32> = msgs.iter().map(|e| e.revision).collect();
        assert_eq!(revisions, (0..msgs.len() as u32).collect::<Vec<_>>(), "{id}: in order, none missing");
        assert_eq!(msgs[0].phase, Phase::New, "{id}");
        let last = msgs.last().unwrap();
        assert_eq!(last.phase, Phase::End, "{id} ended");
        assert!(msgs[1..msgs.len() - 1].iter().all(|e| e.phase == Phase::Update), "{id}");
        assert!(last.start_ns <= last.best.captured_at_ns && last.best.captured_at_ns <= last.last_ns, "{last:?}");
        assert_eq!(last.end_ns, Some(last.last_ns));
        assert!(msgs
            .iter()
            .all(|e| e.start_ns == last.start_ns && e.track_id == last.track_id && e.label == last.label));
    }
    by_id
}

/// A small tmpfs mounted for one test (a disk that fills up); unmounted when dropped. Needs
/// root, as the README's test command runs.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size_mb: u64) -> Self {
        std::fs::create_dir_all(path).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a {size_mb} MiB tmpfs to fill it, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path: path.to_owned() }
    }

    pub fn free_bytes(&self) -> u64 {
        vigil_store::free_space(&self.path).expect("statvfs")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
