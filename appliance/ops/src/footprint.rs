//! `vigil-ops bench --footprint`: what vigil costs a board, beside a baseline where one exists.
//!
//! 1. Resident memory of the real service (`vigil run`, a local mosquitto) on 1 and 4 real-time
//!    cameras of a 720p H.264 clip, next to `gst-launch-1.0` running the same capture pipelines
//!    (the decode floor: what GStreamer alone needs for those cameras). The goal for 4 cameras
//!    is 150 MiB.
//! 2. Cold start: from spawning `vigil run` (one `test://` camera, the CPU backend) to its first
//!    event on the broker; no baseline exists for this.
//! 3. Binary size, stripped: this machine's and, when given, the aarch64 build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vigil_capture::{self as capture, CameraSpec, Platform};
use vigil_config::Config;
use vigil_core::source::{Pace, SourceUri};
use vigil_testkit::{median, LocalBroker};

/// How long each process runs before its memory is read.
const SETTLE: Duration = Duration::from_secs(20);
const MEMORY_GOAL_MIB: u64 = 150;

/// Runs the three measurements; `clip` is a 720p H.264 file, `bundle` the model's bundle.
pub fn run(vigil_exe: &Path, clip: &Path, bundle: &Path, aarch64: Option<&Path>, tmp: &Path) -> anyhow::Result<()> {
    let broker = LocalBroker::start(tmp).context("cannot start mosquitto (apt install mosquitto)")?;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    println!("== footprint: resident memory after {} s, vigil run against gst-launch-1.0", SETTLE.as_secs());
    for cameras in [1usize, 4] {
        let config = write_config(tmp, &format!("rss-{cameras}"), &url, bundle, &vec![file_uri(clip); cameras])?;
        let gst = decode_floor(&config)?;
        let vigil = service(vigil_exe, &config)?;
        println!(
            "{cameras} camera(s): vigil {} MiB (peak {}), gst-launch {} MiB (peak {}): ratio {:.2}; vigil's own {} MiB{}",
            vigil.0,
            vigil.1,
            gst.0,
            gst.1,
            vigil.0 as f64 / gst.0.max(1) as f64,
            vigil.0.saturating_sub(gst.0),
            if cameras == 4 { format!(" (goal: at most {MEMORY_GOAL_MIB} MiB)") } else { String::new() }
        );
    }

    println!("== cold start: spawn → first event on the broker (one test:// camera, CPU backend)");
    let mut starts = Vec::new();
    for round in 0..3 {
        let config = write_config(tmp, &format!("cold-{round}"), &url, bundle, &["test://ball".to_owned()])?;
        let took = cold_start(vigil_exe, &config, broker.port)?;
        println!("  round {}: {:.2} s", round + 1, took.as_secs_f64());
        starts.push(took.as_secs_f64());
    }
    println!("cold start to first event: median {:.2} s (no baseline)", median(&mut starts));

    println!("== binary size (stripped)");
    let host = vigil_exe;
    println!(
        "  {} ({}): {:.1} MiB",
        host.display(),
        std::env::consts::ARCH,
        stripped_size(host, "objcopy", tmp)? as f64 / 1048576.0
    );
    match aarch64 {
        Some(p) if p.is_file() => println!(
            "  {} (aarch64, OTA included): {:.1} MiB",
            p.display(),
            stripped_size(p, "aarch64-linux-gnu-objcopy", tmp)? as f64 / 1048576.0
        ),
        Some(p) => println!("  {}: not built (make aarch64)", p.display()),
        None => {}
    }
    Ok(())
}

fn file_uri(clip: &Path) -> String {
    format!("file://{}?loop=true", clip.display())
}

/// A configuration in `tmp/name` with these cameras, the broker and the bundle.
fn write_config(tmp: &Path, name: &str, broker: &str, bundle: &Path, uris: &[String]) -> anyhow::Result<PathBuf> {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut text = format!(
        "device_id = \"{name}\"\ndata_dir = \"{}\"\n[mqtt]\nurl = \"{broker}\"\n[model]\nbundle = \"{}\"\n",
        dir.join("data").display(),
        bundle.display()
    );
    for (i, uri) in uris.iter().enumerate() {
        text += &format!("[[camera]]\nid = \"cam{i}\"\nuri = \"{uri}\"\n");
    }
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// (VmRSS, VmHWM) in MiB of `child` after [`SETTLE`]; the child is stopped.
fn settle_and_measure(mut child: Child) -> anyhow::Result<(u64, u64)> {
    std::thread::sleep(SETTLE);
    let rss = crate::bench::resident_memory(child.id());
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if !wait_timeout(&mut child, Duration::from_secs(15)) {
        let _ = child.kill();
        let _ = child.wait();
    }
    rss.context("the process exited before it was measured")
}

fn wait_timeout(child: &mut Child, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `vigil run` on `config`.
fn service(vigil_exe: &Path, config: &Path) -> anyhow::Result<(u64, u64)> {
    let child = Command::new(vigil_exe)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    settle_and_measure(child)
}

/// `gst-launch-1.0` running, side by side, the capture pipelines vigil builds for `config`'s
/// cameras (same decoder and threads, real-time pacing), each into a fakesink.
fn decode_floor(config: &Path) -> anyhow::Result<(u64, u64)> {
    let cfg = Config::load(config)?;
    let platform = Platform::detect();
    let mut parts = Vec::new();
    for i in 0..cfg.cameras.len() {
        let spec = CameraSpec::from_config(&cfg, i);
        let SourceUri::File { path, .. } = &spec.source else { bail!("the footprint bench reads files") };
        let once = SourceUri::File { path: path.clone(), looped: false, pace: Pace::Realtime };
        let probe = CameraSpec::new(i, "probe", once.clone());
        let info = capture::probe(&probe, Duration::from_secs(10))?;
        let plan = spec.plan(&platform, info, 0)?;
        parts.push(crate::bench::baseline_description(&spec.source, &plan, &platform, 1, true)?);
    }
    let child = Command::new("gst-launch-1.0")
        .args(crate::bench::shell_split(&parts.join("  ")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run gst-launch-1.0; install gstreamer1.0-tools")?;
    settle_and_measure(child)
}

/// From spawning `vigil run` on `config` to the first message on its events topic.
fn cold_start(vigil_exe: &Path, config: &Path, port: u16) -> anyhow::Result<Duration> {
    let cfg = Config::load(config)?;
    let topic = vigil_core::topic::events(&cfg.device_id);
    let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
    let mut options = rumqttc::MqttOptions::new(format!("cold-{}", std::process::id()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client.subscribe(&topic, rumqttc::QoS::AtLeastOnce)?;
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                    let _ = first_tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    // Subscribed before vigil starts: the first event cannot be missed.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut child = Command::new(vigil_exe)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let got = first_rx.recv_timeout(Duration::from_secs(60));
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let _ = client.disconnect();
    got.context("no event within 60 s")?;
    Ok(took)
}

/// The size of `binary` with its symbols and debug information removed (by `objcopy`).
fn stripped_size(binary: &Path, objcopy: &str, tmp: &Path) -> anyhow::Result<u64> {
    let out = tmp.join("stripped");
    let status = Command::new(objcopy)
        .arg("--strip-all")
        .arg(binary)
        .arg(&out)
        .status()
        .with_context(|| format!("cannot run {objcopy}"))?;
    if !status.success() {
        bail!("{objcopy} --strip-all {} failed", binary.display());
    }
    let size = std::fs::metadata(&out)?.len();
    std::fs::remove_file(&out)?;
    Ok(size)
}
