//! The canary after a model is activated: the new model's figures over a window of frames,
//! judged on what matters downstream. A model that passed acceptance can still quietly detect
//! less in the field (a higher threshold, the wrong classes, a scene it was not trained on).
//!
//! What it is judged against depends on what it is ([`Basis`], decision 0015). A retrain (another
//! version of the serving model: same name, same labels) is compared with the previous version
//! on the same cameras: deadline misses, errors, detections per frame, and the distribution of
//! scores (PSI). A new model is not: two different models differ, and their difference is not a
//! fault. It is judged on its own errors and deadline misses, and on silence where its
//! reference promised detections; its conventions were checked against the exporter's own
//! detections at acceptance, before it served.

/// Score histogram bins over 0..=1.
pub const SCORE_BINS: usize = 10;

/// One model's figures over a window of frames.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub frames: u64,
    pub deadline_misses: u64,
    pub errors: u64,
    pub detections: u64,
    pub scores: [u64; SCORE_BINS],
}

impl Window {
    /// A frame served, with the scores of its detections.
    pub fn frame(&mut self, scores: impl IntoIterator<Item = f32>) {
        self.frames += 1;
        for s in scores {
            self.detections += 1;
            let bin = ((s.clamp(0.0, 1.0) * SCORE_BINS as f32) as usize).min(SCORE_BINS - 1);
            self.scores[bin] += 1;
        }
    }

    pub fn deadline_miss(&mut self) {
        self.deadline_misses += 1;
    }

    pub fn error(&mut self) {
        self.errors += 1;
    }

    /// Adds `other`'s figures to these.
    pub fn merge(&mut self, other: &Window) {
        self.frames += other.frames;
        self.deadline_misses += other.deadline_misses;
        self.errors += other.errors;
        self.detections += other.detections;
        for (a, b) in self.scores.iter_mut().zip(other.scores) {
            *a += b;
        }
    }

    fn attempts(&self) -> u64 {
        self.frames + self.deadline_misses + self.errors
    }

    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.attempts().max(1) as f64
    }

    pub fn detections_per_frame(&self) -> f64 {
        self.detections as f64 / self.frames.max(1) as f64
    }
}

/// Population stability index between two histograms (0: the same; < 0.1 stable, > 0.25 a major
/// shift, by the usual reading). Empty bins count as half an observation so that the index
/// stays finite.
pub fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    let (te, ta) = (expected.iter().sum::<u64>() as f64, actual.iter().sum::<u64>() as f64);
    if te == 0.0 || ta == 0.0 {
        return 0.0;
    }
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let pe = (e as f64).max(0.5) / te;
            let pa = (a as f64).max(0.5) / ta;
            (pa - pe) * (pa / pe).ln()
        })
        .sum()
}

/// When a canary fails. Configured per device, and overridable per push.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Frames the new model must serve before it is judged.
    pub min_frames: u64,
    /// Largest rise in the share of deadline misses (0.02: two points).
    pub max_miss_rate_rise: f64,
    /// Largest share of frames failing with an error.
    pub max_error_rate: f64,
    /// Smallest detections-per-frame ratio, new over previous (0.7: 30 % fewer fails).
    pub min_detection_ratio: f64,
    /// Largest PSI between the score distributions.
    pub max_score_psi: f64,
}

