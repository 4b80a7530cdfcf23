//! The inference worker under hard per-frame latency budgets.
//!
//! Each camera has a budget: capture → detections ready. A frame is processed within it or
//! dropped, never reported late. Every round the worker looks at the freshest waiting frame of
//! each camera, drops those that can no longer finish in budget, and runs the others (one, or a
//! batch where the engine takes one) in fair order: see [`policy`] for the rules. Predictions
//! come from a running estimate of the cost per backend and batch size, seeded by warm-up runs.
//! A frame that overran anyway (the prediction was wrong) is a *deadline miss*: counted, logged
//! with its breakdown, and its results discarded.
//!
//! The worker is generic over the frame, the clock and the stages that run a batch, so that the
//! same code is tested on a virtual clock with a backend whose costs are scripted (see
//! `tests.rs`) and runs in production on the monotonic clock with the real detector.

pub mod metrics;
pub mod policy;
#[cfg(test)]
mod tests;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use metrics::{CameraInferSnapshot, FrameTimes, Histogram, SchedulerStats};
pub use policy::{CostModel, Plan, Policy};
pub use vigil_core::clock::{Clock, ManualClock, SystemClock};

use vigil_core::geometry::Detection;
use vigil_core::hub::{FrameHub, HubFrame};
use vigil_core::picture::{SnapshotImage, SourceImage};

use crate::rules::FrameInfo;

/// What the worker runs on a batch: the detector in production, a scripted stand-in in tests.
/// Slots are the frames' places in the batch, 0-based.
pub trait Stages<F> {
    /// Why a stage failed (the backend's error).
    type Error: std::fmt::Display;
    /// What costs are estimated per: the model and the backend it runs on (two models on one
    /// backend cost differently, and a swapped-in model must not inherit the old one's costs).
    fn cost_key(&self) -> &str;
    /// The largest batch the engine takes.
    fn max_batch(&self) -> usize;
    fn preprocess(&mut self, slot: usize, frame: &F) -> Result<(), Self::Error>;
    /// Runs the model on slots `0..batch`.
    fn infer(&mut self, batch: usize) -> Result<(), Self::Error>;
    fn postprocess(&mut self, slot: usize, frame: &F) -> Vec<Detection>;
}

/// A frame that finished within its budget.
#[derive(Debug)]
pub struct Done<F> {
    pub frame: F,
    pub detections: Vec<Detection>,
    pub times: FrameTimes,
}

/// Warm-up inferences per batch size; the first is not counted (allocations, lazy init).
const WARM_UP_RUNS: usize = 4;

/// Engine costs of a set of stages, measured where they were warmed: on the scheduler's thread
/// before it starts, or on another thread while the current stages serve (a model about to be
/// swapped in).
#[derive(Debug, Clone, PartialEq)]
pub struct WarmCosts {
    key: String,
    /// (batch size, measured engine times)
    runs: Vec<(usize, Vec<Duration>)>,
}

/// Measures `stages` on whatever their input buffers hold, for batch sizes 1 and the largest,
/// so that the first real frame is planned with a known cost. `clock` times the runs.
pub fn measure<F, S: Stages<F>>(stages: &mut S, clock: &dyn Clock) -> Result<WarmCosts, S::Error> {
    let max = stages.max_batch().max(1);
    let sizes: &[usize] = if max > 1 { &[1, max] } else { &[1] };
    let mut runs = Vec::new();
    for &batch in sizes {
        let mut times = Vec::with_capacity(WARM_UP_RUNS - 1);
        for run in 0..WARM_UP_RUNS {
            let t0 = clock.now();
            stages.infer(batch)?;
            if run > 0 {
                times.push(clock.now() - t0);
            }
        }
        runs.push((batch, times));
    }
    Ok(WarmCosts { key: stages.cost_key().to_owned(), runs })
}
/// While every waiting frame is dropped because the predicted cost does not fit any budget, the
/// engine is re-measured this often ([`PROBE_RUNS`] runs on its idle input), so that a slowdown
/// that has passed (a throttled GPU, a busy CPU) stops locking cameras out. No frame is risked
/// on a probe.
const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_RUNS: usize = 3;

