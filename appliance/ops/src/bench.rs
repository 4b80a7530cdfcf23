//! `vigil-ops bench`: vigil's throughput measured against a baseline run side by side, in the same process
//! run, alternating rounds, because timings on shared machines are noisy. Prints ratios.
//!
//! 1. Capture: vigil's camera path (pipeline → puller thread → latest-frame slot → consumer),
//!    inference off, for 1, 2 and 4 cameras, against `gst-launch-1.0` running the same decodes
//!    side by side into fakesinks.
//! 2. Reconnect: time from a killed RTSP camera's return to vigil's next frame (p50/p95).
//! 3. Inference: ONNX Runtime time per frame of the bundle's INT8 model, alone and with vigil's
//!    pre- and post-processing around it.
//! 4. The service path on the CPU: 1 and 4 real-time cameras through capture, the budget
//!    scheduler and the model: capture → detections p50/p95/p99, the fraction of frames
//!    processed and late frames, next to the bare inference time of the same run.
//! 5. The footprint (`crate::footprint`; alone with `--footprint`): resident memory against
//!    gst-launch, cold start, binary size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use vigil_capture::pipeline::{self, Plan};
use vigil_capture::{self as capture, CameraSpec, Frame, Platform};
use vigil_config::Config;
use vigil_core::codec::Codec;
use vigil_core::hub::FrameHub;
use vigil_core::image::Image;
use vigil_core::source::{Pace, SourceUri};
use vigil_core::stats::{CameraState, CameraStats};
use vigil_testkit::{median, RtspCam};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Clip to decode. Default: a 1280×720 30 fps H.264 clip generated into a temporary directory.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Configuration naming the model bundle (default: the embedded demo configuration).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Alternating rounds of each capture measurement.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Timed inference runs.
    #[arg(long, default_value_t = 300)]
    pub iterations: usize,
    /// RTSP server kills for the reconnect measurement (0: skip it).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Seconds of the service-path measurement per camera count (0: skip it).
    #[arg(long, default_value_t = 20)]
    pub service_seconds: u64,
    /// Only the footprint: resident memory against gst-launch, cold start, binary size.
    #[arg(long)]
    pub footprint: bool,
    /// The `vigil` binary whose service path the footprint measures [default: the `vigil` next
    /// to this binary, as in a source checkout's target/release].
    #[arg(long)]
    pub vigil: Option<PathBuf>,
    /// The aarch64 build whose stripped size the footprint reports.
    #[arg(long, default_value = "target/cross/aarch64-unknown-linux-gnu/release/vigil")]
    pub aarch64: PathBuf,
}

