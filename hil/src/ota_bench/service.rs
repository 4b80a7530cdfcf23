//! Part 2 of `vigil-ota-bench`: model updates applied by the running service, timed from the
//! operator's side (the moment `ota/apply` is published, and the moment each retained `ota`
//! state arrives; the broker is on loopback).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Event, MqttOptions, Packet, QoS};
use vigil_ota::repo::{self, Expiry};
use vigil_ota::target::{Compat, Kind, TargetMeta};

use super::{noise, sha256sum, Args, Repo};

/// The canary's window: a full loop of the clip (15 fps × 12 s), so that both models are judged
/// on the same scenes.
const MIN_FRAMES: u64 = 180;
const CLIP_FPS: f64 = 15.0;
/// Timed inferences during acceptance (`ota.accept_runs`).
const ACCEPT_RUNS: usize = 20;
const DEVICE: &str = "bench";

/// The shipped model bundle and the clip it was trained for, in the source tree.
fn source(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

pub fn run(args: &Args, d: &Path, repo: &Repo, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let vigil = std::env::current_exe()?.with_file_name("vigil");
    anyhow::ensure!(vigil.exists(), "{} is missing: cargo build --release -p vigil", vigil.display());
    let shipped = source("models/bundles/shapes-v1");
    let clip = source("models/clips/shapes-eval.mp4");
    anyhow::ensure!(shipped.exists() && clip.exists(), "run from a source checkout (models/ is missing)");

    // 1.0.1: the shipped model, padded to the size of part 1's bundle (the padding is a file
    // the bundle does not use: it is downloaded, verified and unpacked like the rest).
    // 1.0.2: the same weights with the score threshold raised: it passes acceptance and
    // detects less.
    let good = publish(d, repo, rt, &shipped, "1.0.1", args.mb, |m| m)?;
    publish(d, repo, rt, &shipped, "1.0.2", 0, |m| m.replace("score_threshold = 0.5", "score_threshold = 0.997"))?;

    let broker = vigil_testkit::LocalBroker::start(d)?;
    let config = write_config(d, broker.port, repo, &shipped, &clip)?;
    let log = d.join("service.log");
    let mut service = Service(
        Command::new(&vigil)
            .args(["run", "--config"])
            .arg(&config)
            .env("VIGIL_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let watch = Watch::start(broker.port)?;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    if !watch.wait(Duration::from_secs(30), |m| m.topic.ends_with("/status") && m.json["state"] == "online") {
        bail!("the service did not come online within 30 s:\n{}", log_text());
    }
    // The previous model's baseline (MIN_FRAMES at the clip's rate) is gathered before the
    // command, so that the acceptance figure is acceptance alone.
    std::thread::sleep(Duration::from_secs_f64(MIN_FRAMES as f64 / CLIP_FPS + 2.0));

    println!(
        "\nin the service: the release binary, one camera looping the shapes clip ({CLIP_FPS} fps), ONNX Runtime, \
         canary of {MIN_FRAMES} frames"
    );
    let t0 = watch.apply("good", "1.0.1")?;
    let states = watch.outcome("good", Duration::from_secs(180)).with_context(log_text)?;
    let end = states.last().expect("an outcome");
    if end.json["state"] != "successful" {
        bail!("the good update ended {}: {}\n{}", end.json["state"], end.json["reason"], log_text());
    }
    let first = |phase: &str| reached(&states, phase).map(|m| m.at.duration_since(t0).as_secs_f64());
    let (staged, accepted, serving) = (first("accepting"), first("activating"), first("canary"));
    let (Some(staged), Some(accepted), Some(serving)) = (staged, accepted, serving) else {
        bail!("the good update skipped a step: {:?}", states.iter().map(|m| &m.json["state"]).collect::<Vec<_>>());
    };
    let lost = states.iter().find_map(|m| m.json["detail"]["frames_lost_at_swap"].as_u64());
    let sha = sha256sum(&good)?.as_secs_f64();
    let mib = std::fs::metadata(&good)?.len() as f64 / f64::from(1 << 20);
    println!(
        "command → staged slot (download, verify, unpack) {staged:.3} s; sha256sum of the {mib:.1} MiB archive \
         {sha:.3} s; ratio {:.2}",
        staged / sha
    );
    println!(
        "acceptance (reference check, {ACCEPT_RUNS} timed runs, memory, costs) {:.3} s; command → new model serving \
         {serving:.3} s",
        accepted - staged
    );
    match lost {
        Some(lost) => println!("frames lost at the swap: {lost} (goal 0)"),
        None => bail!("the canary's first state has no frames_lost_at_swap: {states:?}"),
    }

    watch.apply("quiet", "1.0.2")?;
    let states = watch.outcome("quiet", Duration::from_secs(180)).with_context(log_text)?;
    let end = states.last().expect("an outcome");
    if end.json["state"] != "rolled_back" {
        bail!("the model that detects less ended {}, not rolled_back:\n{}", end.json["state"], log_text());
    }
    let active = reached(&states, "canary").context("the bad model was never activated")?;
    let took = end.at.duration_since(active.at).as_secs_f64();
    let window = MIN_FRAMES as f64 / CLIP_FPS;
    println!(
        "a model that detects less: activation → rolled back {took:.3} s; the canary's window ({MIN_FRAMES} frames at \
         {CLIP_FPS} fps) {window:.3} s; ratio {:.2} ({})",
        took / window,
        end.json["reason"].as_str().unwrap_or("")
    );
    service.stop();
    Ok(())
}

/// Signs a copy of `shipped` as `version` (manifest changed by `edit`, `pad_mb` MiB of padding)
/// into the repository; returns its archive.
fn publish(
    d: &Path,
    repo: &Repo,
    rt: &tokio::runtime::Runtime,
    shipped: &Path,
    version: &str,
    pad_mb: usize,
    edit: impl FnOnce(String) -> String,
) -> anyhow::Result<PathBuf> {
    let bundle = d.join(format!("shapes-{version}"));
    vigil_testkit::copy_bundle(shipped, &bundle)?;
    let manifest = bundle.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest)?.replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
    std::fs::write(&manifest, edit(text))?;
    if pad_mb > 0 {
        std::fs::write(bundle.join("padding.bin"), noise(pad_mb << 20))?;
    }
    let archive = d.join(format!("shapes-{version}.tar"));
    vigil_ota::archive::pack_dir(&bundle, &archive)?;
    let meta = TargetMeta {
        kind: Kind::Model,
        name: "shapes".into(),
        version: version.parse()?,
        compat: Compat::default(),
        allow_downgrade: false,
    };
    let name = format!("models/shapes-{version}.tar");
    rt.block_on(repo::add(&d.join("repo"), &archive, &name, &meta, &repo.roles, &Expiry::default(), |_| {}))?;
    Ok(archive)
}

fn write_config(d: &Path, port: u16, repo: &Repo, bundle: &Path, clip: &Path) -> anyhow::Result<PathBuf> {
    let config = d.join("vigil.toml");
    let text = format!(
        "device_id = \"{DEVICE}\"\ndata_dir = \"{data}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
         [model]\nbundle = \"{bundle}\"\n[[camera]]\nid = \"yard\"\nuri = \"file://{clip}?loop=true\"\n\
         [ota]\nserver = \"https://127.0.0.1:{server}/\"\nroot = \"{root}\"\nca = \"{ca}\"\nclock = \"trusted\"\n\
         accept_runs = {ACCEPT_RUNS}\n\
         [ota.canary]\nmin_frames = {MIN_FRAMES}\nmax_wait_s = 120\n",
        data = d.join("service-data").display(),
        bundle = bundle.display(),
        clip = clip.display(),
        server = repo.server.port,
        root = d.join("repo/metadata/1.root.json").display(),
        ca = repo.server.ca.display(),
    );
    std::fs::write(&config, text)?;
    Ok(config)
}

/// The service, stopped (SIGTERM, then killed) when dropped.
struct Service(Child);

impl Service {
    fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message from the device, with the moment it arrived.
#[derive(Debug, Clone)]
struct Message {
    at: Instant,
    topic: String,
    json: serde_json::Value,
}

/// The first state at `phase` or past it (states sent in quick succession may be merged: the
/// retained topic carries the latest).
fn reached<'a>(states: &'a [Message], phase: &str) -> Option<&'a Message> {
    const ORDER: [&str; 8] =
        ["downloading", "verifying", "accepting", "activating", "canary", "successful", "failed", "rolled_back"];
    let rank = |p: &str| ORDER.iter().position(|o| *o == p);
    let want = rank(phase)?;
    states.iter().find(|m| m.json["state"].as_str().and_then(rank).is_some_and(|r| r >= want))
}

