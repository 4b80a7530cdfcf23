//! `vigil-rtsp-cam`: a synthetic RTSP camera.
//!
//! Serves an encoded test pattern on one or more mount points, on a given port or a free one
//! (`--port 0`). Once listening it prints one line per mount, `READY rtsp://ADDR:PORT/MOUNT`, and
//! serves until killed. The test suites kill (-9), freeze (SIGSTOP) and restart it, and ask it to
//! corrupt its RTP packets; in the HIL lab it feeds a real board a known stream.

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
    /// Flip bytes in the payload of every Nth large RTP packet (0: never).
    #[arg(long, default_value_t = 0)]
    corrupt_every: u64,
    /// One encoder per client instead of one shared by all (a new client then starts on a keyframe).
    #[arg(long)]
    private: bool,
}

fn launch_line(a: &Args) -> String {
    let (encoder, payloader) = match a.codec {
        Codec::H264 => ("x264enc", "rtph264pay"),
        Codec::H265 => ("x265enc", "rtph265pay"),
    };
    format!(
        "( videotestsrc is-live=true pattern={} ! video/x-raw,width={},height={},framerate={}/1 \
         ! {encoder} tune=zerolatency speed-preset=ultrafast key-int-max={} \
         ! {payloader} name=pay0 pt=96 config-interval=-1 )",
        a.pattern, a.width, a.height, a.fps, a.gop
    )
}

/// Corrupts every `every`th RTP packet larger than 100 bytes leaving the RTP and NAL/FU headers
/// intact, so the damage lands in slice data, where a decoder has to notice it.
fn corrupt_packets(pay: &gst::Element, every: u64) {
    let Some(pad) = pay.static_pad("src") else { return };
    let seen = Arc::new(AtomicU64::new(0));
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            if buffer.size() > 100 && seen.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
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
    for mount in &args.mounts {
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(&launch_line(&args));
        factory.set_shared(!args.private);
        if args.corrupt_every > 0 {
            let every = args.corrupt_every;
            factory.connect_media_configure(move |_, media| {
                let pay = media.element().downcast::<gst::Bin>().ok().and_then(|bin| bin.by_name("pay0"));
                if let Some(pay) = pay {
                    corrupt_packets(&pay, every);
                }
            });
        }
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
