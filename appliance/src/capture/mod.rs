//! Cameras: one supervised GStreamer pipeline per camera, pulled on its own thread into a
//! latest-frame slot that the inference scheduler takes from.

mod camera;
mod hub;
pub mod pipeline;
mod source;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;

pub use camera::{spawn_camera, CameraState, CameraStats, CameraStatsSnapshot, FrameSource, SourceEnd};
pub use hub::FrameHub;
pub use source::{Pace, RtspTransport, SourceUri, UriError};

/// Initialises GStreamer once; every entry point calls this before building pipelines.
pub fn init_gstreamer() -> Result<(), CaptureError> {
    gst::init().map_err(|e| CaptureError::Init(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("GStreamer could not start: {0}; install the GStreamer runtime (see README)")]
    Init(String),
    #[error("camera `{camera}`: cannot build pipeline: {message}")]
    Build { camera: String, message: String },
    #[error("camera `{camera}`: {message}")]
    Stream { camera: String, message: String },
}

/// One decoded, letterboxed RGB frame.
///
/// The pixels stay in the GStreamer buffer they were decoded into (mapped read-only, no copy);
/// dropping the frame returns the buffer to its pool.
pub struct Frame {
    /// Index of the camera in the configuration (the hub's slot).
    pub camera: usize,
    pub camera_id: Arc<str>,
    /// Per-camera counter of frames pulled from the pipeline; gaps mean frames were lost upstream
    /// of the slot (never across a rebuild: it keeps counting).
    pub seq: u64,
    /// Presentation timestamp from the stream, if it had one.
    pub pts: Option<Duration>,
    /// Wall-clock capture time (UTC); never goes backwards for one camera.
    pub captured_at: SystemTime,
    /// Monotonic capture instant: budgets and ages are measured from here.
    pub captured_mono: Instant,
    /// Size of the frame before letterboxing.
    pub source_width: u32,
    pub source_height: u32,
    /// Size of the RGB image in `pixels` (the model's input size).
    pub width: u32,
    pub height: u32,
    /// Bytes per row in `pixels` (GStreamer pads rows to 4 bytes).
    pub stride: usize,
    pub pixels: gst::buffer::MappedBuffer<gst::buffer::Readable>,
}

impl Frame {
    pub fn rgb(&self) -> &[u8] {
        self.pixels.as_slice()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("camera_id", &self.camera_id)
            .field("seq", &self.seq)
            .field("pts", &self.pts)
            .field("size", &(self.width, self.height))
            .field("source", &(self.source_width, self.source_height))
            .finish_non_exhaustive()
    }
}
