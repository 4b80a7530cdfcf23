//! `vigil model-check`: runs a bundle's reference input through the chosen backend and compares
//! the raw output with the bundle's INT8 reference output (within the manifest's tolerance) and
//! the decoded detections with the reference detections. It is how an ML engineer checks a
//! bundle before pushing it, and how a Jetson proves its TensorRT engine (`make jetson-check`).

use serde::Deserialize;

use super::{Bundle, Detection, Detector, InferError};

/// Score and position slack for "the same detection" between runtimes.
pub const SCORE_TOLERANCE: f32 = 0.01;
pub const PIXEL_TOLERANCE: f32 = 1.0;

#[derive(Debug, Clone, Deserialize)]
pub struct RefDetection {
    pub label: String,
    pub class_id: usize,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

#[derive(Debug, Clone)]
pub struct ModelCheck {
    pub backend: String,
    pub max_abs_diff: f32,
    pub tolerance: f32,
    pub detections: usize,
    /// Empty when the check passed.
    pub problems: Vec<String>,
}

impl ModelCheck {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Compares `got` with the reference detections; one line per difference.
pub fn compare_detections(
    labels: &[String],
    got: &[Detection],
    want: &[RefDetection],
    score_tol: f32,
    px_tol: f32,
) -> Vec<String> {
    if got.len() != want.len() {
        return vec![format!("{} detections, the reference has {}", got.len(), want.len())];
    }
    let mut problems = Vec::new();
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        let label = labels.get(g.class_id).map_or("?", String::as_str);
        if g.class_id != e.class_id || label != e.label {
            problems.push(format!(
                "detection {i}: {label} (class {}), the reference says {} ({})",
                g.class_id, e.label, e.class_id
            ));
            continue;
        }
        if (g.score - e.score).abs() > score_tol {
            problems.push(format!("detection {i} ({label}): score {:.4} vs {:.4}", g.score, e.score));
        }
        let gb = [g.bbox.x1, g.bbox.y1, g.bbox.x2, g.bbox.y2];
        if gb.iter().zip(&e.bbox).any(|(a, b)| (a - b).abs() > px_tol) {
            problems.push(format!("detection {i} ({label}): box {gb:?} vs {:?}", e.bbox));
        }
    }
    problems
}

pub fn reference_detections(bundle: &Bundle) -> Result<Vec<RefDetection>, InferError> {
    let invalid =
        |p: String| InferError::Bundle(super::BundleError::Invalid { dir: bundle.dir.clone(), problems: vec![p] });
    let reference =
        bundle.manifest.reference.as_ref().ok_or_else(|| invalid("the bundle has no [reference] section".into()))?;
    let path = bundle.dir.join(&reference.detections);
    let bytes = std::fs::read(&path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// Runs the check on `detector` (the bundle's model on some backend).
pub fn check_model(bundle: &Bundle, detector: &mut Detector) -> Result<ModelCheck, InferError> {
    let want = reference_detections(bundle)?;
    let reference = bundle.manifest.reference.clone().expect("reference_detections checked it");
    let input = bundle.read_f32(&reference.input)?;
    let expected = bundle.read_f32(&reference.output)?;
    if input.len() != bundle.input_len() {
        return Err(InferError::Model {
            model: bundle.manifest.model.name.clone(),
            message: format!(
                "reference input has {} values, the input shape needs {}",
                input.len(),
                bundle.input_len()
            ),
        });
    }
    let backend = detector.backend_name().to_owned();
    let got = detector.infer_raw(&input)?.to_vec();
    let mut problems = Vec::new();
    let max_abs_diff = if got.len() == expected.len() {
        // NaN from a broken engine counts as infinitely far off (f32::max would skip it).
        got.iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .map(|d| if d.is_nan() { f32::INFINITY } else { d })
            .fold(0.0f32, f32::max)
    } else {
        problems.push(format!("output has {} values, the reference {}", got.len(), expected.len()));
        f32::INFINITY
    };
    if max_abs_diff > reference.tolerance {
        problems.push(format!(
            "max |output − reference| = {max_abs_diff} is over the manifest's tolerance {}",
            reference.tolerance
        ));
    }
    let dets = detector.decode(&got);
    problems.extend(compare_detections(detector.labels(), &dets, &want, SCORE_TOLERANCE, PIXEL_TOLERANCE));
    Ok(ModelCheck { backend, max_abs_diff, tolerance: reference.tolerance, detections: dets.len(), problems })
}