pub struct Scheduler<F, S> {
    stages: S,
    clock: Arc<dyn Clock>,
    policy: Policy,
    stats: Arc<SchedulerStats>,
    pending: Vec<(usize, Instant)>,
    /// When the cost was last measured (a batch or a probe).
    last_measured: Option<Instant>,
    /// Per camera: warned that the predicted cost exceeds its whole budget (until served again).
    over_budget: Vec<bool>,
    /// Pre- plus post-processing time per frame, learnt from real batches.
    per_frame_overhead: policy::Smoothed,
    _frames: PhantomData<fn(F)>,
}

impl<F: HubFrame, S: Stages<F>> Scheduler<F, S> {
    /// `budgets[i]` is camera `i`'s budget; `stats` has one entry per camera.
    pub fn new(stages: S, budgets: Vec<Duration>, clock: Arc<dyn Clock>, stats: Arc<SchedulerStats>) -> Self {
        assert_eq!(budgets.len(), stats.cameras.len(), "one budget per camera");
        let cameras = budgets.len();
        Self {
            stages,
            clock,
            policy: Policy::new(budgets),
            stats,
            pending: Vec::new(),
            last_measured: None,
            over_budget: vec![false; cameras],
            per_frame_overhead: policy::Smoothed::default(),
            _frames: PhantomData,
        }
    }

    pub fn stages(&self) -> &S {
        &self.stages
    }