impl From<&vigil_config::CanaryConfig> for Thresholds {
    fn from(c: &vigil_config::CanaryConfig) -> Self {
        Self {
            min_frames: c.min_frames,
            max_miss_rate_rise: c.max_miss_rate_rise,
            max_error_rate: c.max_error_rate,
            min_detection_ratio: c.min_detection_ratio,
            max_score_psi: c.max_score_psi,
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_frames: 300,
            max_miss_rate_rise: 0.02,
            max_error_rate: 0.01,
            min_detection_ratio: 0.7,
            max_score_psi: 0.25,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough frames yet.
    Wait,
    Pass,
    /// Roll back: each reason with its figures.
    Fail(Vec<String>),
}

/// What a new model's figures are judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Basis {
    /// Another version of the serving model (same name and labels): compared with the previous
    /// version on the same cameras.
    Retrain,
    /// Another model: judged on its own figures, `promised` being its detections on its
    /// bundle's reference frame.
    NewModel { promised: usize },
}

/// Judges `candidate` (the new model since activation) against `baseline` (the previous model on
/// the same cameras before it), as `basis` says.
pub fn judge(baseline: &Window, candidate: &Window, t: &Thresholds, basis: Basis) -> Verdict {
    if candidate.frames < t.min_frames {
        return Verdict::Wait;
    }
    let mut why = Vec::new();
    let (miss_old, miss_new) = (baseline.rate(baseline.deadline_misses), candidate.rate(candidate.deadline_misses));
    if miss_new - miss_old > t.max_miss_rate_rise {
        why.push(format!(
            "deadline misses rose from {:.1} % to {:.1} % of frames (allowed: +{:.1} points)",
            miss_old * 100.0,
            miss_new * 100.0,
            t.max_miss_rate_rise * 100.0
        ));
    }
    let errors = candidate.rate(candidate.errors);
    if errors > t.max_error_rate {
        why.push(format!("{:.1} % of frames failed (allowed: {:.1} %)", errors * 100.0, t.max_error_rate * 100.0));
    }
    let (old, new) = (baseline.detections_per_frame(), candidate.detections_per_frame());
    if let Basis::NewModel { promised } = basis {
        if candidate.detections == 0 && baseline.detections > 0 && promised > 0 {
            why.push(format!(
                "the new model detected nothing in {} frames, where the previous model detected {old:.2} per frame \
                 and its own reference frame gave {promised} detection(s): its pre-processing conventions are the \
                 first suspects (check them with vigil model pack --expect)",
                candidate.frames
            ));
        }
        return if why.is_empty() { Verdict::Pass } else { Verdict::Fail(why) };
    }
    if old > 0.0 && new / old < t.min_detection_ratio {
        why.push(format!(
            "{new:.2} detections per frame against {old:.2} for the previous model ({:.1} %, allowed down to {:.1} %)",
            100.0 * new / old,
            100.0 * t.min_detection_ratio
        ));
    }
    let shift = psi(&baseline.scores, &candidate.scores);
    if shift > t.max_score_psi {
        why.push(format!("the score distribution shifted: PSI {shift:.2} (allowed: {:.2})", t.max_score_psi));
    }
    if why.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(why)
    }
}

/// What the scheduler's thread records for the canary: the serving model's recent frames (two
/// rotating windows of `size` frames, so the baseline is always the last `size` to `2 × size`
/// frames), and, from an activation until the verdict, the new model's frames apart.
#[derive(Debug, Clone)]
pub struct Recorder {
    size: u64,
    older: Window,
    newer: Window,
    /// (the previous model's recent frames, the new model's frames since activation)
    canary: Option<(Window, Window)>,
}

impl Recorder {
    pub fn new(size: u64) -> Self {
        Self { size: size.max(1), older: Window::default(), newer: Window::default(), canary: None }
    }

    fn serving(&mut self) -> &mut Window {
        if let Some((_, candidate)) = &mut self.canary {
            return candidate;
        }
        if self.newer.attempts() >= self.size {
            self.older = std::mem::take(&mut self.newer);
        }
        &mut self.newer
    }

    pub fn frame(&mut self, scores: impl IntoIterator<Item = f32>) {
        self.serving().frame(scores);
    }

    /// Sizes the recent windows for a canary of `min_frames` (a request may ask for another
    /// size than the configured one); takes effect as the windows turn over.
    pub fn resize(&mut self, min_frames: u64) {
        self.size = min_frames.max(1);
    }

    pub fn deadline_misses(&mut self, n: u64) {
        self.serving().deadline_misses += n;
    }

    pub fn errors(&mut self, n: u64) {
        self.serving().errors += n;
    }

    /// The serving model's recent frames.
    pub fn recent(&self) -> Window {
        let mut w = self.older.clone();
        w.merge(&self.newer);
        w
    }

    /// A model was just activated: `baseline` (the previous model's figures) is what it is judged
    /// against; its own frames are counted apart from now on.
    pub fn start_canary(&mut self, baseline: Window) {
        self.canary = Some((baseline, Window::default()));
    }

    /// (baseline, candidate) while a canary runs.
    pub fn canary(&self) -> Option<(Window, Window)> {
        self.canary.clone()
    }

