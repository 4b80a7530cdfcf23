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
use vigil_pipeline::queue::EventSender;
use vigil_pipeline::scheduler::{ms, Scheduler, SchedulerStats, SnapshotRequests};
use vigil_pipeline::{CameraEvents, FrameInfo};

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
}

/// How often open events are checked for expiry while a camera delivers no frame.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

impl Worker {
    /// Runs on the calling (dedicated) thread until `cancel` or the hub closes; then ends the
    /// events still open (reason `shutdown`).
    pub fn run(mut self, cancel: &CancellationToken) {
        if let Err(e) = self.scheduler.warm_up() {
            tracing::error!(error = %e, "warm-up inference failed; costs will be learnt from live frames");
        }
        if let Some(e) = self.scheduler.policy().cost.estimate(self.scheduler.stages().backend_name(), 1) {
            tracing::info!(
                backend = self.scheduler.stages().backend_name(),
                mean_ms = ms(e.mean()),
                planned_ms = ms(e.predict()),
                "inference cost measured"
            );
        }
        let mut last_expiry = self.clock.now();
        while !cancel.is_cancelled() {
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
            for done in self.scheduler.step(&self.hub) {
                let f = &done.frame;
                let info = FrameInfo {
                    seq: f.seq,
                    pts_ns: f.pts.map(|p| p.as_nanos() as u64),
                    captured_at_ns: unix_ns(f.captured_at),
                    mono_ns: mono_ns(f.captured_mono),
                    width: f.source_width,
                    height: f.source_height,
                };
                let image = SourceImage {
                    pixels: f.image(),
                    width: f.width,
                    height: f.height,
                    letterbox: Letterbox::new(f.source_width, f.source_height, f.width, f.height),
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
