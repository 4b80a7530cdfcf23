//! The scheduling decision, free of threads and clocks: given the time and the frames waiting
//! (one per camera, the freshest), which to drop as unable to finish in budget and which to run
//! together as the next batch.
//!
//! Rules, in order:
//! 1. A frame whose predicted finish (now + predicted cost of running it alone) is past its
//!    deadline (capture + budget) is dropped: it could only be late.
//! 2. The others are ordered least-recently-served camera first (then earliest deadline), so
//!    under overload every camera gets its turn and none starves.
//! 3. The batch is filled in that order while the predicted finish of the larger batch still
//!    meets the deadline of every frame in it; a frame that does not fit waits for the next
//!    round, when a fresher frame may have replaced it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Running estimate of one batch size's processing cost (pre-process to post-process):
/// exponentially weighted mean and mean absolute deviation.
///
/// One freak sample (a page fault storm, a GPU clock change) must not lock cameras out: a sample
/// counts for at most twice the current prediction, so a spike moves the estimate by a bounded
/// step while a lasting slowdown is still learnt within a few frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    mean_s: f64,
    dev_s: f64,
    samples: u64,
}

/// Weight of a new sample.
const ALPHA: f64 = 0.1;
/// Deviations added to the mean for the prediction: the margin that keeps jitter from making
/// frames late.
const MARGIN_DEVS: f64 = 4.0;

impl Estimate {
    fn new(sample: Duration) -> Self {
        Self { mean_s: sample.as_secs_f64(), dev_s: 0.0, samples: 1 }
    }

    fn update(&mut self, sample: Duration) {
        let x = sample.as_secs_f64().min(2.0 * self.predict().as_secs_f64());
        self.dev_s += ALPHA * ((x - self.mean_s).abs() - self.dev_s);
        self.mean_s += ALPHA * (x - self.mean_s);
        self.samples += 1;
    }

    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.mean_s)
    }

    /// What the scheduler plans with: the mean plus a margin for jitter.
    pub fn predict(&self) -> Duration {
        Duration::from_secs_f64(self.mean_s + MARGIN_DEVS * self.dev_s)
    }
}

/// An exponentially weighted average of durations (zero until the first sample).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Smoothed {
    mean_s: Option<f64>,
}

impl Smoothed {
    pub fn update(&mut self, sample: Duration) {
        let x = sample.as_secs_f64();
        self.mean_s = Some(self.mean_s.map_or(x, |m| m + ALPHA * (x - m)));
    }

    pub fn get(&self) -> Duration {
        Duration::from_secs_f64(self.mean_s.unwrap_or(0.0))
    }
}

/// Cost estimates per backend and batch size. Keyed by backend name first, so that lookups (on
/// every scheduling decision) borrow the name instead of allocating a key.
#[derive(Debug, Clone, Default)]
pub struct CostModel {
    estimates: HashMap<String, BTreeMap<usize, Estimate>>,
}

impl CostModel {
    /// Adds a measured cost; `batch` frames ran on `backend`.
    pub fn record(&mut self, backend: &str, batch: usize, cost: Duration) {
        let sizes = match self.estimates.get_mut(backend) {
            Some(sizes) => sizes,
            None => self.estimates.entry(backend.to_owned()).or_default(),
        };
        match sizes.get_mut(&batch) {
            Some(e) => e.update(cost),
            None => {
                sizes.insert(batch, Estimate::new(cost));
            }
        }
    }

    /// Takes idle re-measurements of a batch of one (probes). When all of them are below the
    /// current mean, the cost has come down (a slowdown passed): the estimate restarts from them,
    /// and the other batch sizes are forgotten, to be extrapolated from it and learnt again.
    /// Otherwise they count as ordinary samples.
    pub fn reestimate(&mut self, backend: &str, samples: &[Duration]) {
        let Some(first) = samples.first() else { return };
        let Some(old) = self.estimate(backend, 1).copied() else {
            samples.iter().for_each(|s| self.record(backend, 1, *s));
            return;
        };
        if !samples.iter().all(|s| *s < old.mean()) {
            samples.iter().for_each(|s| self.record(backend, 1, *s));
            return;
        }
        let mut fresh = Estimate::new(*first);
        for s in &samples[1..] {
            fresh.update(*s);
        }
        // A few probes say little about jitter: keep the margin the frames have shown.
        fresh.dev_s = fresh.dev_s.max(old.dev_s);
        self.estimates.insert(backend.to_owned(), BTreeMap::from([(1, fresh)]));
    }