/// The `vigil` binary to measure: `--vigil`, or the one beside this binary.
fn vigil_exe(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.vigil {
        return Ok(p.clone());
    }
    let beside = std::env::current_exe()?.with_file_name("vigil");
    anyhow::ensure!(
        beside.is_file(),
        "no vigil binary beside this one ({}): build it (cargo build --release -p vigil) or give --vigil",
        beside.display()
    );
    Ok(beside)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    capture::init_gstreamer()?;
    // The bench runs in a source checkout: without --config, on its demo configuration.
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::demo(&std::env::current_dir()?)?,
    };
    let tmp = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
    let clip = match &args.clip {
        Some(c) => c.clone(),
        None => {
            std::fs::create_dir_all(&tmp)?;
            let c = tmp.join("bench-720p30.mp4");
            println!("generating {} (600 frames, 1280x720 H.264)...", c.display());
            generate_clip(&c)?;
            c
        }
    };
    if args.footprint {
        std::fs::create_dir_all(&tmp)?;
        let done = crate::footprint::run(&vigil_exe(args)?, &clip, &cfg.model.bundle, Some(&args.aarch64), &tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        return done;
    }
    let (bundle, mut detector) = vigil_infer::load_detector(&cfg)?;
    let platform = Arc::new(Platform::detect());
    let source = SourceUri::File { path: clip.clone(), looped: false, pace: Pace::Fast };
    let probe_spec = CameraSpec::new(0, "bench", source.clone());
    let info = capture::probe(&probe_spec, Duration::from_secs(10))?;
    let plan = probe_spec.plan(&platform, info, 0)?;
    println!("== capture ingest: decode + RGB conversion + hand-off (inference off)");
    println!("clip: {} ({}, {})", clip.display(), info.codec, plan.path());
    for cameras in [1usize, 2, 4] {
        // Both with the threads the service gives each software decoder for this many cameras.
        let threads = capture::decode_threads(&Default::default(), cameras);
        let plan = Plan { decode_threads: threads, ..plan.clone() };
        let baseline = baseline_description(&source, &plan, &platform, cameras, false)?;
        let mut gst_fps = Vec::new();
        let mut vigil_fps = Vec::new();
        for round in 1..=args.rounds.max(1) {
            let g = gst_launch_seconds(&baseline)?;
            let v = vigil_capture_fps(&source, info.codec, &platform, cameras)?;
            // Both decode every frame of every copy of the clip; vigil counts them.
            let g_fps = v.frames as f64 / g;
            println!(
                "{cameras} camera(s) round {round}: gst-launch {g_fps:.1} fps  vigil {:.1} fps \
                 ({} frames, {} taken, {} overwritten in slot)",
                v.fps, v.frames, v.taken, v.overwritten
            );
            gst_fps.push(g_fps);
            vigil_fps.push(v.fps);
        }
        let (g, v) = (median(&mut gst_fps), median(&mut vigil_fps));
        println!(
            "capture, {cameras} camera(s): vigil {v:.1} fps / gst-launch {g:.1} fps = ratio {:.3} (goal >= 0.95)",
            v / g
        );
    }
    reconnects(&platform, args.kills)?;

    println!(
        "== inference: {} {} on {}",
        bundle.manifest.model.name,
        bundle.manifest.model.version,
        detector.backend_name()
    );
    let input = match &bundle.manifest.reference {
        Some(r) => bundle.read_f32(&r.input)?,
        None => vec![0.5; bundle.input_len()],
    };
    for _ in 0..20 {
        detector.infer_raw(&input)?;
    }
    // The same model with vigil's pre/post-processing around it, on an RGB frame of the clip's
    // size (the letterbox is part of pre-processing); the two are timed alternately so that
    // machine noise hits both alike.
    let (fw, fh) = info.size.unwrap_or((1280, 720));
    let (w, h) = (fw as usize, fh as usize);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    let mut bare = Vec::with_capacity(args.iterations);
    let mut full = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let t = Instant::now();
        detector.infer_raw(&input)?;
        bare.push(t.elapsed());
        let t = Instant::now();
        detector.detect(Image::rgb(&rgb, w * 3), (fw, fh))?;
        full.push(t.elapsed());
    }
    let (b50, b95, bmean) = summary(&mut bare);
    let (f50, f95, fmean) = summary(&mut full);
    println!(
        "ORT inference alone:      p50 {b50:.2} ms  p95 {b95:.2} ms  mean {bmean:.2} ms  ({} runs)",
        args.iterations
    );
    println!("pre + inference + post:   p50 {f50:.2} ms  p95 {f95:.2} ms  mean {fmean:.2} ms");
    println!("pre + post overhead:      p50 {:+.2} ms (ratio of p50s {:.3})", f50 - b50, f50 / b50);
    if args.service_seconds > 0 {
        let budget = cfg.model.latency_budget.unwrap_or(bundle.manifest.budget.latency);
        println!(
            "== service path: real-time cameras (clip looped at 30 fps) → budget scheduler → {} (budget {} ms)",
            detector.backend_name(),
            budget.as_millis()
        );
        for cameras in [1usize, 4] {
            detector = service_path(detector, &source, info.codec, &platform, cameras, budget, args.service_seconds)?;
            let mut bare = Vec::with_capacity(100);
            for _ in 0..100 {
                let t = Instant::now();
                detector.infer_raw(&input)?;
                bare.push(t.elapsed());
            }
            let (p50, _, _) = summary(&mut bare);
            println!("  bare inference right after, same model and process: p50 {p50:.2} ms");
        }
    }
    crate::footprint::run(&vigil_exe(args)?, &clip, &cfg.model.bundle, Some(&args.aarch64), &tmp)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Runs `cameras` real-time copies of the clip through capture and the production scheduler for
