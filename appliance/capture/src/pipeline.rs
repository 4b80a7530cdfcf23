//! GStreamer pipeline descriptions, built as strings from a source, a decode plan and a platform,
//! so that every board's pipelines can be unit-tested on any machine.
//!
//! Shape: `source ! [depay/demux] ! [parse] ! [decoder] ! convert ! appsink`.
//! Frames leave capture at their decoded size: on Jetson `nvvidconv` (the VIC) converts out of
//! NVMM into RGBA, elsewhere `videoconvert` into packed RGB. The model's pre-processing then
//! letterboxes them (vigil_infer's transform, on the CPU or in CUDA), by the same rules `vigil
//! model pack` computed the bundle's reference with: capture does not depend on the model, and
//! GStreamer's placement of odd borders (a row off from the model's) never reaches a tensor
//! (docs/decisions/0014).
//!
//! Nothing here needs GStreamer newer than 1.16 (checked per profile by the tests).

use super::platform::{Codec, Decoder, Platform};
use vigil_core::image::PixelLayout;
use vigil_core::source::{Mode, Pace, RtspTransport, SourceUri};

/// Element names the capture code looks up in a built pipeline.
pub const SINK_NAME: &str = "vigil_sink";
/// The decoder: the keyframe gate and the decode accounting sit on its pads.
pub const DECODER_NAME: &str = "vigil_dec";
/// The source element (`rtspsrc` gets its credentials set on it, never in the description).
pub const SOURCE_NAME: &str = "vigil_src";

/// Default CSI sensor mode when the URI does not say.
const CSI_DEFAULT: (u32, u32, u32) = (1920, 1080, 30);
/// videotestsrc frames.
const TEST_MODE: (u32, u32, u32) = (640, 480, 15);

/// How one camera's video is decoded and converted: chosen per start, shown in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub codec: Codec,
    /// `None` for raw video.
    pub decoder: Option<Decoder>,
    /// Scale and convert on the VIC (`nvvidconv`).
    pub nvvidconv: bool,
    /// `max-threads` of a software (FFmpeg) decoder; 0 leaves FFmpeg's own choice (one per core).
    pub decode_threads: u32,
}

impl Plan {
    /// The plan for `codec` with `decoder` (`None` for raw video) on `platform`.
    pub fn new(platform: &Platform, codec: Codec, decoder: Option<Decoder>) -> Self {
        Self { codec, decoder, nvvidconv: platform.has_nvvidconv(), decode_threads: 0 }
    }

    /// `avdec_h264 (software) → videoconvert`: the decode path as people read it.
    pub fn path(&self) -> String {
        let decode = match &self.decoder {
            Some(d) => format!("{} ({})", d.element, if d.hardware { "hardware" } else { "software" }),
            None => "raw".to_owned(),
        };
        let convert = if self.nvvidconv { "nvvidconv" } else { "videoconvert" };
        format!("{decode} → {convert}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSpec {
    /// `gst-launch-1.0` syntax, free of credentials.
    pub description: String,
    /// A file played once: its end (EOS) means "finished", not "failed".
    pub finite: bool,
    /// A file played in a loop: EOS seeks back to the start.
    pub looped: bool,
    /// A camera (frames happen in real time), as opposed to a file.
    pub live: bool,
    pub layout: PixelLayout,
}

/// Quotes a value for `gst_parse_launch` (double quotes; `"` and `\` escaped).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `video/x-raw,width=..,height=..,framerate=../1` with only the fields the mode sets.
fn caps_with_mode(media: &str, mode: &Mode) -> String {
    let mut caps = media.to_owned();
    if let Some(w) = mode.width {
        caps.push_str(&format!(",width={w}"));
    }
    if let Some(h) = mode.height {
        caps.push_str(&format!(",height={h}"));
    }
    if let Some(f) = mode.fps {
        caps.push_str(&format!(",framerate={f}/1"));
    }
    caps
}

/// `rtspsrc`'s `protocols` value for a transport.
fn protocols(transport: RtspTransport) -> &'static str {
    match transport {
        RtspTransport::Tcp => "tcp",
        RtspTransport::Udp => "udp",
    }
}

fn parser(codec: Codec) -> Option<&'static str> {
    match codec {
        Codec::H264 => Some("h264parse"),
        Codec::H265 => Some("h265parse"),
        Codec::Mjpeg => Some("jpegparse"),
        Codec::Raw => None,
    }
}

