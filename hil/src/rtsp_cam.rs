//! `vigil-rtsp-cam`: a synthetic RTSP camera.
//!
//! Serves an encoded test pattern on one or more mount points, on a given port or a free one
//! (`--port 0`). Once listening it prints one line per mount, `READY rtsp://ADDR:PORT/MOUNT`, and
//! serves until killed. The test suites kill (-9), freeze (SIGSTOP) and restart it, and ask it to
//! corrupt its RTP packets (`--corrupt-every N`, or one packet per SIGUSR1); in the HIL lab it
//! feeds a real board a known stream.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Codec {
    H264,
    H265,
}

#[derive(Debug, Parser)]
#[command(version, about = "A synthetic RTSP camera for vigil's tests and HIL rig")]
struct Args {
    /// TCP port to listen on; 0 picks a free one (printed in the READY lines).
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Mount point names; each serves its own stream (`--mount a --mount b`).
    #[arg(long = "mount", default_values_t = ["cam".to_owned()])]
    mounts: Vec<String>,
    #[arg(long, default_value_t = 320)]
    width: u32,
    #[arg(long, default_value_t = 240)]
    height: u32,
    #[arg(long, default_value_t = 15)]
    fps: u32,
    /// Frames between keyframes.
    #[arg(long, default_value_t = 15)]
    gop: u32,
    #[arg(long, value_enum, default_value_t = Codec::H264)]
    codec: Codec,
    /// videotestsrc pattern.
    #[arg(long, default_value = "ball")]
    pattern: String,
    /// Flip bytes in the payload of every Nth large RTP packet (0: never). Independently, each
    /// SIGUSR1 damages the next large packet once.
    #[arg(long, default_value_t = 0)]
    corrupt_every: u64,
    /// One encoder per client instead of one shared by all (a new client then starts on a keyframe).
    #[arg(long)]
    private: bool,
    /// Serve this video file in a loop instead of a test pattern, at its own size and frame
    /// rate (the options above for those are ignored). Frame `n` of the clip is the stream's
    /// frame `n` modulo the clip's length; with `--private`, each client starts at frame 0, so
    /// the HIL rig can score detections against the clip's ground truth.
    #[arg(long)]
    clip: Option<std::path::PathBuf>,
}

fn launch_line(a: &Args) -> String {
    let (encoder, payloader) = match a.codec {
        Codec::H264 => ("x264enc", "rtph264pay"),
        Codec::H265 => ("x265enc", "rtph265pay"),
    };
    let source = if a.clip.is_some() {
        // Fed by `serve_clip`, which timestamps each frame as it pushes it.
        "appsrc name=clip is-live=true format=time do-timestamp=true ! videoconvert".to_owned()
    } else {
        format!(
            "videotestsrc is-live=true pattern={} ! video/x-raw,width={},height={},framerate={}/1",
            a.pattern, a.width, a.height, a.fps
        )
    };
    format!(
        "( {source} ! {encoder} tune=zerolatency speed-preset=ultrafast key-int-max={} \
         ! {payloader} name=pay0 pt=96 config-interval=-1 )",
        a.gop
    )
}

/// A clip decoded into memory: its frames, their caps, and the time each is shown.
struct Clip {
    caps: gst::Caps,
    frames: Vec<gst::Buffer>,
    frame_time: std::time::Duration,
}

impl Clip {
    fn load(path: &std::path::Path) -> Result<Self> {
        let pipeline = gst::parse::launch(&format!(
            "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false",
            path.display()
        ))
        .context("cannot build the clip decoder")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
        let sink =
            pipeline.by_name("out").and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok()).context("no appsink")?;
        pipeline.set_state(gst::State::Playing).context("the clip does not play")?;
        let mut frames = Vec::new();
        let mut caps = None;
        while let Ok(sample) = sink.pull_sample() {
            caps = caps.or_else(|| sample.caps().map(|c| c.to_owned()));
            if let Some(b) = sample.buffer_owned() {
                frames.push(b);
            }
        }
        let _ = pipeline.set_state(gst::State::Null);
        let caps = caps.with_context(|| format!("{}: no video frames decoded", path.display()))?;
        let fps = caps
            .structure(0)
            .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
            .filter(|f| f.numer() > 0 && f.denom() > 0)
            .context("the clip has no frame rate")?;
        let frame_time = std::time::Duration::from_secs_f64(fps.denom() as f64 / fps.numer() as f64);
        Ok(Self { caps, frames, frame_time })
    }
}