    /// The verdict is in: the model serving from now on starts a fresh recent window.
    pub fn end_canary(&mut self) {
        self.canary = None;
        self.older = Window::default();
        self.newer = Window::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `frames` frames, each with detections of these scores.
    fn window(frames: u64, per_frame: &[f32]) -> Window {
        let mut w = Window::default();
        for _ in 0..frames {
            w.frame(per_frame.iter().copied());
        }
        w
    }

    /// `frames` frames of 2 or 3 detections with scores spread over 0.5..1 (a deterministic
    /// xorshift from `seed`): one model's behaviour, sampled twice with two seeds.
    fn spread(frames: u64, seed: u32) -> Window {
        let mut x = seed.max(1);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut w = Window::default();
        for _ in 0..frames {
            let n = 2 + next() % 2;
            let scores: Vec<f32> = (0..n).map(|_| 0.5 + (next() % 1000) as f32 / 2000.0).collect();
            w.frame(scores);
        }
        w
    }

    #[test]
    fn the_same_behaviour_passes_and_too_few_frames_wait() {
        let old = spread(1000, 7);
        let t = Thresholds::default();
        assert_eq!(judge(&old, &spread(299, 11), &t, Basis::Retrain), Verdict::Wait);
        assert_eq!(judge(&old, &spread(400, 11), &t, Basis::Retrain), Verdict::Pass);
        assert!(psi(&old.scores, &spread(400, 11).scores) < 0.1, "two samples of one behaviour are stable");
        assert!(psi(&old.scores, &old.scores).abs() < 1e-12);
    }

    #[test]
    fn a_model_that_detects_far_less_fails_with_its_figures() {
        // Its score threshold raised: only the most confident detection survives.
        let old = window(1000, &[0.9, 0.8, 0.6]);
        let Verdict::Fail(why) = judge(&old, &window(400, &[0.9]), &Thresholds::default(), Basis::Retrain) else {
            panic!("must fail")
        };
        assert!(why.iter().any(|w| w.contains("1.00 detections per frame against 3.00")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("PSI")), "the score distribution moved too: {why:?}");
    }

    #[test]
    fn misses_errors_and_a_score_shift_each_fail() {
        let t = Thresholds::default();
        let old = window(1000, &[0.9, 0.7]);
        let mut slow = window(400, &[0.9, 0.7]);
        (0..40).for_each(|_| slow.deadline_miss());
        let Verdict::Fail(why) = judge(&old, &slow, &t, Basis::Retrain) else { panic!("misses") };
        assert!(why[0].contains("deadline misses rose from 0.0 % to 9.1 %"), "{why:?}");
        let mut failing = window(400, &[0.9, 0.7]);
        (0..10).for_each(|_| failing.error());
        let Verdict::Fail(why) = judge(&old, &failing, &t, Basis::Retrain) else { panic!("errors") };
        assert!(why[0].contains("2.4 % of frames failed"), "{why:?}");
        // Same count, scores collapsed towards the threshold: a different model in disguise.
        let Verdict::Fail(why) = judge(&old, &window(400, &[0.35, 0.31]), &t, Basis::Retrain) else { panic!("shift") };
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("PSI"), "{why:?}");
    }

    #[test]
    fn a_new_model_is_judged_on_its_own_figures_not_on_its_difference() {
        let t = Thresholds::default();
        let old = window(1000, &[0.9, 0.8, 0.6]);
        let other = Basis::NewModel { promised: 4 };
        // Fewer detections, other scores: a retrain that did this fails, another model passes.
        let different = window(400, &[0.4]);
        assert!(matches!(judge(&old, &different, &t, Basis::Retrain), Verdict::Fail(_)));
        assert_eq!(judge(&old, &different, &t, other), Verdict::Pass);
        // Silence where the previous model saw objects and its reference promised some.
        let Verdict::Fail(why) = judge(&old, &window(400, &[]), &t, other) else { panic!("silence") };
        assert!(why[0].contains("detected nothing in 400 frames") && why[0].contains("gave 4 detection(s)"), "{why:?}");
        // Not when the scene is empty, or the reference promised nothing.
        assert_eq!(judge(&window(1000, &[]), &window(400, &[]), &t, other), Verdict::Pass);
        assert_eq!(judge(&old, &window(400, &[]), &t, Basis::NewModel { promised: 0 }), Verdict::Pass);
        // Its own misses and errors still count.
        let mut slow = window(400, &[0.9]);
        (0..40).for_each(|_| slow.deadline_miss());
        assert!(matches!(judge(&old, &slow, &t, other), Verdict::Fail(_)));
        assert_eq!(judge(&old, &window(299, &[]), &t, other), Verdict::Wait);
    }

    #[test]
    fn the_recorder_keeps_recent_frames_and_counts_a_canary_apart() {
        let mut r = Recorder::new(10);
        for _ in 0..25 {
            r.frame([0.9]);
        }
        r.deadline_misses(2);
        let recent = r.recent();
        assert_eq!((recent.frames, recent.deadline_misses), (15, 2), "the last 10 to 20 attempts");
        r.start_canary(recent.clone());
        r.frame([0.5, 0.6]);
        r.errors(1);
        let (baseline, candidate) = r.canary().unwrap();
        assert_eq!(baseline, recent);
        assert_eq!((candidate.frames, candidate.detections, candidate.errors), (1, 2, 1));
        r.end_canary();
        assert_eq!(r.canary(), None);
        r.frame([]);
        assert_eq!(r.recent().frames, 1, "the model now serving starts afresh");
        r.resize(100);
        (0..150).for_each(|_| r.frame([]));
        assert_eq!(r.recent().frames, 151, "a larger canary keeps a larger baseline");
    }
}
