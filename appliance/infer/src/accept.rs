//! Acceptance of a new model on this device, before it may serve: the bundle's reference input
//! through this device's backend within the manifest's tolerance and without NaN, its latency on
//! this device against every camera's budget, and memory headroom with both models resident.
//! A bundle packed with `--expect` also runs its reference picture through the service's own
//! pre-processing on this device and must give the exporter's detections (src/expect.rs).
//! A model that fails is never activated; the reasons say exactly why.

use std::time::{Duration, Instant};

use crate::check::{check_model, ModelCheck};
use crate::{Bundle, Detector, InferError};

/// The share of a camera's budget the model's own inference may take (p95): the rest is for
/// capture, pre-processing and waiting its turn.
pub const BUDGET_SHARE: f64 = 0.8;

/// What the new model must meet here.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Each camera's budget (its own, or the one the new bundle would give it).
    pub budgets: Vec<(String, Duration)>,
    /// Timed runs of the reference input (after one warm-up run).
    pub runs: usize,
    /// Memory that must stay available with both models loaded.
    pub min_available: u64,
}

#[derive(Debug, Clone)]
pub struct Acceptance {
    pub model: String,
    pub version: String,
    pub check: ModelCheck,
    /// The exporter's detections against this device's, when the bundle carries them.
    pub expected: Option<crate::expect::Agreement>,
    pub latency_p50: Duration,
    pub latency_p95: Duration,
    /// Memory available after the new model was loaded (`None`: not known on this system).
    pub available_after: Option<u64>,
    /// Empty when the model is accepted.
    pub problems: Vec<String>,
}

impl Acceptance {
    pub fn accepted(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Times one inference of `input` (production: the wall time of the call).
pub fn time_inference(detector: &mut Detector, input: &[f32]) -> Result<Duration, InferError> {
    let t0 = Instant::now();
    detector.infer_raw(input)?;
    Ok(t0.elapsed())
}

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the acceptance of `bundle`, loaded as `detector` on this device's backend. `timer`
/// times one inference (tests script it); `available` reads the memory left (tests script it).
pub fn accept(
    bundle: &Bundle,
    detector: &mut Detector,
    limits: &Limits,
    mut timer: impl FnMut(&mut Detector, &[f32]) -> Result<Duration, InferError>,
    available: impl FnOnce() -> Option<u64>,
) -> Result<Acceptance, InferError> {
    let m = &bundle.manifest.model;
    let check = check_model(bundle, detector)?;
    let mut problems: Vec<String> =
        check.problems.iter().map(|p| format!("reference check on {}: {p}", check.backend)).collect();
    let expected = crate::expect::check_bundle(bundle, detector)
        .map_err(|e| problems.push(format!("exporter check on {}: {e}", check.backend)))
        .ok()
        .flatten();
    let reference = bundle.manifest.reference.as_ref().expect("check_model needs a reference");
    let input = bundle.read_f32(&reference.input)?;
    timer(detector, &input)?; // warm-up: first runs allocate
    let mut times = Vec::with_capacity(limits.runs.max(1));
    for _ in 0..limits.runs.max(1) {
        times.push(timer(detector, &input)?);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (p50, p95) = (at(0.5), at(0.95));
    for (camera, budget) in &limits.budgets {
        let allowed = budget.mul_f64(BUDGET_SHARE);
        if p95 > allowed {
            problems.push(format!(
                "too slow for camera `{camera}`: inference takes {:.1} ms (p95 of {}) on {}, over {:.0} % of its {} ms \
                 budget ({:.1} ms); use a lighter model, or raise the camera's latency_budget_ms",
                p95.as_secs_f64() * 1e3,
                times.len(),
                check.backend,
                BUDGET_SHARE * 100.0,
                budget.as_millis(),
                allowed.as_secs_f64() * 1e3
            ));
        }
    }
    let available_after = available();
    if let Some(a) = available_after {
        if a < limits.min_available {
            problems.push(format!(
                "memory: {} MiB available with both models loaded, under the {} MiB that must stay free",
                a >> 20,
                limits.min_available >> 20
            ));
        }
    }
    Ok(Acceptance {
        model: m.name.clone(),
        version: m.version.clone(),
        check,
        expected,
        latency_p50: p50,
        latency_p95: p95,
        available_after,
        problems,
    })
}
