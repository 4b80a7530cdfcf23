//! One running camera pipeline ([`FrameSource`]): built from a camera's plan, pulled frame by
//! frame, torn down on drop; and the probe that finds a stream's codec and size. The supervisor
//! (`supervise.rs`) runs one after another.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use vigil_core::clock::mono_epoch;
use vigil_core::codec::Codec;
use vigil_core::stats::CameraStats;
use vigil_core::wallclock::WallClock;

use crate::gate::Gate;
use crate::pipeline::{self, PipelineSpec, Plan, DECODER_NAME, SINK_NAME, SOURCE_NAME};
use crate::platform::Platform;
use crate::spec::{CameraSpec, Supervision};
use crate::timing::{FrameTiming, Sequencer};
use crate::{CaptureError, Frame};

const PULL_TIMEOUT_MS: u64 = 100;
/// A capture older than this when pulled means the timestamps are not capture times (a file
/// decoded faster than real time): pull time is used instead.
const MAX_PIPELINE_AGE: Duration = Duration::from_secs(5);

/// Sets RTSP credentials as element properties: never written into a description or a log.
fn set_credentials(spec: &CameraSpec, pipeline: &gst::Bin) {
    if let Some(src) = pipeline.by_name(SOURCE_NAME) {
        if let Some(user) = &spec.user {
            src.set_property("user-id", user);
        }
        if let Some(password) = &spec.password {
            src.set_property("user-pw", password.expose());
        }
    }
}

/// Why a fault happened; it decides the state shown and what the next start changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The watchdog fired: no frame for too long.
    Stalled,
    /// ERROR or unexpected EOS.
    Failed,
    /// The decoder itself failed: the next start tries the next decoder.
    Decoder,
    /// Caps did not negotiate (the stream changed codec or size): probe again.
    Negotiation,
}

/// Why a pipeline run ended without a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// A finite source (a file played once) reached its end.
    Finished,
    Cancelled,
    /// A restart was requested.
    Restart,
}

/// Per-camera time keeping that outlives pipeline rebuilds.
#[derive(Debug, Default)]
pub struct Timeline {
    wall: WallClock,
    seq: Sequencer,
}

/// What a probe learnt about a source before its pipeline is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub codec: Codec,
    pub size: Option<(u32, u32)>,
}

/// Finds the codec and frame size of a source by parsing (not decoding) its start.
pub fn probe(spec: &CameraSpec, timeout: Duration) -> Result<StreamInfo, CaptureError> {
    let fail = |message: String| CaptureError::Stream { camera: spec.id.to_string(), message, kind: FaultKind::Failed };
    let Some(description) = pipeline::probe_description(&spec.source) else {
        let codec = pipeline::implied_codec(&spec.source).unwrap_or(Codec::Raw);
        return Ok(StreamInfo { codec, size: pipeline::known_size(&spec.source) });
    };
    let pipe = gst::parse::launch(&description)
        .map_err(|e| fail(format!("cannot build probe: {e}")))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| fail("probe is not a pipeline".into()))?;
    set_credentials(spec, pipe.upcast_ref());
    let found: Arc<Mutex<Option<StreamInfo>>> = Arc::default();
    if let Some(parsebin) =
        pipe.iterate_elements().into_iter().flatten().find(|e| e.factory().is_some_and(|f| f.name() == "parsebin"))
    {
        let found = found.clone();
        parsebin.connect_pad_added(move |_, pad| {
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let Some(s) = caps.structure(0) else { return };
            if let Some(codec) = Codec::from_caps_name(s.name()) {
                let size = match (s.get::<i32>("width"), s.get::<i32>("height")) {
                    (Ok(w), Ok(h)) if w > 0 && h > 0 => Some((w as u32, h as u32)),
                    _ => None,
                };
                let mut f = found.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert(StreamInfo { codec, size });
            }
        });
    }
    let bus = pipe.bus().ok_or_else(|| fail("probe has no bus".into()))?;
    let _ = pipe.set_state(gst::State::Playing);
    let deadline = Instant::now() + timeout;
    let result = loop {
        if let Some(info) = *found.lock().unwrap_or_else(|p| p.into_inner()) {
            break Ok(info);
        }
        if Instant::now() >= deadline {
            break Err(fail(format!("could not learn the codec within {} s", timeout.as_secs_f32())));
        }
        if let Some(msg) = bus.timed_pop_filtered(gst::ClockTime::from_mseconds(50), &[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                break Err(fail(error_text(e)));
            }
        }
    };
    let _ = pipe.set_state(gst::State::Null);
    result
}

fn error_text(err: &gst::message::Error) -> String {
    let source = err.src().map(|s| s.name().to_string()).unwrap_or_default();
    match err.debug() {
        Some(debug) => format!("{source}: {} ({debug})", err.error()),
        None => format!("{source}: {}", err.error()),
    }
}

