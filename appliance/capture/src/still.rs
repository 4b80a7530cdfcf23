//! One decoded frame of a picture or a clip, at its own size, as tight RGBA: what `vigil model
//! pack` computes a bundle's reference tensors from. Any format GStreamer decodes (JPEG, PNG,
//! MP4/H.264, ...).

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// A decoded frame: `width`×`height`, 4 bytes per pixel, rows without padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Still {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

/// Frame `index` (0: the first) of the picture or clip at `path`.
pub fn decode_frame(path: &Path, index: u64) -> Result<Still, String> {
    let mut found = None;
    let seen = each_frame(path, |i, still| {
        if i == index {
            found = Some(still);
            return Ok(false);
        }
        Ok(true)
    })?;
    found.ok_or_else(|| format!("{} has {seen} frames; frame {index} does not exist", path.display()))
}

/// Calls `f` with each decoded frame of `path` and its index, in order, while it returns
/// `Ok(true)`. Returns the number of frames decoded.
pub fn each_frame(path: &Path, mut f: impl FnMut(u64, Still) -> Result<bool, String>) -> Result<u64, String> {
    gst::init().map_err(|e| format!("GStreamer could not start: {e}"))?;
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    let location = path.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    let description = format!(
        "filesrc location=\"{location}\" ! decodebin ! videoconvert ! video/x-raw,format=RGBA ! \
         appsink name=sink sync=false max-buffers=1"
    );
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| format!("cannot build a decoder: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| "no appsink".to_owned())?;
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    let mut seen = 0u64;
    let result = loop {
        match sink.try_pull_sample(gst::ClockTime::from_seconds(20)) {
            Some(sample) => {
                let go_on = still_of(&sample).and_then(|still| f(seen, still));
                seen += 1;
                match go_on {
                    Ok(true) => {}
                    Ok(false) => break Ok(seen),
                    Err(e) => break Err(e),
                }
            }
            None => {
                let why = pipeline.bus().and_then(|b| b.pop_filtered(&[gst::MessageType::Error])).and_then(|m| match m
                    .view()
                {
                    gst::MessageView::Error(e) => Some(e.error().to_string()),
                    _ => None,
                });
                break match why {
                    Some(e) => Err(format!("cannot decode {}: {e}", path.display())),
                    None => Ok(seen),
                };
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn still_of(sample: &gst::Sample) -> Result<Still, String> {
    let caps = sample.caps().ok_or("a frame without caps")?;
    let info = gstreamer_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    let buffer = sample.buffer().ok_or("a frame without data")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    let (w, h) = (info.width(), info.height());
    let stride = info.stride()[0] as usize;
    let mut rgba = Vec::with_capacity(w as usize * h as usize * 4);
    for row in 0..h as usize {
        rgba.extend_from_slice(&map[row * stride..row * stride + w as usize * 4]);
    }
    Ok(Still { width: w, height: h, rgba })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/clips/shapes-eval.mp4")
    }

    #[test]
    fn a_clip_frame_is_decoded_at_its_own_size() {
        let first = decode_frame(&clip(), 0).unwrap();
        assert_eq!(first.rgba.len(), (first.width * first.height * 4) as usize);
        assert!(first.width >= 320 && first.height >= 240, "{}x{}", first.width, first.height);
        let later = decode_frame(&clip(), 30).unwrap();
        assert_ne!(first.rgba, later.rgba, "another frame");
    }

    #[test]
    fn missing_files_and_frames_are_named() {
        let e = decode_frame(Path::new("/nonexistent.png"), 0).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let e = decode_frame(&clip(), 1_000_000).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
