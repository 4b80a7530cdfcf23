//! The production worker: the detector on the real clock, on the camera frames, its results
//! turned into events for the store writer. The scheduler's thread runs it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil_capture::{Frame, FrameImage};
use vigil_core::clock::{mono_ns, Clock};
use vigil_core::event::{unix_ns, Emitted, EndReason, Phase};
use vigil_core::geometry::Letterbox;
use vigil_core::hub::FrameHub;
use vigil_core::picture::SourceImage;
use vigil_infer::Detector;
use vigil_pipeline::canary::Recorder;
use vigil_pipeline::queue::EventSender;
use vigil_pipeline::scheduler::{ms, Scheduler, SchedulerStats, SnapshotRequests};
use vigil_pipeline::{CameraEvents, FrameInfo};
use vigil_update::{Swap, Swapped};

/// The production worker: the detector on the real clock, its results turned into events for
/// the store writer.
pub struct Worker {
    pub hub: Arc<FrameHub<Frame>>,
    pub scheduler: Scheduler<Frame, Detector>,
    /// The event state of each camera, by the camera's index.
    pub cameras: Vec<CameraEvents>,
    pub stats: Arc<SchedulerStats>,
    /// Event messages (with their pictures) for the store writer: bounded by batches and by
    /// picture bytes (see `vigil_pipeline::queue` for what is shed and when this worker waits).
    pub events: EventSender,
    /// Asks for a camera's next processed frame as JPEG (the `snapshot` command).
    pub snapshots: SnapshotRequests,
    /// The clocks (the scheduler's): expiry is timed on the monotonic clock.
    pub clock: Arc<dyn Clock>,
    /// Models warmed by the updater, put in place between two rounds.
    pub swaps: std::sync::mpsc::Receiver<Swap>,
    /// Each frame's outcome, for the canary after a model update.
    pub canary: Arc<std::sync::Mutex<Recorder>>,
}

/// A swap whose cost in frames is still being counted: answered after the first round of the
/// new model.
struct SwapInFlight {
    old: Detector,
    lost_before: u64,
    /// When the swap was made: with no frame to serve (cameras down) it is answered after
    /// [`SWAP_ANSWER_WITHIN`] all the same.
    at: std::time::Instant,
    done: tokio::sync::oneshot::Sender<Swapped>,
}

/// The longest a swap waits for the new model's first round before it is answered.
const SWAP_ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// How often open events are checked for expiry while a camera delivers no frame.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// Runs the model's first inferences and learns their cost, before the scheduler serves a frame.
/// A first inference can be slow (a cold TensorRT engine, a slow board): the caller runs this
/// before READY, while the start deadline is extended, so that the watchdog never waits on it.
pub fn warm_up(scheduler: &mut Scheduler<Frame, Detector>) {
    let started = std::time::Instant::now();
    if let Err(e) = scheduler.warm_up() {
        tracing::error!(error = %e, "warm-up inference failed; costs will be learnt from live frames");
    }
    let key = <Detector as vigil_pipeline::scheduler::Stages<Frame>>::cost_key(scheduler.stages());
    if let Some(e) = scheduler.policy().cost.estimate(key, 1) {
        tracing::info!(
            model = key,
            mean_ms = ms(e.mean()),
            planned_ms = ms(e.predict()),
            warm_up_ms = ms(started.elapsed()),
            "inference cost measured"
        );
    }
}