    pub fn estimate(&self, backend: &str, batch: usize) -> Option<&Estimate> {
        self.estimates.get(backend)?.get(&batch)
    }

    /// Predicted cost of a batch of `batch` frames. A size never measured is the smaller of:
    /// the nearest smaller measured size scaled linearly (batches rarely cost more than that),
    /// and the nearest larger measured size (a smaller batch does not cost more). With nothing
    /// measured at all the prediction is zero, which is why the worker measures warm-up runs
    /// before the first frame.
    pub fn predict(&self, backend: &str, batch: usize) -> Duration {
        let Some(sizes) = self.estimates.get(backend) else { return Duration::ZERO };
        if let Some(e) = sizes.get(&batch) {
            return e.predict();
        }
        let below = sizes.range(..batch).next_back();
        let above = sizes.range(batch + 1..).next();
        let scaled = below.map(|(&n, e)| e.predict().mul_f64(batch as f64 / n as f64));
        let capped = above.map(|(_, e)| e.predict());
        match (scaled, capped) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => Duration::ZERO,
        }
    }
}

/// One round's decision.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Cameras whose frame cannot finish in budget: drop them.
    pub drop: Vec<usize>,
    /// Cameras whose frames form the next batch, in order.
    pub run: Vec<usize>,
}

/// Budgets and fairness state; see the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct Policy {
    budgets: Vec<Duration>,
    last_served: Vec<Option<Instant>>,
    pub cost: CostModel,
}

impl Policy {
    pub fn new(budgets: Vec<Duration>) -> Self {
        let n = budgets.len();
        Self { budgets, last_served: vec![None; n], cost: CostModel::default() }
    }

    /// Another model's budgets, one per camera as before (a model swap).
    pub fn set_budgets(&mut self, budgets: Vec<Duration>) {
        assert_eq!(budgets.len(), self.budgets.len(), "one budget per camera");
        self.budgets = budgets;
    }

    pub fn budget(&self, camera: usize) -> Duration {
        self.budgets[camera]
    }

    /// Decides the next round for the frames `pending` as (camera, capture instant).
    pub fn plan(&self, now: Instant, pending: &[(usize, Instant)], backend: &str, max_batch: usize) -> Plan {
        let mut plan = Plan::default();
        let alone = self.cost.predict(backend, 1);
        let mut ready: Vec<(usize, Instant)> = Vec::with_capacity(pending.len());
        for &(camera, captured) in pending {
            let deadline = captured + self.budgets[camera];
            if now + alone > deadline {
                plan.drop.push(camera);
            } else {
                ready.push((camera, deadline));
            }
        }
        ready.sort_by_key(|&(camera, deadline)| (self.last_served[camera], deadline, camera));
        let mut earliest: Option<Instant> = None;
        for (camera, deadline) in ready {
            if plan.run.len() >= max_batch.max(1) {
                break;
            }
            let tightest = earliest.map_or(deadline, |e| e.min(deadline));
            if now + self.cost.predict(backend, plan.run.len() + 1) <= tightest {
                plan.run.push(camera);
                earliest = Some(tightest);
            }
        }
        plan
    }

