//! Per-camera, per-stage latency histograms and counters of the inference worker.
//!
//! Histograms have fixed log-linear buckets (16 per power of two of microseconds, so a reported
//! quantile is within 1/16 of the true value), from 1 µs to about 19 hours: memory is fixed no
//! matter how long vigil runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^36 µs.
const MAX_EXP: u32 = 36;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;

/// A latency histogram with bounded relative error.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u32; BUCKETS]>,
    total: u64,
    max_us: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("total", &self.total).field("max_us", &self.max_us).finish()
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let us = us.min((1 << (MAX_EXP + 1)) - 1);
    let exp = 63 - us.leading_zeros(); // ≥ SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The largest value that lands in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = i % SUB;
    let low = (SUB + sub) << (exp - SUB_BITS);
    low + (1 << (exp - SUB_BITS)) - 1
}

impl Histogram {
    pub fn new() -> Self {
        Self { counts: Box::new([0; BUCKETS]), total: 0, max_us: 0 }
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = &mut self.counts[bucket_of(us)];
        *slot = slot.saturating_add(1);
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1): the top of the bucket holding it, never above the largest
    /// value recorded. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Duration::from_micros(bucket_high(i).min(self.max_us));
            }
        }
        Duration::from_micros(self.max_us)
    }

    pub fn summary(&self) -> Quantiles {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Quantiles {
            p50_ms: ms(self.quantile(0.50)),
            p95_ms: ms(self.quantile(0.95)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: self.max_us as f64 / 1e3,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Where one processed frame's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FrameTimes {
    /// Capture to the start of its batch.
    pub queue: Duration,
    pub preprocess: Duration,
    /// The batch's inference (shared by the frames in it).
    pub inference: Duration,
    pub postprocess: Duration,
    /// Capture to detections ready.
    pub total: Duration,
    /// Frames in the batch.
    pub batch: usize,
}

#[derive(Debug, Default, Clone)]
struct StageHistograms {
    queue: Histogram,
    preprocess: Histogram,
    inference: Histogram,
    postprocess: Histogram,
    total: Histogram,
}

/// One camera's inference counters and histograms.
#[derive(Debug)]
pub struct CameraInferStats {
    pub id: String,
    /// Finished within budget; results reported.
    pub processed: AtomicU64,
    /// Not started: predicted to finish past its budget.
    pub dropped_stale: AtomicU64,
    /// Not processed because inference failed.
    pub dropped_error: AtomicU64,
    /// Finished past its budget anyway: results discarded. The number to watch.
    pub deadline_misses: AtomicU64,
    histograms: Mutex<StageHistograms>,
}

impl CameraInferStats {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            processed: AtomicU64::new(0),
            dropped_stale: AtomicU64::new(0),
            dropped_error: AtomicU64::new(0),
            deadline_misses: AtomicU64::new(0),
            histograms: Mutex::new(StageHistograms::default()),
        }
    }

    fn histograms(&self) -> MutexGuard<'_, StageHistograms> {
        self.histograms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a frame that finished in budget.
    pub fn record(&self, t: &FrameTimes) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        let mut h = self.histograms();
        h.queue.record(t.queue);
        h.preprocess.record(t.preprocess);
        h.inference.record(t.inference);
        h.postprocess.record(t.postprocess);
        h.total.record(t.total);
    }

    pub fn snapshot(&self) -> CameraInferSnapshot {
        let h = self.histograms().clone();
        CameraInferSnapshot {
            id: self.id.clone(),
            processed: self.processed.load(Ordering::Relaxed),
            dropped_stale: self.dropped_stale.load(Ordering::Relaxed),
            dropped_error: self.dropped_error.load(Ordering::Relaxed),
            deadline_misses: self.deadline_misses.load(Ordering::Relaxed),
            queue: h.queue.summary(),
            preprocess: h.preprocess.summary(),
            inference: h.inference.summary(),
            postprocess: h.postprocess.summary(),
            total: h.total.summary(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraInferSnapshot {
    /// Not serialized: the `metrics` message names the camera once, beside this.
    #[serde(skip)]
    pub id: String,
    pub processed: u64,
    pub dropped_stale: u64,
    pub dropped_error: u64,
    pub deadline_misses: u64,
    pub queue: Quantiles,
    pub preprocess: Quantiles,
    pub inference: Quantiles,
    pub postprocess: Quantiles,
    /// Capture to detections ready.
    pub total: Quantiles,
}

/// The worker's statistics: one entry per camera (hub order) plus worker-wide counters.
#[derive(Debug)]
pub struct SchedulerStats {
    pub cameras: Vec<CameraInferStats>,
    pub batches: AtomicU64,
    /// Turns of the scheduler's loop (at least one every 100 ms, frames or not): systemd's
    /// watchdog is fed only while this moves.
    pub turns: AtomicU64,
    /// Events started (`new` messages; updates and ends are not counted).
    pub events: AtomicU64,
    /// Pictures of `update` messages shed because the store writer was behind.
    pub pictures_shed: AtomicU64,
}

impl SchedulerStats {
    pub fn new<S: AsRef<str>>(camera_ids: &[S]) -> Self {
        Self {
            cameras: camera_ids.iter().map(|id| CameraInferStats::new(id.as_ref())).collect(),
            batches: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            events: AtomicU64::new(0),
            pictures_shed: AtomicU64::new(0),
        }
    }

    fn sum(&self, f: impl Fn(&CameraInferStats) -> &AtomicU64) -> u64 {
        self.cameras.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    }

    pub fn processed(&self) -> u64 {
        self.sum(|c| &c.processed)
    }

    pub fn dropped_stale(&self) -> u64 {
        self.sum(|c| &c.dropped_stale)
    }

    pub fn deadline_misses(&self) -> u64 {
        self.sum(|c| &c.deadline_misses)
    }

    pub fn dropped_error(&self) -> u64 {
        self.sum(|c| &c.dropped_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut prev_high = None;
        for i in 0..BUCKETS - 1 {
            let high = bucket_high(i);
            if let Some(p) = prev_high {
                assert!(high > p, "bucket {i}");
                assert_eq!(bucket_of(p + 1), i, "first value of bucket {i}");
            }
            assert_eq!(bucket_of(high), i, "last value of bucket {i}");
            prev_high = Some(high);
        }
    }

    #[test]
    fn quantiles_are_within_a_sixteenth() {
        let mut h = Histogram::new();
        // 1..=1000 ms, one sample each.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, exact) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile(q).as_secs_f64() * 1e3;
            assert!(got >= exact && got <= exact * (1.0 + 1.0 / 16.0), "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), Duration::from_millis(1000), "capped at the largest value");
        assert_eq!(Histogram::new().quantile(0.5), Duration::ZERO);
        assert_eq!(h.count(), 1000);
    }

    #[test]
    fn huge_values_land_in_the_last_bucket() {
        let mut h = Histogram::new();
        h.record(Duration::from_secs(1 << 40));
        assert_eq!(h.count(), 1);
        assert!(h.quantile(0.5) > Duration::from_secs(3600));
    }
}