impl Worker {
    /// Runs on the calling (dedicated) thread until `cancel` or the hub closes; then ends the
    /// events still open (reason `shutdown`).
    pub fn run(mut self, cancel: &CancellationToken) {
        let mut last_expiry = self.clock.now();
        let mut in_flight: Option<SwapInFlight> = None;
        let mut counted = self.outcomes();
        while !cancel.is_cancelled() {
            self.stats.turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(swap) = self.swaps.try_recv() {
                let ended = self.swap(swap, &mut in_flight);
                if !self.send(ended) {
                    return;
                }
            }
            if in_flight
                .as_ref()
                .is_some_and(|s| self.clock.now().saturating_duration_since(s.at) >= SWAP_ANSWER_WITHIN)
            {
                self.answer(in_flight.take());
            }
            if self.clock.now().saturating_duration_since(last_expiry) >= EXPIRE_EVERY {
                last_expiry = self.clock.now();
                let now = mono_ns(last_expiry);
                let ended: Vec<Emitted> = self.cameras.iter_mut().flat_map(|c| c.expire(now)).collect();
                if !self.send(ended) {
                    return;
                }
            }
            if !self.hub.wait(Duration::from_millis(100)) {
                if self.hub.is_closed() {
                    break;
                }
                continue;
            }
            let served = self.scheduler.step(&self.hub);
            self.record_canary(&served, &mut counted);
            if !served.is_empty() {
                self.answer(in_flight.take());
            }
            for done in served {
                let f = &done.frame;
                let info = FrameInfo {
                    seq: f.seq,
                    pts_ns: f.pts.map(|p| p.as_nanos() as u64),
                    captured_at_ns: unix_ns(f.captured_at),
                    mono_ns: mono_ns(f.captured_mono),
                    width: f.width,
                    height: f.height,
                    wall_trusted: f.wall_trusted,
                };
                // The event's picture at the model's resolution, as it always was.
                let (input_w, input_h) = self.scheduler.stages().input_size();
                let image = SourceImage {
                    pixels: f.image(),
                    width: f.width,
                    height: f.height,
                    letterbox: Letterbox::new(f.width, f.height, input_w, input_h),
                };
                self.snapshots.fulfil(f.camera, &info, &image);
                let emitted = match self.cameras.get_mut(f.camera) {
                    Some(cam) => cam.observe(&info, &done.detections, Some(image)),
                    None => Vec::new(),
                };
                drop(done); // return the buffer to GStreamer's pool before waiting on the writer
                if !self.send(emitted) {
                    return;
                }
            }
        }
        let ended: Vec<Emitted> = self.cameras.iter_mut().flat_map(|c| c.finish(EndReason::Shutdown)).collect();
        self.send(ended);
    }

    /// Puts `swap`'s model in place (between two rounds): the events the old model opened end
    /// (`model_changed`), the cameras take the new event state, the canary counts apart from
    /// here. Returns the ended events.
    fn swap(&mut self, swap: Swap, in_flight: &mut Option<SwapInFlight>) -> Vec<Emitted> {
        let lost_before = self.lost();
        let Swap { detector, costs, cameras, budgets, done } = swap;
        let mut ended: Vec<Emitted> = self.cameras.iter_mut().flat_map(|c| c.finish(EndReason::ModelChanged)).collect();
        ended.sort_by(|a, b| a.event.id.cmp(&b.event.id));
        self.cameras = cameras;
        let old = self.scheduler.swap(detector, &costs, budgets);
        {
            let mut canary = self.canary.lock().unwrap_or_else(|p| p.into_inner());
            let baseline = canary.recent();
            canary.start_canary(baseline);
        }
        tracing::info!(
            backend = self.scheduler.stages().backend_name(),
            ended = ended.len(),
            "model swapped in between two rounds"
        );
        let earlier = in_flight.replace(SwapInFlight { old, lost_before, at: self.clock.now(), done });
        // Two swaps before a frame was served: the first is answered now.
        self.answer(earlier);
        ended
    }

    /// Hands the old model back to the updater, with the frames lost since the swap.
    fn answer(&self, swap: Option<SwapInFlight>) {
        if let Some(s) = swap {
            let frames_lost = self.lost().saturating_sub(s.lost_before);
            let _ = s.done.send(Swapped { old: s.old, frames_lost });
        }
    }

    /// Frames lost so far, however: overwritten while waiting, stale, late, failed.
    fn lost(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let overwritten: u64 = self.hub.stats().iter().map(|c| c.dropped_overwritten.load(Relaxed)).sum();
        overwritten + self.stats.dropped_stale() + self.stats.deadline_misses() + self.stats.dropped_error()
    }

    /// (deadline misses, errors) so far.
    fn outcomes(&self) -> (u64, u64) {
        (self.stats.deadline_misses(), self.stats.dropped_error())
    }

    /// Records a round's frames, misses and errors for the canary.
    fn record_canary(&self, served: &[vigil_pipeline::scheduler::Done<Frame>], counted: &mut (u64, u64)) {
        let now = self.outcomes();
        let mut canary = self.canary.lock().unwrap_or_else(|p| p.into_inner());
        canary.deadline_misses(now.0.saturating_sub(counted.0));
        canary.errors(now.1.saturating_sub(counted.1));
        *counted = now;
        for done in served {
            canary.frame(done.detections.iter().map(|d| d.score));
        }
    }

    /// Hands messages to the writer; false when it is gone (shutting down).
    fn send(&self, batch: Vec<Emitted>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let started = batch.iter().filter(|m| m.event.phase == Phase::New).count();
        self.stats.events.fetch_add(started as u64, std::sync::atomic::Ordering::Relaxed);
        let sent = self.events.send_blocking(batch);
        self.stats.pictures_shed.store(self.events.shed(), std::sync::atomic::Ordering::Relaxed);
        sent
    }
}
