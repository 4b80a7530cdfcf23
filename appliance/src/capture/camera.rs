//! One long-lived, retrying thread per camera. It owns its pipeline, rebuilds it after any fault
//! (ERROR, unexpected EOS, or silence caught by the frame watchdog) with capped exponential
//! backoff, and reports its state in [`CameraStats`]; nothing else restarts it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tokio_util::sync::CancellationToken;

use super::pipeline::{self, PipelineSpec, SINK_NAME, SRC_INFO_NAME};
use super::{CaptureError, Frame, FrameHub, SourceUri};

/// How long a streaming pipeline may stay silent before it is declared stalled.
const FRAME_WATCHDOG: Duration = Duration::from_secs(2);
/// A freshly started pipeline gets longer for its first frame (RTSP set-up, decoder start).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Streaming this long without a fault resets the backoff.
const HEALTHY_RESET: Duration = Duration::from_secs(30);
const PULL_TIMEOUT_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CameraState {
    Starting = 0,
    Streaming = 1,
    Backoff = 2,
    Finished = 3,
    Stopped = 4,
}

impl CameraState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Streaming,
            2 => Self::Backoff,
            3 => Self::Finished,
            _ => Self::Stopped,
        }
    }
}

/// Counters one camera thread updates and anyone may read.
#[derive(Debug)]
pub struct CameraStats {
    pub id: Arc<str>,
    state: AtomicU8,
    pub frames_in: AtomicU64,
    pub dropped_overwritten: AtomicU64,
    pub reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraStatsSnapshot {
    pub id: String,
    pub state: CameraState,
    pub frames_in: u64,
    pub dropped_overwritten: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

impl CameraStats {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            state: AtomicU8::new(CameraState::Starting as u8),
            frames_in: AtomicU64::new(0),
            dropped_overwritten: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn state(&self) -> CameraState {
        CameraState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, s: CameraState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    fn set_error(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_owned());
    }

    pub fn snapshot(&self) -> CameraStatsSnapshot {
        CameraStatsSnapshot {
            id: self.id.to_string(),
            state: self.state(),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            dropped_overwritten: self.dropped_overwritten.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// Why a pipeline run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// A finite source (a file played once) reached its end.
    Finished,
    Cancelled,
}

/// A running capture pipeline that hands out frames one at a time. Dropping it tears the
/// pipeline down to NULL.
pub struct FrameSource {
    camera: usize,
    camera_id: Arc<str>,
    spec: PipelineSpec,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    src_info: gst::Element,
    bus: gst::Bus,
    last_wall: SystemTime,
    started: Instant,
    last_frame: Option<Instant>,
}

impl FrameSource {
    /// Builds and starts the pipeline for `source`, letterboxing to `width`×`height`.
    pub fn start(
        camera: usize,
        camera_id: Arc<str>,
        source: &SourceUri,
        width: u32,
        height: u32,
    ) -> Result<Self, CaptureError> {
        let spec = pipeline::describe(source, width, height);
        let build_err = |message: String| CaptureError::Build { camera: camera_id.to_string(), message };
        let element = gst::parse::launch(&spec.description).map_err(|e| build_err(e.to_string()))?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| build_err("the description did not produce a pipeline".to_owned()))?;
        let sink = pipeline
            .by_name(SINK_NAME)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| build_err("no appsink in pipeline".to_owned()))?;
        let src_info = pipeline.by_name(SRC_INFO_NAME).ok_or_else(|| build_err("no source probe".to_owned()))?;
        let bus = pipeline.bus().ok_or_else(|| build_err("pipeline has no bus".to_owned()))?;
        let this = Self {
            camera,
            camera_id,
            spec,
            pipeline,
            sink,
            src_info,
            bus,
            last_wall: SystemTime::UNIX_EPOCH,
            started: Instant::now(),
            last_frame: None,
        };
        if let Err(e) = this.pipeline.set_state(gst::State::Playing) {
            // The bus usually says why (missing file, unknown codec); prefer its text.
            let why = this.bus_error().unwrap_or_else(|| e.to_string());
            return Err(this.stream_err(format!("cannot start: {why}")));
        }
        Ok(this)
    }

    pub fn description(&self) -> &str {
        &self.spec.description
    }

    fn stream_err(&self, message: String) -> CaptureError {
        CaptureError::Stream { camera: self.camera_id.to_string(), message }
    }

    fn bus_error(&self) -> Option<String> {
        let msg = self.bus.pop_filtered(&[gst::MessageType::Error])?;
        match msg.view() {
            gst::MessageView::Error(err) => {
                let source = err.src().map(|s| s.name().to_string()).unwrap_or_default();
                Some(match err.debug() {
                    Some(debug) => format!("{source}: {} ({debug})", err.error()),
                    None => format!("{source}: {}", err.error()),
                })
            }
            _ => None,
        }
    }

    /// Waits for the next frame. `Ok(Some)` is a frame, `Ok(None)` means try again (nothing yet,
    /// or cancelled: check the token), `Err` is a fault that needs a rebuild.
    pub fn next_frame(&mut self, seq: u64) -> Result<Option<Frame>, CaptureError> {
        if let Some(sample) = self.sink.try_pull_sample(gst::ClockTime::from_mseconds(PULL_TIMEOUT_MS)) {
            return self.make_frame(sample, seq).map(Some);
        }
        if let Some(e) = self.bus_error() {
            return Err(self.stream_err(e));
        }
        if self.sink.is_eos() {
            return Err(self.stream_err("stream ended (EOS)".to_owned()));
        }
        let (silent_for, limit) = match self.last_frame {
            Some(t) => (t.elapsed(), FRAME_WATCHDOG),
            None => (self.started.elapsed(), FIRST_FRAME_TIMEOUT),
        };
        if silent_for > limit {
            return Err(self.stream_err(format!("no frame for {:.1} s (stalled source)", silent_for.as_secs_f32())));
        }
        Ok(None)
    }

    /// True when the sink has seen the end of a finite stream.
    pub fn at_end(&self) -> bool {
        self.sink.is_eos()
    }

    pub fn is_finite(&self) -> bool {
        self.spec.finite
    }

    pub fn is_looped(&self) -> bool {
        self.spec.looped
    }

    /// Seeks a looped file back to its start.
    pub fn rewind(&mut self) -> Result<(), CaptureError> {
        self.pipeline
            .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO)
            .map_err(|e| self.stream_err(format!("cannot loop back to the start: {e}")))?;
        self.last_frame = Some(Instant::now());
        Ok(())
    }

    fn make_frame(&mut self, sample: gst::Sample, seq: u64) -> Result<Frame, CaptureError> {
        let now_mono = Instant::now();
        self.last_frame = Some(now_mono);
        // Wall-clock time of capture, kept monotone per camera so that a clock step backwards
        // (NTP) never makes event times go backwards.
        let now = SystemTime::now();
        self.last_wall = if now > self.last_wall { now } else { self.last_wall };

        let caps = sample.caps().ok_or_else(|| self.stream_err("sample without caps".to_owned()))?;
        let info =
            gst_video::VideoInfo::from_caps(caps).map_err(|e| self.stream_err(format!("unexpected caps: {e}")))?;
        let (source_width, source_height) = self
            .src_info
            .static_pad("src")
            .and_then(|p| p.current_caps())
            .and_then(|c| gst_video::VideoInfo::from_caps(&c).ok())
            .map(|i| (i.width(), i.height()))
            .unwrap_or((info.width(), info.height()));
        let buffer = sample.buffer_owned().ok_or_else(|| self.stream_err("sample without buffer".to_owned()))?;
        let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
        let pixels =
            buffer.into_mapped_buffer_readable().map_err(|_| self.stream_err("cannot map frame buffer".to_owned()))?;
        let stride = usize::try_from(info.stride()[0]).map_err(|_| self.stream_err("negative stride".to_owned()))?;
        Ok(Frame {
            camera: self.camera,
            camera_id: self.camera_id.clone(),
            seq,
            pts,
            captured_at: self.last_wall,
            captured_mono: now_mono,
            source_width,
            source_height,
            width: info.width(),
            height: info.height(),
            stride,
            pixels,
        })
    }
}

impl Drop for FrameSource {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Runs one camera until cancelled (or, for a file played once, until its end), rebuilding the
/// pipeline after every fault. Frames go to `hub`; state and counters to `stats`.
pub fn spawn_camera(
    camera: usize,
    source: SourceUri,
    size: (u32, u32),
    hub: Arc<FrameHub>,
    cancel: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let stats = hub.stats()[camera].clone();
    std::thread::Builder::new()
        .name(format!("cam-{}", stats.id))
        .spawn(move || supervise(camera, &source, size, &hub, &stats, &cancel))
}

fn supervise(
    camera: usize,
    source: &SourceUri,
    (width, height): (u32, u32),
    hub: &FrameHub,
    stats: &CameraStats,
    cancel: &CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut seq = 0u64;
    while !cancel.is_cancelled() {
        stats.set_state(CameraState::Starting);
        let started = Instant::now();
        let outcome = FrameSource::start(camera, stats.id.clone(), source, width, height)
            .and_then(|mut src| pump(&mut src, &mut seq, hub, stats, cancel));
        match outcome {
            Ok(SourceEnd::Finished) => {
                tracing::info!(camera = %stats.id, frames = seq, "source finished");
                stats.set_state(CameraState::Finished);
                return;
            }
            Ok(SourceEnd::Cancelled) => break,
            Err(e) => {
                if started.elapsed() > HEALTHY_RESET {
                    backoff = BACKOFF_MIN;
                }
                let text = e.to_string();
                stats.set_error(&text);
                stats.set_state(CameraState::Backoff);
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                let wait = jitter(backoff);
                tracing::warn!(camera = %stats.id, error = %text, retry_in_ms = wait.as_millis() as u64, "camera fault");
                if sleep_or_cancel(wait, cancel) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    stats.set_state(CameraState::Stopped);
}

fn pump(
    src: &mut FrameSource,
    seq: &mut u64,
    hub: &FrameHub,
    stats: &CameraStats,
    cancel: &CancellationToken,
) -> Result<SourceEnd, CaptureError> {
    tracing::info!(camera = %stats.id, pipeline = %src.description(), "pipeline started");
    loop {
        if cancel.is_cancelled() {
            return Ok(SourceEnd::Cancelled);
        }
        match src.next_frame(*seq) {
            Ok(Some(frame)) => {
                if stats.state() != CameraState::Streaming {
                    stats.set_state(CameraState::Streaming);
                }
                *seq += 1;
                stats.frames_in.fetch_add(1, Ordering::Relaxed);
                hub.put(frame);
            }
            Ok(None) => {}
            Err(_) if src.at_end() && src.is_finite() => return Ok(SourceEnd::Finished),
            Err(_) if src.at_end() && src.is_looped() => src.rewind()?,
            Err(e) => return Err(e),
        }
    }
}

/// ±20 % jitter so that many cameras failing together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    let factor = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
    d.mul_f64(factor)
}

/// Sleeps for `d` unless cancelled first; returns true if cancelled.
fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if cancel.is_cancelled() {
            return true;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    cancel.is_cancelled()
}