/// Feeds one client's media with the clip in a loop, at the clip's frame rate (the push waits
/// for each frame's time, so the stream is live as a camera's is).
fn serve_clip(media: &rtsp::RTSPMedia, clip: Arc<Clip>) {
    let Some(src) = media
        .element()
        .downcast::<gst::Bin>()
        .ok()
        .and_then(|bin| bin.by_name("clip"))
        .and_then(|e| e.downcast::<gstreamer_app::AppSrc>().ok())
    else {
        return;
    };
    src.set_caps(Some(&clip.caps));
    let next = std::sync::Mutex::new((0usize, None::<std::time::Instant>));
    src.set_callbacks(
        gstreamer_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
                let (n, start) = *next;
                let start = start.unwrap_or_else(std::time::Instant::now);
                let due = start + clip.frame_time * n as u32;
                if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
                let mut frame = clip.frames[n % clip.frames.len()].copy();
                frame.make_mut().set_duration(gst::ClockTime::try_from(clip.frame_time).ok());
                *next = (n + 1, Some(start));
                let _ = src.push_buffer(frame);
            })
            .build(),
    );
}

/// Damage requests shared by every media of the server: a periodic rate and one-shot requests.
#[derive(Default)]
struct Damage {
    every: u64,
    seen: AtomicU64,
}

/// One-shot damage requests not yet carried out: one per SIGUSR1, taken by any media.
static DAMAGE_REQUESTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigusr1(_: libc::c_int) {
    // An atomic add is async-signal-safe.
    DAMAGE_REQUESTS.fetch_add(1, Ordering::Relaxed);
}

fn install_damage_signal() -> Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_sigusr1;
    // SAFETY: the handler only touches an atomic; SIGUSR1 has no other user in this process.
    let previous = unsafe { libc::signal(libc::SIGUSR1, handler as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        bail!("cannot install the SIGUSR1 handler: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Damage {
    fn due(&self) -> bool {
        let periodic = self.every > 0 && self.seen.fetch_add(1, Ordering::Relaxed) % self.every == self.every - 1;
        let requested =
            DAMAGE_REQUESTS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        periodic || requested
    }
}

/// Flips bytes of the packets `damage` asks for, from the first byte after the RTP header on: the
/// NAL (or FU) header is hit too, so the receiver's depayloader rejects the stream and the client
/// has to recover by rejoining at a keyframe.
fn corrupt_packets(pay: &gst::Element, damage: Arc<Damage>) {
    let Some(pad) = pay.static_pad("src") else { return };
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            if buffer.size() > 100 && damage.due() {
                if let Ok(mut map) = buffer.make_mut().map_writable() {
                    for b in map.iter_mut().skip(12).step_by(7) {
                        *b ^= 0x5a;
                    }
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.mounts.iter().any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')) {
        bail!("mount names must be letters, digits and '-'");
    }
    gst::init().context("GStreamer could not start")?;
    let main_loop = glib::MainLoop::new(None, false);
    let server = rtsp::RTSPServer::new();
    server.set_address(&args.address);
    server.set_service(&args.port.to_string());
    let mounts = server.mount_points().context("server has no mount points")?;
    let damage = Arc::new(Damage { every: args.corrupt_every, ..Damage::default() });
    install_damage_signal()?;
    let clip = match &args.clip {
        Some(path) => Some(Arc::new(Clip::load(path)?)),
        None => None,
    };
    for mount in &args.mounts {
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(&launch_line(&args));
        factory.set_shared(!args.private);
        let damage = damage.clone();
        let clip = clip.clone();
        factory.connect_media_configure(move |_, media| {
            if let Some(clip) = &clip {
                serve_clip(media, clip.clone());
            }
            let pay = media.element().downcast::<gst::Bin>().ok().and_then(|bin| bin.by_name("pay0"));
            if let Some(pay) = pay {
                corrupt_packets(&pay, damage.clone());
            }
        });
        mounts.add_factory(&format!("/{mount}"), factory);
    }
    let _source = server.attach(None).context("cannot listen (port in use?)")?;
    let port = server.bound_port();
    let mut out = std::io::stdout().lock();
    for mount in &args.mounts {
        writeln!(out, "READY rtsp://{}:{port}/{mount}", args.address)?;
    }
    out.flush()?;
    drop(out);
    main_loop.run();
    Ok(())
}
