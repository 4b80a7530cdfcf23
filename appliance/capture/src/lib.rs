//! Cameras: one supervised GStreamer pipeline per camera, pulled on its own thread into a
//! latest-frame slot that the inference scheduler takes from.

mod camera;
mod gate;
pub mod pipeline;
pub mod platform;
mod recovery;
mod resolve;
mod spec;
pub mod still;
mod supervise;
mod timing;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;

pub use camera::{probe, FaultKind, FrameSource, SourceEnd, StreamInfo, Timeline};
pub use platform::Platform;
pub use spec::{decode_threads, CameraSpec, Supervision};
pub use supervise::spawn_camera;
use vigil_core::hub::HubFrame;
pub use vigil_core::image::FrameImage;
use vigil_core::image::{Image, PixelLayout};

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
    Stream { camera: String, message: String, kind: FaultKind },
}

/// One decoded frame at its own size, packed RGB (RGBA out of `nvvidconv`).
///
/// The pixels stay in the GStreamer buffer they were decoded into (mapped read-only, no copy);
/// dropping the frame returns the buffer to its pool.
pub struct Frame {
    /// Index of the camera in the configuration (the hub's slot).
    pub camera: usize,
    pub camera_id: Arc<str>,
    /// Per-camera sequence number, kept across rebuilds. It counts the frames the source should
    /// have produced (from stream timestamps, and real time across an outage), so a gap means
    /// frames were lost: in an outage, before a keyframe, or in the latest-frame slot.
    pub seq: u64,
    /// Presentation timestamp from the stream, if it had one.
    pub pts: Option<Duration>,
    /// Wall-clock capture time (UTC), derived from the pipeline clock; never goes backwards for
    /// one camera, even when the system clock is stepped.
    pub captured_at: SystemTime,
    /// Whether the wall clock could be trusted when `captured_at` was read
    /// (`vigil_core::clock::wall_clock_trusted`, asked just before).
    pub wall_trusted: bool,
    /// Monotonic capture instant (the frame's age on the pipeline clock taken off the time it was
    /// pulled): budgets and ages are measured from here.
    pub captured_mono: Instant,
    /// The decoded size: the model's pre-processing letterboxes it, and detections are in its
    /// pixels.
    pub width: u32,
    pub height: u32,
    /// Bytes per row in `pixels` (GStreamer pads rows to 4 bytes).
    pub stride: usize,
    /// RGB, or RGBA where `nvvidconv` produced it.
    pub layout: PixelLayout,
    pub pixels: gst::buffer::MappedBuffer<gst::buffer::Readable>,
}

impl FrameImage for Frame {
    /// The pixels as the detector reads them.
    fn image(&self) -> Image<'_> {
        Image { data: self.pixels.as_slice(), stride: self.stride, bytes_per_pixel: self.layout.bytes_per_pixel() }
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

impl HubFrame for Frame {
    fn camera(&self) -> usize {
        self.camera
    }

    fn captured(&self) -> Instant {
        self.captured_mono
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("camera_id", &self.camera_id)
            .field("seq", &self.seq)
            .field("pts", &self.pts)
            .field("size", &(self.width, self.height))
            .finish_non_exhaustive()
    }
}