    pub fn into_stages(self) -> S {
        self.stages
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Measures the engine before the first round (see [`measure`]).
    pub fn warm_up(&mut self) -> Result<(), S::Error> {
        let costs = measure(&mut self.stages, self.clock.as_ref())?;
        self.learn(&costs);
        Ok(())
    }

    fn learn(&mut self, costs: &WarmCosts) {
        for (batch, times) in &costs.runs {
            for t in times {
                let cost = *t + self.per_frame_overhead.get() * *batch as u32;
                self.policy.cost.record(&costs.key, *batch, cost);
            }
        }
        self.last_measured = Some(self.clock.now());
    }

    /// Puts `new` in place of the current stages, between two rounds: it serves from the next
    /// one, planned with `costs` (measured on it while the current stages served, see
    /// [`measure`]), so that no frame waits for a warm-up and none is planned on the old model's
    /// costs, and under `budgets` (one per camera: the new bundle's where a camera has none of
    /// its own). Returns the stages it replaced (kept, warm, for a rollback).
    pub fn swap(&mut self, new: S, costs: &WarmCosts, budgets: Vec<Duration>) -> S {
        self.learn(costs);
        self.policy.set_budgets(budgets);
        self.over_budget.fill(false);
        std::mem::replace(&mut self.stages, new)
    }

    fn probe(&mut self) {
        let mut samples = [Duration::ZERO; PROBE_RUNS];
        for sample in &mut samples {
            let t0 = self.clock.now();
            if let Err(e) = self.stages.infer(1) {
                tracing::error!(error = %e, "probe inference failed");
                return;
            }
            *sample = self.clock.now() - t0 + self.per_frame_overhead.get();
        }
        let backend = self.stages.cost_key().to_owned();
        self.policy.cost.reestimate(&backend, &samples);
        self.last_measured = Some(self.clock.now());
    }

    /// Records the cost of a batch of `batch` that started at `since`.
    fn measured(&mut self, batch: usize, since: Instant) {
        let cost = self.clock.now() - since;
        self.record_cost(batch, cost);
    }

    fn record_cost(&mut self, batch: usize, cost: Duration) {
        let backend = self.stages.cost_key().to_owned();
        self.policy.cost.record(&backend, batch, cost);
        self.last_measured = Some(self.clock.now());
    }

    /// One round: drops the frames that cannot make their budget, runs the next batch, and
    /// returns the frames that finished in budget. Empty when nothing was waiting.
    pub fn step(&mut self, hub: &FrameHub<F>) -> Vec<Done<F>> {
        let now = self.clock.now();
        hub.pending(&mut self.pending);
        if self.pending.is_empty() {
            return Vec::new();
        }
        let plan = self.policy.plan(now, &self.pending, self.stages.cost_key(), self.stages.max_batch());
        let alone = self.policy.cost.predict(self.stages.cost_key(), 1);
        for &camera in &plan.drop {
            let captured = self.pending.iter().find(|p| p.0 == camera).map(|p| p.1);
            if captured.and_then(|c| hub.take_exact(camera, c)).is_some() {
                self.stats.cameras[camera].dropped_stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let budget = self.policy.budget(camera);
            if alone > budget && !self.over_budget[camera] {
                self.over_budget[camera] = true;
                tracing::warn!(camera = %self.stats.cameras[camera].id, budget_ms = ms(budget), cost_ms = ms(alone),
                    "the model takes longer than this camera's whole budget: every frame is dropped until it gets \
                     faster; raise latency_budget_ms or use a lighter model");
            }
        }
        for &camera in &plan.run {
            self.over_budget[camera] = false;
        }
        if plan.run.is_empty() {
            if self.last_measured.is_none_or(|t| now - t >= PROBE_EVERY) {
                self.probe();
            }
            return Vec::new();
        }
        // A slot may have been refilled since `pending`: the newer frame is only fresher.
        let frames: Vec<F> = plan.run.iter().filter_map(|&c| hub.take_camera(c)).collect();
        if frames.is_empty() {
            return Vec::new();
        }
        self.policy.served(&plan.run, now);
        self.run_batch(frames)
    }

    fn run_batch(&mut self, frames: Vec<F>) -> Vec<Done<F>> {
        use std::sync::atomic::Ordering::Relaxed;
        let start = self.clock.now();
        let mut batch: Vec<(F, Duration)> = Vec::with_capacity(frames.len());
        for frame in frames {
            let t = self.clock.now();
            match self.stages.preprocess(batch.len(), &frame) {
                Ok(()) => batch.push((frame, self.clock.now() - t)),
                Err(e) => {
                    self.stats.cameras[frame.camera()].dropped_error.fetch_add(1, Relaxed);
                    tracing::error!(camera = %self.stats.cameras[frame.camera()].id, error = %e, "pre-processing failed");
                }
            }
        }
        if batch.is_empty() {
            return Vec::new();
        }
        let t = self.clock.now();
        if let Err(e) = self.stages.infer(batch.len()) {
            for (frame, _) in &batch {
                self.stats.cameras[frame.camera()].dropped_error.fetch_add(1, Relaxed);
            }
            tracing::error!(error = %e, frames = batch.len(), "inference failed");
            return Vec::new();
        }
        let inference = self.clock.now() - t;
        self.stats.batches.fetch_add(1, Relaxed);
        let size = batch.len();
        // Every frame's results are handed on together, when the last slot is decoded: that is
        // the time each frame is judged by.
        let mut decoded = Vec::with_capacity(size);
        for (slot, (frame, preprocess)) in batch.into_iter().enumerate() {
            let t = self.clock.now();
            let detections = self.stages.postprocess(slot, &frame);
            decoded.push((frame, detections, preprocess, self.clock.now() - t));
        }
        let finished = self.clock.now();
        let mut done = Vec::with_capacity(size);
        let mut late = Vec::new();
        for (frame, detections, preprocess, postprocess) in decoded {
            let camera = frame.camera();
            let times = FrameTimes {
                queue: start.saturating_duration_since(frame.captured()),
                preprocess,
                inference,
                postprocess,
                total: finished.saturating_duration_since(frame.captured()),
                batch: size,
            };
            let stats = &self.stats.cameras[camera];
            let budget = self.policy.budget(camera);
            if times.total > budget {
                stats.deadline_misses.fetch_add(1, Relaxed);
                late.push((camera, times, budget));
                continue;
            }
            stats.record(&times);
            done.push(Done { frame, detections, times });
        }
        // Pre- and post-processing per frame, so that engine-only measurements (warm-up,
        // probes) are put on the same scale as whole batches.
        let around = (finished - start).saturating_sub(inference);
        self.per_frame_overhead.update(around / size as u32);
        // Looked up only for a late batch's log line: this runs for every batch.
        let planned_before = (!late.is_empty()).then(|| self.policy.cost.predict(self.stages.cost_key(), size));
        self.measured(size, start);
        // The batch's cost is learnt before the next plan: a late frame raises the estimate,
        // so that the frames after it are dropped rather than late.
        let Some(planned_before) = planned_before else { return done };
        let planned_after = self.policy.cost.predict(self.stages.cost_key(), size);
        for (camera, times, budget) in late {
            tracing::warn!(camera = %self.stats.cameras[camera].id, total_ms = ms(times.total), budget_ms = ms(budget),
                queue_ms = ms(times.queue), preprocess_ms = ms(times.preprocess),
                inference_ms = ms(times.inference), postprocess_ms = ms(times.postprocess), batch = size,
                planned_before_ms = ms(planned_before), planned_after_ms = ms(planned_after),
                "deadline miss: finished past the budget, results discarded");
        }
        done
    }
}

/// A duration in milliseconds with one decimal, for logs.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// A camera's picture for the `snapshot` command, as cut from the frame: the asker encodes it
/// (JPEG encoding is milliseconds of CPU the scheduler's thread must not spend).
#[derive(Debug, Clone)]
pub struct CameraSnapshot {
    pub picture: Arc<SnapshotImage>,
    pub captured_at_ns: u64,
}

/// Pending `snapshot` requests, by camera index: each is answered with the camera's next
/// processed frame. At most [`MAX_SNAPSHOT_WAITERS`] wait per camera.
#[derive(Clone, Default)]
pub struct SnapshotRequests {
    waiting: Arc<std::sync::Mutex<Vec<SnapshotWaiter>>>,
}

pub const MAX_SNAPSHOT_WAITERS: usize = 8;

/// A `snapshot` request: the camera's index and where its picture goes.
type SnapshotWaiter = (usize, tokio::sync::oneshot::Sender<CameraSnapshot>);

impl SnapshotRequests {
    /// Asks for camera `camera`'s next frame; `None` when too many requests already wait.
    pub fn request(&self, camera: usize) -> Option<tokio::sync::oneshot::Receiver<CameraSnapshot>> {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|(_, tx)| !tx.is_closed());
        if w.iter().filter(|(c, _)| *c == camera).count() >= MAX_SNAPSHOT_WAITERS {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.push((camera, tx));
        Some(rx)
    }

    /// Hands camera `camera`'s processed frame to whoever waits for it: a copy of the picture
    /// (the frame's buffer goes back to GStreamer), not yet encoded. Nothing to do, and no copy,
    /// when nobody waits.
    pub fn fulfil(&self, camera: usize, info: &FrameInfo, image: &SourceImage<'_>) {
        let waiting: Vec<_> = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if !w.iter().any(|(c, _)| *c == camera) {
                return;
            }
            let (mine, rest) = std::mem::take(&mut *w).into_iter().partition(|(c, _)| *c == camera);
            *w = rest;
            mine
        };
        let snap = CameraSnapshot { picture: Arc::new(image.crop()), captured_at_ns: info.captured_at_ns };
        for (_, tx) in waiting {
            let _ = tx.send(snap.clone());
        }
    }
}