/// A running capture pipeline that hands out frames one at a time. Dropping it tears the
/// pipeline down to NULL.
pub struct FrameSource {
    camera: usize,
    camera_id: Arc<str>,
    spec: PipelineSpec,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    bus: gst::Bus,
    gate: Option<Arc<Gate>>,
    stats: Arc<CameraStats>,
    watchdog: Supervision,
    run: u64,
    started: Instant,
    first_frame: Option<Instant>,
    last_frame: Option<Instant>,
}

impl FrameSource {
    /// Probes `source` and starts it with this machine's preferred decoder: for tools and tests
    /// that want frames without a supervising thread.
    pub fn open(spec: &CameraSpec, platform: &Platform) -> Result<Self, CaptureError> {
        let info = match spec.known_info() {
            Some(info) => info,
            None => probe(spec, spec.supervision.first_frame_timeout)?,
        };
        let plan = spec.plan(platform, info, 0)?;
        Self::start(spec, &plan, platform, 1, Arc::new(CameraStats::new(&spec.id)))
    }

    /// Builds and starts the pipeline for `spec` under `plan`.
    pub fn start(
        spec: &CameraSpec,
        plan: &Plan,
        platform: &Platform,
        run: u64,
        stats: Arc<CameraStats>,
    ) -> Result<Self, CaptureError> {
        let build_err = |message: String| CaptureError::Build { camera: spec.id.to_string(), message };
        let pspec = pipeline::describe(&spec.source, plan, platform).map_err(build_err)?;
        let element = gst::parse::launch(&pspec.description).map_err(|e| build_err(e.to_string()))?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| build_err("the description did not produce a pipeline".to_owned()))?;
        set_credentials(spec, pipeline.upcast_ref());
        let sink = pipeline
            .by_name(SINK_NAME)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| build_err("no appsink in pipeline".to_owned()))?;
        let bus = pipeline.bus().ok_or_else(|| build_err("pipeline has no bus".to_owned()))?;
        let gate = pipeline.by_name(DECODER_NAME).and_then(|d| Gate::install(&d, stats.clone()));
        let this = Self {
            camera: spec.index,
            camera_id: spec.id.clone(),
            spec: pspec,
            pipeline,
            sink,
            bus,
            gate,
            stats,
            watchdog: spec.supervision,
            run,
            started: Instant::now(),
            first_frame: None,
            last_frame: None,
        };
        if let Err(e) = this.pipeline.set_state(gst::State::Playing) {
            // The bus usually says why (missing file, unknown codec); prefer its text.
            let (kind, why) = match this.bus_fault() {
                Some((kind, text)) => (kind, text),
                None => (FaultKind::Failed, e.to_string()),
            };
            return Err(this.fault(kind, format!("cannot start: {why}")));
        }
        Ok(this)
    }

    pub fn description(&self) -> &str {
        &self.spec.description
    }

    /// How long this run has delivered frames, if it has.
    pub fn streamed_for(&self) -> Option<Duration> {
        self.first_frame.map(|t| t.elapsed())
    }

    fn fault(&self, kind: FaultKind, message: String) -> CaptureError {
        CaptureError::Stream { camera: self.camera_id.to_string(), message, kind }
    }

    /// Drains the bus: decoder warnings count as damage; the first error becomes a fault.
    fn bus_fault(&self) -> Option<(FaultKind, String)> {
        while let Some(msg) = self.bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Warning]) {
            let from_decoder = msg.src().is_some_and(|s| s.path_string().contains(DECODER_NAME));
            match msg.view() {
                gst::MessageView::Error(err) => {
                    let text = error_text(err);
                    // A depayloader, parser or decoder refusing the data: the stream is damaged.
                    if matches!(
                        err.error().kind::<gst::StreamError>(),
                        Some(gst::StreamError::Decode | gst::StreamError::Format | gst::StreamError::Demux)
                    ) {
                        self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let kind = if text.contains("not-negotiated") || text.contains("not negotiated") {
                        FaultKind::Negotiation
                    } else if from_decoder {
                        FaultKind::Decoder
                    } else {
                        FaultKind::Failed
                    };
                    return Some((kind, text));
                }
                gst::MessageView::Warning(w) => {
                    tracing::debug!(camera = %self.camera_id, warning = %w.error(), "pipeline warning");
                    if from_decoder {
                        if let Some(g) = &self.gate {
                            g.damage();
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Waits for the next frame. `Ok(Some)` is a frame, `Ok(None)` means try again (nothing yet),
    /// `Err` is a fault that needs a rebuild.
    pub fn next_frame(&mut self, timeline: &mut Timeline) -> Result<Option<Frame>, CaptureError> {
        let sample = self.sink.try_pull_sample(gst::ClockTime::from_mseconds(PULL_TIMEOUT_MS));
        if let Some((kind, text)) = self.bus_fault() {
            return Err(self.fault(kind, text));
        }
        if let Some(sample) = sample {
            return self.make_frame(sample, timeline).map(Some);
        }
        if self.sink.is_eos() {
            return Err(self.fault(FaultKind::Failed, "stream ended (EOS)".to_owned()));
        }
        let (silent_for, limit) = match self.last_frame {
            Some(t) => (t.elapsed(), self.watchdog.watchdog),
            None => (self.started.elapsed(), self.watchdog.first_frame_timeout),
        };
        if silent_for > limit {
            let what = if self.last_frame.is_some() { "no frame" } else { "no first frame" };
            return Err(self
                .fault(FaultKind::Stalled, format!("{what} for {:.1} s (stalled source)", silent_for.as_secs_f32())));
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
            .map_err(|e| self.fault(FaultKind::Failed, format!("cannot loop back to the start: {e}")))?;
        self.last_frame = Some(Instant::now());
        Ok(())
    }

    /// How long ago (on the pipeline clock) the frame in `sample` was captured; zero when its
    /// timestamps do not tell (no clock yet, or a file decoded faster than real time).
    fn pipeline_age(&self, sample: &gst::Sample, pts: Option<gst::ClockTime>) -> Duration {
        let running = sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>())
            .zip(pts)
            .and_then(|(segment, pts)| segment.to_running_time(pts));
        let (Some(running), Some(base), Some(clock)) = (running, self.pipeline.base_time(), self.pipeline.clock())
        else {
            return Duration::ZERO;
        };
        let now = clock.time();
        let captured = base + running;
        match now.checked_sub(captured) {
            Some(age) if Duration::from(age) <= MAX_PIPELINE_AGE => age.into(),
            _ => Duration::ZERO,
        }
    }

    fn make_frame(&mut self, sample: gst::Sample, timeline: &mut Timeline) -> Result<Frame, CaptureError> {
        let now_mono = Instant::now();
        // Asked before the wall clock is read: a sync between the two would vouch for a time
        // read before it.
        let wall_trusted = vigil_core::clock::wall_clock_trusted();
        let now_wall = SystemTime::now();
        self.last_frame = Some(now_mono);
        self.first_frame.get_or_insert(now_mono);
        let bad = |m: &str| self.fault(FaultKind::Failed, m.to_owned());

        let caps = sample.caps().ok_or_else(|| bad("sample without caps"))?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| bad(&format!("unexpected caps: {e}")))?;
        let buffer = sample.buffer().ok_or_else(|| bad("sample without buffer"))?;
        let pts = buffer.pts();

        // Capture time: the frame's age on the pipeline clock, taken off both clocks read now.
        let age = self.pipeline_age(&sample, pts);
        let captured_mono = now_mono.checked_sub(age).unwrap_or(now_mono);
        let since_epoch = |t: Instant| t.saturating_duration_since(mono_epoch()).as_nanos() as i128;
        let wall_now = now_wall.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        let steps_before = timeline.wall.steps();
        let wall = timeline.wall.map(since_epoch(captured_mono), since_epoch(now_mono), wall_now);
        if timeline.wall.steps() > steps_before {
            self.stats.clock_steps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(camera = %self.camera_id, "wall clock stepped; capture times kept monotonic");
        }
        let captured_at = SystemTime::UNIX_EPOCH + Duration::from_nanos(wall.max(0) as u64);

        let interval = (info.fps().numer() > 0)
            .then(|| Duration::from_secs_f64(info.fps().denom() as f64 / info.fps().numer() as f64));
        let previous = timeline.seq.last();
        let seq = timeline.seq.next(FrameTiming {
            pts: pts.map(Duration::from),
            mono: captured_mono.saturating_duration_since(mono_epoch()),
            run: self.run,
            interval,
            live: self.spec.live,
        });
        // Sequence numbers only ever grow by at least one.
        let missing = previous.map_or(0, |last| seq - last - 1);
        if missing > 0 {
            self.stats.frames_missing.fetch_add(missing, Ordering::Relaxed);
        }

        let buffer = sample.buffer_owned().ok_or_else(|| bad("sample without buffer"))?;
        let pixels = buffer.into_mapped_buffer_readable().map_err(|_| bad("cannot map frame buffer"))?;
        let stride = usize::try_from(info.stride()[0]).map_err(|_| bad("negative stride"))?;
        Ok(Frame {
            camera: self.camera,
            camera_id: self.camera_id.clone(),
            seq,
            pts: pts.map(Duration::from),
            captured_at,
            wall_trusted,
            captured_mono,
            width: info.width(),
            height: info.height(),
            stride,
            layout: self.spec.layout,
            pixels,
        })
    }
}

impl Drop for FrameSource {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
