//! `vigil model compare`: a candidate model (an INT8 quantisation, a retrained version) against a
//! reference model on the same input tensors, in what matters downstream: the detections. The
//! reference's detections stand in for the truth; the candidate's precision and recall against
//! them say how much the change costs.

use crate::{Detection, Detector, InferError};

/// Two detections are the same object when their classes agree and their boxes overlap this much.
pub const MATCH_IOU: f32 = 0.5;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    pub tensors: usize,
    pub reference_detections: usize,
    pub candidate_detections: usize,
    pub matched: usize,
    /// Mean |candidate score − reference score| over matched detections.
    pub mean_score_change: f32,
}

impl Comparison {
    /// Matched / candidate detections (1 when the candidate found nothing).
    pub fn precision(&self) -> f32 {
        if self.candidate_detections == 0 {
            1.0
        } else {
            self.matched as f32 / self.candidate_detections as f32
        }
    }

    /// Matched / reference detections (1 when the reference found nothing).
    pub fn recall(&self) -> f32 {
        if self.reference_detections == 0 {
            1.0
        } else {
            self.matched as f32 / self.reference_detections as f32
        }
    }
}

/// Greedy one-to-one matching of `a` with `b`, best overlap first, pairs of one class
/// overlapping at least `min_iou`: the matched pairs as (IoU, index in `a`, index in `b`).
pub fn greedy_pairs(a: &[Detection], b: &[Detection], min_iou: f32) -> Vec<(f32, usize, usize)> {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            let o = x.bbox.iou(&y.bbox);
            if x.class_id == y.class_id && o >= min_iou {
                pairs.push((o, i, j));
            }
        }
    }
    pairs.sort_by(|p, q| q.0.total_cmp(&p.0));
    let (mut used_a, mut used_b) = (vec![false; a.len()], vec![false; b.len()]);
    pairs.retain(|&(_, i, j)| {
        let free = !used_a[i] && !used_b[j];
        if free {
            (used_a[i], used_b[j]) = (true, true);
        }
        free
    });
    pairs
}

/// Greedy one-to-one matching, best overlap first: (matched pairs' score changes).
pub fn match_detections(reference: &[Detection], candidate: &[Detection]) -> Vec<f32> {
    greedy_pairs(reference, candidate, MATCH_IOU)
        .into_iter()
        .map(|(_, i, j)| (candidate[j].score - reference[i].score).abs())
        .collect()
}

/// Runs both detectors on every tensor (each one image's input, in model-input pixels).
pub fn compare(
    reference: &mut Detector,
    candidate: &mut Detector,
    tensors: impl IntoIterator<Item = Vec<f32>>,
) -> Result<Comparison, InferError> {
    let mut c = Comparison::default();
    let mut score_change = 0.0f32;
    for t in tensors {
        let r = reference.infer_raw(&t)?.to_vec();
        let r = reference.decode(&r);
        let k = candidate.infer_raw(&t)?.to_vec();
        let k = candidate.decode(&k);
        let changes = match_detections(&r, &k);
        c.tensors += 1;
        c.reference_detections += r.len();
        c.candidate_detections += k.len();
        c.matched += changes.len();
        score_change += changes.iter().sum::<f32>();
    }
    c.mean_score_change = if c.matched > 0 { score_change / c.matched as f32 } else { 0.0 };
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BBox;

    fn det(class_id: usize, score: f32, x: f32) -> Detection {
        Detection { class_id, score, bbox: BBox { x1: x, y1: 0.0, x2: x + 10.0, y2: 10.0 } }
    }

    #[test]
    fn detections_match_one_to_one_by_class_and_overlap() {
        let reference = [det(0, 0.9, 0.0), det(1, 0.8, 50.0), det(0, 0.7, 100.0)];
        // The first is found (score 0.85), the second as another class, the third moved away;
        // a duplicate of the first, overlapping it less, does not match twice.
        let candidate = [det(0, 0.85, 1.0), det(2, 0.8, 50.0), det(0, 0.7, 130.0), det(0, 0.6, 3.0)];
        let changes = match_detections(&reference, &candidate);
        assert_eq!(changes.len(), 1);
        assert!((changes[0] - 0.05).abs() < 1e-6);
        let c = Comparison {
            tensors: 1,
            reference_detections: 3,
            candidate_detections: 4,
            matched: 1,
            ..Default::default()
        };
        assert_eq!((c.precision(), c.recall()), (0.25, 1.0 / 3.0));
        assert_eq!(Comparison::default().recall(), 1.0, "nothing to find: nothing missed");
    }
}
