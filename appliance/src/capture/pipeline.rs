//! GStreamer pipeline descriptions, one per source kind, built as strings so that every
//! platform's pipeline can be unit-tested without running it.
//!
//! Every pipeline ends the same way: the decoded video is letterboxed to the model's input size
//! (scale *before* colour conversion: ~1.6× faster than the other order, FIELD-NOTES) and
//! handed to an appsink as packed RGB. Nothing here needs GStreamer newer than 1.16.

use super::source::{Pace, RtspTransport, SourceUri};

/// Element names the capture code looks up in a built pipeline.
pub const SINK_NAME: &str = "vigil_sink";
/// An `identity` in front of the scaler whose caps tell the source frame size.
pub const SRC_INFO_NAME: &str = "vigil_src_info";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSpec {
    /// `gst-launch-1.0` syntax.
    pub description: String,
    /// A file played once: its end (EOS) means "finished", not "failed".
    pub finite: bool,
    /// A file played in a loop: EOS seeks back to the start.
    pub looped: bool,
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

/// The decode-and-letterbox tail shared by every source, ending in the appsink.
/// `sync=true` paces a file at its frame rate; live sources are never held back by the sink.
pub fn letterbox_tail(width: u32, height: u32, sink: &str) -> String {
    format!(
        "identity name={SRC_INFO_NAME} silent=true \
         ! videoscale add-borders=true ! video/x-raw,width={width},height={height},pixel-aspect-ratio=1/1 \
         ! videoconvert ! video/x-raw,format=RGB ! {sink}"
    )
}

/// The source half: everything up to raw decoded video.
pub fn source_head(source: &SourceUri) -> String {
    match source {
        SourceUri::File { path, .. } => {
            format!("filesrc location={} ! decodebin", quote(&path.to_string_lossy()))
        }
        SourceUri::Rtsp { url, transport } => {
            let protocols = match transport {
                RtspTransport::Tcp => "tcp",
                RtspTransport::Udp => "udp",
            };
            format!("rtspsrc location={} protocols={protocols} latency=200 ! decodebin", quote(url))
        }
        SourceUri::V4l2 { device } => {
            format!("v4l2src device={} ! decodebin", quote(&device.to_string_lossy()))
        }
        SourceUri::Csi { sensor_id } => {
            format!("nvarguscamerasrc sensor-id={sensor_id} ! nvvidconv ! video/x-raw,format=I420")
        }
        SourceUri::Test { pattern } => {
            format!("videotestsrc pattern={pattern} is-live=true ! video/x-raw,width=640,height=480,framerate=15/1")
        }
    }
}

/// The whole capture pipeline for `source`, producing `width`×`height` RGB frames.
pub fn describe(source: &SourceUri, width: u32, height: u32) -> PipelineSpec {
    let (finite, looped, sync) = match source {
        SourceUri::File { looped, pace, .. } => (!looped, *looped, *pace == Pace::Realtime),
        _ => (false, false, false),
    };
    // Two buffers and no dropping at the sink: the puller never blocks (the latest-frame slot
    // overwrites instead), so every drop happens in one place and is counted there.
    let sink = format!("appsink name={SINK_NAME} max-buffers=2 drop=false sync={sync} emit-signals=false");
    PipelineSpec {
        description: format!("{} ! {}", source_head(source), letterbox_tail(width, height, &sink)),
        finite,
        looped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_pipeline_letterboxes_before_converting() {
        let spec = describe(&SourceUri::parse("file:///clips/a b.mp4").unwrap(), 320, 320);
        assert_eq!(
            spec.description,
            "filesrc location=\"/clips/a b.mp4\" ! decodebin ! identity name=vigil_src_info silent=true \
             ! videoscale add-borders=true ! video/x-raw,width=320,height=320,pixel-aspect-ratio=1/1 \
             ! videoconvert ! video/x-raw,format=RGB \
             ! appsink name=vigil_sink max-buffers=2 drop=false sync=true emit-signals=false"
        );
        assert!(spec.finite && !spec.looped);
    }

    #[test]
    fn looped_and_fast_files_change_sync_and_finiteness() {
        let spec = describe(&SourceUri::parse("file:///a.mp4?loop=true&pace=fast").unwrap(), 320, 320);
        assert!(spec.description.contains("sync=false"));
        assert!(!spec.finite && spec.looped);
    }

    #[test]
    fn live_sources_are_never_synced_and_never_finite() {
        for uri in ["rtsp://cam/s", "v4l2:///dev/video0", "csi://0", "test://ball"] {
            let spec = describe(&SourceUri::parse(uri).unwrap(), 640, 640);
            assert!(spec.description.contains("sync=false"), "{uri}");
            assert!(!spec.finite && !spec.looped, "{uri}");
        }
    }

    #[test]
    fn heads_name_the_right_elements() {
        let head = |u: &str| source_head(&SourceUri::parse(u).unwrap());
        assert_eq!(head("rtsp://cam/s"), "rtspsrc location=\"rtsp://cam/s\" protocols=tcp latency=200 ! decodebin");
        assert!(head("rtsp://cam/s?transport=udp").contains("protocols=udp"));
        assert_eq!(head("csi://2"), "nvarguscamerasrc sensor-id=2 ! nvvidconv ! video/x-raw,format=I420");
        assert_eq!(head("v4l2:///dev/video1"), "v4l2src device=\"/dev/video1\" ! decodebin");
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