    /// Notes that `cameras` were served at `now` (their batch started).
    pub fn served(&mut self, cameras: &[usize], now: Instant) {
        for &c in cameras {
            self.last_served[c] = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_estimate_tracks_the_mean_and_widens_with_jitter() {
        let mut steady = CostModel::default();
        for _ in 0..50 {
            steady.record("b", 1, 40 * MS);
        }
        assert_eq!(steady.predict("b", 1), 40 * MS);
        let mut jittery = CostModel::default();
        for i in 0..200 {
            jittery.record("b", 1, if i % 2 == 0 { 30 * MS } else { 50 * MS });
        }
        let e = jittery.estimate("b", 1).unwrap();
        assert!((e.mean().as_secs_f64() - 0.040).abs() < 0.002, "{e:?}");
        assert!(e.predict() >= 50 * MS, "the margin covers the slow half: {e:?}");
    }

    #[test]
    fn a_spike_moves_the_estimate_a_bounded_step() {
        let mut c = CostModel::default();
        for _ in 0..20 {
            c.record("b", 1, 40 * MS);
        }
        c.record("b", 1, 2000 * MS);
        let p = c.predict("b", 1);
        assert!(p < 100 * MS, "one 2 s sample counts as at most 80 ms: {p:?}");
    }

    #[test]
    fn probes_below_the_mean_restart_the_estimate() {
        let mut c = CostModel::default();
        for _ in 0..20 {
            c.record("b", 1, 150 * MS);
        }
        c.record("b", 4, 400 * MS);
        c.reestimate("b", &[36 * MS, 37 * MS, 36 * MS]);
        let p = c.predict("b", 1);
        assert!(p >= 36 * MS && p < 45 * MS, "{p:?}");
        assert_eq!(c.predict("b", 4), p * 4, "other sizes are extrapolated again");
        // Probes that are not all lower are ordinary samples.
        c.reestimate("b", &[30 * MS, 300 * MS]);
        assert!(c.predict("b", 1) > p);
    }

    #[test]
    fn unmeasured_batch_sizes_are_extrapolated_conservatively() {
        let mut c = CostModel::default();
        assert_eq!(c.predict("b", 1), Duration::ZERO);
        c.record("b", 2, 30 * MS);
        assert_eq!(c.predict("b", 1), 30 * MS, "from the larger size");
        assert_eq!(c.predict("b", 4), 60 * MS, "linear from the smaller size");
        assert_eq!(c.predict("other", 1), Duration::ZERO, "per backend");
        // Between two measured sizes: never more than the larger one costs.
        let mut c = CostModel::default();
        c.record("b", 1, 30 * MS);
        c.record("b", 4, 60 * MS);
        assert_eq!(c.predict("b", 3), 60 * MS, "not 90 ms from batch 1");
        assert_eq!(c.predict("b", 2), 60 * MS);
    }

    fn policy(budgets_ms: &[u32], cost_ms: &[(usize, u32)]) -> Policy {
        let mut p = Policy::new(budgets_ms.iter().map(|&b| b * MS).collect());
        for &(batch, ms) in cost_ms {
            p.cost.record("b", batch, ms * MS);
        }
        p
    }

    #[test]
    fn a_frame_that_cannot_finish_in_budget_is_dropped_not_started() {
        let p = policy(&[100, 100], &[(1, 40)]);
        let t0 = Instant::now();
        let now = t0 + 70 * MS;
        // Camera 0 captured at t0: 70 ms old + 40 ms > 100 ms. Camera 1 captured at 50 ms: fits.
        let plan = p.plan(now, &[(0, t0), (1, t0 + 50 * MS)], "b", 1);
        assert_eq!(plan, Plan { drop: vec![0], run: vec![1] });
        // Exactly on the deadline still counts as in budget.
        let plan = p.plan(t0 + 60 * MS, &[(0, t0)], "b", 1);
        assert_eq!(plan.run, [0]);
    }

    #[test]
    fn the_least_recently_served_camera_goes_first() {
        let mut p = policy(&[100, 100, 100], &[(1, 10)]);
        let t0 = Instant::now();
        let pending = [(0, t0), (1, t0), (2, t0)];
        let plan = p.plan(t0, &pending, "b", 1);
        assert_eq!(plan.run, [0], "never served: camera order");
        p.served(&[0], t0);
        assert_eq!(p.plan(t0, &pending, "b", 1).run, [1]);
        p.served(&[1], t0 + MS);
        assert_eq!(p.plan(t0, &pending, "b", 1).run, [2]);
        p.served(&[2], t0 + 2 * MS);
        assert_eq!(p.plan(t0, &pending, "b", 1).run, [0]);
    }

    #[test]
    fn a_batch_grows_only_while_every_frame_in_it_still_fits() {
        // Batches of 1, 2, 3 cost 20, 30, 60 ms.
        let p = policy(&[100, 100, 100], &[(1, 20), (2, 30), (3, 60)]);
        let t0 = Instant::now();
        // All fresh: 3 fit (60 ms < 100 ms).
        assert_eq!(p.plan(t0, &[(0, t0), (1, t0), (2, t0)], "b", 4).run, [0, 1, 2]);
        // Camera 2's frame is 50 ms old: it goes first (earliest deadline), and a batch of 3
        // (60 ms) would finish past its deadline, so camera 1 waits for the next round.
        let now = t0 + 50 * MS;
        let plan = p.plan(now, &[(0, now), (1, now), (2, t0)], "b", 4);
        assert_eq!(plan, Plan { drop: vec![], run: vec![2, 0] });
        // The engine's limit caps the batch.
        assert_eq!(p.plan(t0, &[(0, t0), (1, t0), (2, t0)], "b", 2).run.len(), 2);
    }
}