/// `seconds`, prints the latency quantiles and what fraction of frames made it, and hands the
/// detector back.
#[allow(clippy::too_many_arguments)]
fn service_path(
    detector: vigil_infer::Detector,
    source: &SourceUri,
    codec: Codec,
    platform: &Arc<Platform>,
    cameras: usize,
    budget: Duration,
    seconds: u64,
) -> anyhow::Result<vigil_infer::Detector> {
    use vigil_pipeline::scheduler::{Scheduler, SchedulerStats, SystemClock};
    let SourceUri::File { path, .. } = source else { bail!("the service bench reads a file") };
    let live = SourceUri::File { path: path.clone(), looped: true, pace: Pace::Realtime };
    let ids: Vec<String> = (0..cameras).map(|i| format!("cam{i}")).collect();
    let cams = BenchCameras::start(&ids, &live, codec, platform)?;
    let (hub, stats) = (cams.hub.clone(), cams.stats.clone());
    let sched_stats = Arc::new(SchedulerStats::new(&ids));
    let mut scheduler = Scheduler::new(detector, vec![budget; cameras], Arc::new(SystemClock), sched_stats.clone());
    scheduler.warm_up()?;
    // Counted from the first frame on, so that pipeline start-up is not in the figures.
    while !hub.wait(Duration::from_millis(100)) {}
    let frames_before: u64 = stats.iter().map(|s| s.snapshot().frames_in).sum();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        if hub.wait(Duration::from_millis(100)) {
            scheduler.step(&hub);
        }
    }
    cams.stop();
    let frames: u64 = stats.iter().map(|s| s.snapshot().frames_in).sum::<u64>() - frames_before;
    let processed = sched_stats.processed();
    println!(
        "{cameras} camera(s), {seconds} s: {processed} of {frames} frames processed ({:.1} %), {} dropped as unable \
         to make the budget, late (deadline misses): {}",
        100.0 * processed as f64 / frames.max(1) as f64,
        sched_stats.dropped_stale(),
        sched_stats.deadline_misses()
    );
    for c in &sched_stats.cameras {
        let s = c.snapshot();
        println!(
            "  {}: capture→detections p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  (queue p95 {:.1}, inference p95 {:.1})",
            s.id, s.total.p50_ms, s.total.p95_ms, s.total.p99_ms, s.queue.p95_ms, s.inference.p95_ms
        );
    }
    Ok(scheduler.into_stages())
}

