//! The inference worker: takes the freshest frame of each camera in turn, skips frames that can
//! no longer finish inside their latency budget, runs the detector, and hands the resulting
//! events to the store writer.
//!
//! A frame is processed in budget or dropped, never reported late: before starting, the worker
//! predicts the finish time from a running estimate of the per-frame cost; after finishing, a
//! frame that overran anyway is a *deadline miss*, counted and not reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture::FrameHub;
use crate::events::{Event, FrameContext, ModelRef};
use crate::infer::{Detector, Letterbox};

/// Counters for the whole worker, readable from anywhere.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub processed: AtomicU64,
    /// Skipped before inference: already too old to finish in budget.
    pub dropped_stale: AtomicU64,
    /// Finished past the budget: counted, results discarded.
    pub deadline_misses: AtomicU64,
    pub inference_errors: AtomicU64,
    pub events: AtomicU64,
}

pub struct Scheduler {
    pub hub: Arc<FrameHub>,
    pub detector: Detector,
    pub device_id: String,
    pub model: ModelRef,
    /// Budget per camera (index as in the hub).
    pub budgets: Vec<Duration>,
    pub stats: Arc<SchedulerStats>,
    /// Batches of events for the store writer. Bounded: when the writer falls behind, this
    /// worker waits (frames then age out and are dropped as stale) — events are never dropped.
    pub events: mpsc::Sender<Vec<Event>>,
}

/// Exponentially weighted running estimate of one frame's processing cost.
#[derive(Debug, Clone, Copy)]
pub struct CostEstimate {
    mean: Option<Duration>,
}

impl CostEstimate {
    pub const fn new() -> Self {
        Self { mean: None }
    }

    pub fn get(&self) -> Duration {
        self.mean.unwrap_or(Duration::ZERO)
    }

    pub fn update(&mut self, sample: Duration) {
        self.mean = Some(match self.mean {
            None => sample,
            Some(m) => m.mul_f64(0.9) + sample.mul_f64(0.1),
        });
    }
}

impl Default for CostEstimate {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// Runs on the calling (dedicated) thread until `cancel`.
    pub fn run(mut self, cancel: &CancellationToken) {
        let labels = self.detector.labels().to_vec();
        let (in_w, in_h) = self.detector.input_size();
        let mut cost = CostEstimate::new();
        while !cancel.is_cancelled() {
            let Some(frame) = self.hub.take(Duration::from_millis(100)) else { continue };
            let budget = self.budgets[frame.camera];
            let queued = frame.captured_mono.elapsed();
            if queued + cost.get() > budget {
                self.stats.dropped_stale.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let letterbox = Letterbox::new(frame.source_width, frame.source_height, in_w, in_h);
            let started = Instant::now();
            let result = self.detector.detect(frame.image(), &letterbox);
            cost.update(started.elapsed());
            let (detections, stages) = match result {
                Ok(r) => r,
                Err(e) => {
                    self.stats.inference_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(camera = %frame.camera_id, error = %e, "inference failed");
                    continue;
                }
            };
            let total = frame.captured_mono.elapsed();
            if total > budget {
                self.stats.deadline_misses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(camera = %frame.camera_id, seq = frame.seq, total_ms = total.as_secs_f32() * 1e3,
                    budget_ms = budget.as_millis() as u64, queue_ms = queued.as_secs_f32() * 1e3,
                    inference_ms = stages.inference.as_secs_f32() * 1e3, "deadline miss: result discarded");
                continue;
            }
            self.stats.processed.fetch_add(1, Ordering::Relaxed);
            if detections.is_empty() {
                continue;
            }
            let ctx = FrameContext {
                device_id: &self.device_id,
                labels: &labels,
                model: &self.model,
                frame: &frame,
                queue: queued,
                stages,
                total,
            };
            let batch = ctx.events(&detections);
            drop(frame); // return the buffer to GStreamer's pool before waiting on the writer
            self.stats.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if self.events.blocking_send(batch).is_err() {
                break; // the writer is gone: shutting down
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_estimate_follows_samples_smoothly() {
        let mut c = CostEstimate::new();
        assert_eq!(c.get(), Duration::ZERO);
        c.update(Duration::from_millis(10));
        assert_eq!(c.get(), Duration::from_millis(10));
        c.update(Duration::from_millis(20));
        assert_eq!(c.get(), Duration::from_millis(11));
    }
}