/// The operator's side: sends commands, records every message from the device.
struct Watch {
    client: rumqttc::Client,
    seen: Arc<Mutex<Vec<Message>>>,
}

impl Watch {
    fn start(port: u16) -> anyhow::Result<Self> {
        let mut opts = MqttOptions::new("vigil-ota-bench", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(15));
        let (client, mut connection) = rumqttc::Client::new(opts, 16);
        client.subscribe(format!("vigil/{DEVICE}/#"), QoS::AtLeastOnce)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        let json = serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                        sink.lock().expect("not poisoned").push(Message { at, topic: p.topic, json });
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        Ok(Self { client, seen })
    }

    fn wait(&self, within: Duration, mut found: impl FnMut(&Message) -> bool) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.seen.lock().expect("not poisoned").iter().any(&mut found) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Publishes `ota/apply` and waits for its reply; returns when it was published.
    fn apply(&self, request_id: &str, version: &str) -> anyhow::Result<Instant> {
        let payload = serde_json::json!({ "request_id": request_id, "args": { "name": "shapes", "version": version } });
        let t0 = Instant::now();
        self.client.publish(
            format!("vigil/{DEVICE}/cmd/ota/apply"),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&payload)?,
        )?;
        let reply = format!("vigil/{DEVICE}/reply/{request_id}");
        if !self.wait(Duration::from_secs(10), |m| m.topic == reply) {
            bail!("no reply to ota/apply within 10 s");
        }
        let refused =
            self.seen.lock().expect("not poisoned").iter().find(|m| m.topic == reply && m.json["ok"] != true).cloned();
        match refused {
            Some(m) => bail!("ota/apply refused: {}", m.json["error"]),
            None => Ok(t0),
        }
    }

    /// Every `ota` state of `request_id` up to its outcome.
    fn outcome(&self, request_id: &str, within: Duration) -> anyhow::Result<Vec<Message>> {
        let ota = format!("vigil/{DEVICE}/ota");
        let ours = |m: &Message| m.topic == ota && m.json["request_id"] == request_id;
        let is_final = |m: &Message| matches!(m.json["state"].as_str(), Some("successful" | "failed" | "rolled_back"));
        if !self.wait(within, |m| ours(m) && is_final(m)) {
            bail!("update `{request_id}` had no outcome within {within:?}");
        }
        let seen = self.seen.lock().expect("not poisoned");
        let mut states: Vec<Message> = seen.iter().filter(|m| ours(m)).cloned().collect();
        let end = states.iter().position(is_final).expect("waited for it");
        states.truncate(end + 1);
        Ok(states)
    }
}