/// (VmRSS, VmHWM) of process `pid` in MiB, from /proc (Linux).
pub(crate) fn resident_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb / 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn generate_clip(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=600", "pattern=ball", "motion=sweep", "!"])
        // 4:2:0, 8 bits, as cameras send: left to itself x264enc takes videoconvert's first
        // format, 4:4:4 at 10 bits, which decodes into frames three times the size.
        .args(["video/x-raw,width=1280,height=720,framerate=30/1", "!", "videoconvert", "!"])
        .args(["video/x-raw,format=I420", "!"])
        .args(["x264enc", "speed-preset=superfast", "bitrate=6000", "key-int-max=60", "!"])
        .args(["h264parse", "!", "mp4mux", "!", "filesink"])
        .arg(format!("location={}", path.display()))
        .output()
        .context("cannot run gst-launch-1.0; install gstreamer1.0-tools")?;
    if !out.status.success() {
        bail!("clip generation failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

struct Throughput {
    fps: f64,
    /// Frames pulled from the pipeline.
    frames: u64,
    /// Frames the consumer took from the slot.
    taken: u64,
    overwritten: u64,
}

/// vigil's own pipeline for `source` with a fakesink in place of the appsink, `copies` times side
/// by side in one gst-launch pipeline (element names dropped so that the copies do not clash).
pub(crate) fn baseline_description(
    source: &SourceUri,
    plan: &Plan,
    platform: &Platform,
    copies: usize,
    sync: bool,
) -> anyhow::Result<String> {
    let spec = pipeline::describe(source, plan, platform).map_err(anyhow::Error::msg)?;
    let one: String = spec
        .description
        .split(" ! ")
        .map(|part| {
            if part.starts_with("appsink ") {
                format!("fakesink sync={sync}")
            } else {
                part.split(' ').filter(|w| !w.starts_with("name=vigil_")).collect::<Vec<_>>().join(" ")
            }
        })
        .collect::<Vec<_>>()
        .join(" ! ");
    Ok(vec![one; copies].join("  "))
}

/// Seconds `gst-launch-1.0` takes for `description`, by its own "Execution ended after"
/// (PLAYING to EOS), so process start-up is not counted against it.
fn gst_launch_seconds(description: &str) -> anyhow::Result<f64> {
    let out = Command::new("gst-launch-1.0")
        .args(shell_split(description))
        .output()
        .context("cannot run gst-launch-1.0; install gstreamer1.0-tools")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("gst-launch-1.0 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let elapsed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Execution ended after "))
        .and_then(parse_gst_time)
        .context("gst-launch-1.0 printed no execution time")?;
    Ok(elapsed.as_secs_f64())
}

/// Splits a pipeline description into arguments, keeping double-quoted values whole.
pub(crate) fn shell_split(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses `H:MM:SS.nnnnnnnnn`.
fn parse_gst_time(s: &str) -> Option<Duration> {
    let mut parts = s.trim().split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(h * 3600.0 + m * 60.0 + sec))
}

/// Cameras `ids` on `source`, feeding one hub: vigil's real camera threads.
struct BenchCameras {
    hub: Arc<FrameHub<Frame>>,
    stats: Vec<Arc<CameraStats>>,
    cancel: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BenchCameras {
    fn start(ids: &[String], source: &SourceUri, codec: Codec, platform: &Arc<Platform>) -> anyhow::Result<Self> {
        let stats: Vec<Arc<CameraStats>> = ids.iter().map(|id| Arc::new(CameraStats::new(id))).collect();
        let hub = Arc::new(FrameHub::new(stats.clone()));
        let cancel = CancellationToken::new();
        let mut threads = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut spec = CameraSpec::new(i, id, source.clone());
            // As configured cameras do: the one-time probe is not part of what is measured.
            spec.codec = Some(codec);
            spec.decode_threads = capture::decode_threads(&Default::default(), ids.len());
            threads.push(capture::spawn_camera(spec, platform.clone(), hub.clone(), cancel.clone())?);
        }
        Ok(Self { hub, stats, cancel, threads })
    }

    fn stop(self) {
        self.cancel.cancel();
        self.hub.close();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// vigil's real camera path, `cameras` cameras on the same clip, with a consumer that takes every
/// frame it can from the slots.
fn vigil_capture_fps(
    source: &SourceUri,
    codec: Codec,
    platform: &Arc<Platform>,
    cameras: usize,
) -> anyhow::Result<Throughput> {
    let ids: Vec<String> = (0..cameras).map(|i| format!("bench{i}")).collect();
    let started = Instant::now();
    let cams = BenchCameras::start(&ids, source, codec, platform)?;
    let (hub, stats) = (cams.hub.clone(), cams.stats.clone());
    let mut taken = 0u64;
    let mut last = started;
    let result = loop {
        if let Some(frame) = hub.take(Duration::from_millis(20)) {
            taken += 1;
            last = Instant::now();
            drop(frame);
            continue;
        }
        if stats.iter().all(|s| s.state() == CameraState::Finished) {
            break Ok(());
        }
        if let Some(s) = stats.iter().find(|s| matches!(s.state(), CameraState::Stalled | CameraState::Failed)) {
            break Err(anyhow::anyhow!("capture failed: {:?}", s.snapshot().last_error));
        }
        if started.elapsed() > Duration::from_secs(300) {
            break Err(anyhow::anyhow!("capture did not finish within 300 s"));
        }
    };
    cams.stop();
    result?;
    let snaps: Vec<_> = stats.iter().map(|s| s.snapshot()).collect();
    let frames: u64 = snaps.iter().map(|s| s.frames_in).sum();
    Ok(Throughput {
        fps: frames as f64 / (last - started).as_secs_f64(),
        frames,
        taken,
        overwritten: snaps.iter().map(|s| s.dropped_overwritten).sum(),
    })
}

/// Reconnect time: a synthetic RTSP camera is killed (-9) `kills` times, each time restarted
/// after 1 s; measured from the restarted server being ready to vigil's next frame.
fn reconnects(platform: &Arc<Platform>, kills: usize) -> anyhow::Result<()> {
    if kills == 0 {
        return Ok(());
    }
    println!("== reconnect after the RTSP server returns ({kills} kills, default supervision)");
    let mut server = match RtspCam::start(&["--width", "640", "--height", "480", "--fps", "15"]) {
        Ok(s) => s,
        Err(e) => {
            println!("reconnect: skipped: {e:#}");
            return Ok(());
        }
    };
    let stats = Arc::new(CameraStats::new("rtsp"));
    let hub = Arc::new(FrameHub::new(vec![stats.clone()]));
    let cancel = CancellationToken::new();
    let spec = CameraSpec::new(0, "rtsp", SourceUri::parse(server.url()).map_err(anyhow::Error::msg)?);
    let thread = capture::spawn_camera(spec, platform.clone(), hub.clone(), cancel.clone())?;
    let frames = || stats.frames_in.load(std::sync::atomic::Ordering::Relaxed);
    let wait_frame = |after: u64| -> Option<Instant> {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            drop(hub.take(Duration::from_millis(2)));
            if frames() > after {
                return Some(Instant::now());
            }
        }
        None
    };
    let mut times = Vec::new();
    let outcome = (|| -> anyhow::Result<()> {
        wait_frame(0).context("no first frame from the RTSP camera")?;
        for _ in 0..kills {
            server.kill9();
            std::thread::sleep(Duration::from_secs(1));
            let before = frames();
            server.restart()?;
            let ready = Instant::now();
            let got = wait_frame(before).context("no frame within 30 s of the server's return")?;
            times.push(got - ready);
        }
        Ok(())
    })();
    cancel.cancel();
    let _ = thread.join();
    outcome?;
    let (p50, p95, mean) = summary(&mut times);
    println!("reconnect: p50 {p50:.0} ms  p95 {p95:.0} ms  mean {mean:.0} ms  ({kills} kills)");
    Ok(())
}

/// (p50, p95, mean) in milliseconds.
fn summary(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    (ms(v[v.len() / 2]), ms(v[(v.len() * 95 / 100).min(v.len() - 1)]), mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gst_times_and_descriptions_parse() {
        assert_eq!(parse_gst_time("0:00:03.500000000"), Some(Duration::from_millis(3500)));
        assert_eq!(parse_gst_time("1:02:03.0"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_gst_time("soon"), None);
        assert_eq!(shell_split("filesrc location=\"/a b.mp4\" ! x"), ["filesrc", "location=/a b.mp4", "!", "x"]);
    }
}