/// Everything up to the decoder's input: source element, demux/depayload, parser.
fn source_head(source: &SourceUri, codec: Codec, platform: &Platform) -> Result<String, String> {
    let with_parser = |head: String| match parser(codec) {
        Some(p) => format!("{head} ! {p}"),
        None => head,
    };
    Ok(match source {
        SourceUri::File { path, .. } => {
            with_parser(format!("filesrc location={} ! parsebin", quote(&path.to_string_lossy())))
        }
        SourceUri::Rtsp { url, transport, latency_ms, .. } => {
            let protocols = protocols(*transport);
            let depay = match codec {
                Codec::H264 => "rtph264depay ! h264parse",
                Codec::H265 => "rtph265depay ! h265parse",
                Codec::Mjpeg => "rtpjpegdepay",
                Codec::Raw => return Err("raw video over RTSP is not supported; use H.264, H.265 or MJPEG".into()),
            };
            format!(
                "rtspsrc name={SOURCE_NAME} location={} protocols={protocols} latency={latency_ms} ! {depay}",
                quote(url)
            )
        }
        SourceUri::V4l2 { device, mode } => {
            let media = match codec {
                Codec::Raw => "video/x-raw",
                Codec::Mjpeg => "image/jpeg",
                Codec::H264 => "video/x-h264",
                Codec::H265 => "video/x-h265",
            };
            let head = format!("v4l2src device={} ! {}", quote(&device.to_string_lossy()), caps_with_mode(media, mode));
            with_parser(head)
        }
        SourceUri::Csi { sensor_id, mode } => {
            if !platform.has("nvarguscamerasrc") {
                return Err("csi:// cameras need nvarguscamerasrc, which only a Jetson (JetPack) has".into());
            }
            let (w, h, fps) = csi_mode(mode);
            format!(
                "nvarguscamerasrc sensor-id={sensor_id} \
                 ! video/x-raw(memory:NVMM),width={w},height={h},framerate={fps}/1,format=NV12"
            )
        }
        SourceUri::Test { pattern } => {
            let (w, h, fps) = TEST_MODE;
            format!("videotestsrc pattern={pattern} is-live=true ! video/x-raw,width={w},height={h},framerate={fps}/1")
        }
    })
}

fn csi_mode(mode: &Mode) -> (u32, u32, u32) {
    (mode.width.unwrap_or(CSI_DEFAULT.0), mode.height.unwrap_or(CSI_DEFAULT.1), mode.fps.unwrap_or(CSI_DEFAULT.2))
}

/// The frame size a source is known to produce before it starts, where the URI fixes it.
pub fn known_size(source: &SourceUri) -> Option<(u32, u32)> {
    match source {
        SourceUri::Csi { mode, .. } => {
            let (w, h, _) = csi_mode(mode);
            Some((w, h))
        }
        SourceUri::V4l2 { mode: Mode { width: Some(w), height: Some(h), .. }, .. } => Some((*w, *h)),
        SourceUri::Test { .. } => Some((TEST_MODE.0, TEST_MODE.1)),
        _ => None,
    }
}

/// The codec a source has without probing it, if any.
pub fn implied_codec(source: &SourceUri) -> Option<Codec> {
    match source {
        SourceUri::Csi { .. } | SourceUri::Test { .. } => Some(Codec::Raw),
        _ => None,
    }
}

/// From decoded video to the appsink, at the decoded size: packed RGB (`videoconvert`), or RGBA
/// out of NVMM through the VIC (`nvvidconv`). The letterbox is the model's pre-processing, not
/// capture's.
pub fn convert_tail(plan: &Plan, sink: &str) -> (String, PixelLayout) {
    if plan.nvvidconv {
        (format!("nvvidconv ! video/x-raw,format=RGBA ! {sink}"), PixelLayout::Rgba)
    } else {
        (format!("videoconvert ! video/x-raw,format=RGB ! {sink}"), PixelLayout::Rgb)
    }
}

/// The whole capture pipeline for `source` under `plan`, producing frames at the decoded size.
pub fn describe(source: &SourceUri, plan: &Plan, platform: &Platform) -> Result<PipelineSpec, String> {
    let (finite, looped, live, sync) = match source {
        SourceUri::File { looped, pace, .. } => (!looped, *looped, false, *pace == Pace::Realtime),
        _ => (false, false, true, false),
    };
    let mut head = source_head(source, plan.codec, platform)?;
    if let Some(d) = &plan.decoder {
        head.push_str(&format!(" ! {} name={DECODER_NAME}", d.element));
        if !d.properties.is_empty() {
            head.push(' ');
            head.push_str(d.properties);
        }
        // FFmpeg's decoders (gst-libav): one thread by default per core, each with a frame.
        if d.element.starts_with("avdec_") && plan.decode_threads > 0 {
            head.push_str(&format!(" max-threads={}", plan.decode_threads));
        }
    } else if plan.codec != Codec::Raw {
        return Err(format!("{} video needs a decoder", plan.codec));
    }
    // Two buffers and no dropping at the sink: the puller never blocks (the latest-frame slot
    // overwrites instead), so every drop happens in one place and is counted there. `sync=true`
    // paces a file at its frame rate; live sources are never held back by the sink.
    let sink = format!("appsink name={SINK_NAME} max-buffers=2 drop=false sync={sync} emit-signals=false");
    let (tail, layout) = convert_tail(plan, &sink);
    Ok(PipelineSpec { description: format!("{head} ! {tail}"), finite, looped, live, layout })
}

/// The pipeline that finds a source's codec and size: its head, parsed, into a fakesink.
pub fn probe_description(source: &SourceUri) -> Option<String> {
    let head = match source {
        SourceUri::File { path, .. } => format!("filesrc location={} ! parsebin", quote(&path.to_string_lossy())),
        SourceUri::Rtsp { url, transport, .. } => {
            format!("rtspsrc name={SOURCE_NAME} location={} protocols={} ! parsebin", quote(url), protocols(*transport))
        }
        SourceUri::V4l2 { device, .. } => format!("v4l2src device={} ! parsebin", quote(&device.to_string_lossy())),
        SourceUri::Csi { .. } | SourceUri::Test { .. } => return None,
    };
    Some(format!("{head} ! fakesink name=vigil_probe_sink sync=false"))
}

#[cfg(test)]
mod tests;
