//! The exporter's truth: detections that the model author's own pipeline gives on a picture, in
//! that picture's pixels, against what vigil's pre-processing gives with the bundle's conventions.
//!
//! A bundle's own reference (input tensor, output, detections) is computed with the bundle's
//! conventions, so it agrees with itself whatever they are: packed with RGB where the model was
//! trained on BGR, every self-check passes. Only the exporter's detections on the same picture
//! can tell. `vigil model pack --expect` compares them before it writes a bundle, and a device
//! compares them again at acceptance (the bundle carries the picture and the file). When they
//! differ, [`diagnose`] runs the model with each other combination of the conventions an exporter
//! can differ in (colour order, placement, scale, size rounding) and names the one that agrees.

use std::path::Path;

use serde::Deserialize;

use crate::bundle::{ColorOrder, InputSection, LetterboxMode, SizeRounding};
use crate::transform::{self, Pixels};
use crate::{BBox, Choice, Detection, Detector, Image, InferError};

/// Two detections are the same object when they overlap this much (and name one class).
pub const MATCH_IOU: f32 = 0.9;

/// A detection whose score is within this of the score threshold may be on either side of it in
/// two pipelines whose pixels differ by a rounding: it need not be matched.
pub const SCORE_MARGIN: f32 = 0.05;

/// One line of an expected-detections file: `{"label": "person", "score": 0.91,
/// "box": [x1, y1, x2, y2]}` in the picture's pixels; `class_id` may stand for, or go with,
/// `label`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    class_id: Option<usize>,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

/// Reads an expected-detections file (a JSON array, see models/README.md) against the model's
/// `labels`; every problem found is named.
pub fn read_expected(path: &Path, labels: &[String]) -> Result<Vec<Detection>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lines: Vec<Line> = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{} is not an expected-detections file ({e}); it is a JSON array of {{\"label\", \"score\", \"box\": \
             [x1, y1, x2, y2]}} in the picture's pixels (models/README.md)",
            path.display()
        )
    })?;
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let by_label = l.label.as_ref().map(|n| (n, labels.iter().position(|x| x == n)));
        let class_id = match (by_label, l.class_id) {
            (Some((name, None)), _) => {
                problems.push(format!("detection {i}: label `{name}` is not one of the model's labels {labels:?}"));
                continue;
            }
            (Some((name, Some(a))), Some(b)) if a != b => {
                problems.push(format!("detection {i}: label `{name}` is class {a}, the line says class_id {b}"));
                continue;
            }
            (Some((_, Some(a))), _) => a,
            (None, Some(b)) if b < labels.len() => b,
            (None, Some(b)) => {
                problems.push(format!("detection {i}: class_id {b}, the model has {} labels", labels.len()));
                continue;
            }
            (None, None) => {
                problems.push(format!("detection {i}: give its `label` or `class_id`"));
                continue;
            }
        };
        let [x1, y1, x2, y2] = l.bbox;
        if !l.bbox.iter().all(|v| v.is_finite()) || x2 <= x1 || y2 <= y1 {
            problems.push(format!("detection {i}: box {:?} is not [x1, y1, x2, y2] with x1 < x2, y1 < y2", l.bbox));
            continue;
        }
        if !(0.0..=1.0).contains(&l.score) {
            problems.push(format!("detection {i}: score {} is not between 0 and 1", l.score));
            continue;
        }
        out.push(Detection { class_id, score: l.score, bbox: BBox { x1, y1, x2, y2 } });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(format!("{}:\n  - {}", path.display(), problems.join("\n  - ")))
    }
}

/// How vigil's detections compare with the exporter's on one picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub expected: usize,
    pub got: usize,
    /// Pairs of one class overlapping at least [`MATCH_IOU`].
    pub matched: usize,
    /// Expected detections clear of the threshold that vigil did not give.
    pub missing: usize,
    /// vigil's detections clear of the threshold that the exporter did not give.
    pub extra: usize,
    /// The smallest overlap among the matched pairs (1 when none).
    pub min_iou: f32,
    /// The largest score difference among the matched pairs.
    pub max_score_diff: f32,
}

impl Agreement {
    pub fn agrees(&self) -> bool {
        self.missing == 0 && self.extra == 0
    }

    pub fn summary(&self) -> String {
        let closeness = if self.matched == 0 {
            String::new()
        } else {
            format!("; smallest IoU {:.3}, largest score difference {:.3}", self.min_iou, self.max_score_diff)
        };
        format!(
            "exporter {} detection(s), vigil {}, {} matched (same class, IoU ≥ {MATCH_IOU}{closeness}), {} missing, \
             {} extra",
            self.expected, self.got, self.matched, self.missing, self.extra
        )
    }
}

/// Matches `got` with `expected` one to one, best overlap first. Detections scored below
/// `threshold` + [`SCORE_MARGIN`] may go unmatched on either side.
pub fn agree(expected: &[Detection], got: &[Detection], threshold: f32) -> Agreement {
    let pairs = crate::compare::greedy_pairs(expected, got, MATCH_IOU);
    let (mut used_e, mut used_g) = (vec![false; expected.len()], vec![false; got.len()]);
    let (mut min_iou, mut max_score_diff) = (1.0f32, 0.0f32);
    for &(o, i, j) in &pairs {
        (used_e[i], used_g[j]) = (true, true);
        min_iou = min_iou.min(o);
        max_score_diff = max_score_diff.max((expected[i].score - got[j].score).abs());
    }
    let matched = pairs.len();
    let clear = threshold + SCORE_MARGIN;
    let unmatched =
        |dets: &[Detection], used: &[bool]| dets.iter().zip(used).filter(|(d, &u)| !u && d.score >= clear).count();
    Agreement {
        expected: expected.len(),
        got: got.len(),
        matched,
        missing: unmatched(expected, &used_e),
        extra: unmatched(got, &used_g),
        min_iou,
        max_score_diff,
    }
}

/// `detector`'s model on `image` (`source` size) pre-processed with `conventions` instead of the
/// bundle's own: detections in source pixels.
pub fn detect_with(
    detector: &mut Detector,
    conventions: &InputSection,
    image: Image<'_>,
    source: (u32, u32),
) -> Result<Vec<Detection>, InferError> {
    let input = detector.input_size();
    let pixels = match image.bytes_per_pixel {
        4 => Pixels::Rgba { data: image.data, stride: image.stride },
        _ => Pixels::Rgb { data: image.data, stride: image.stride },
    };
    let t = conventions.transform(source, input);
    let mut tensor = vec![0.0f32; t.len()];
    transform::reference(&pixels, &t, &mut tensor);
    let raw = detector.infer_raw(&tensor)?.to_vec();
    let letterbox = conventions.letterbox(source, input);
    let mut dets = detector.decode(&raw);
    for d in &mut dets {
        d.bbox = letterbox.to_source(&d.bbox);
    }
    Ok(dets)
}

/// A set of conventions other than the bundle's, and what differs, as the manifest and `vigil
/// model pack` spell it.
#[derive(Debug, Clone)]
pub struct Variant {
    pub conventions: InputSection,
    pub changes: Vec<String>,
}

fn scale_name(s: f32) -> String {
    if (s - 1.0 / 255.0).abs() < 1e-7 {
        "1/255".to_owned()
    } else {
        format!("{s}")
    }
}

/// Every other combination of colour order, placement, scale (1 and 1/255) and size rounding,
/// fewest changes first.
pub fn variants(base: &InputSection) -> Vec<Variant> {
    let colors = [ColorOrder::Rgb, ColorOrder::Bgr];
    let anchors = [LetterboxMode::Center, LetterboxMode::TopLeft];
    let roundings = [SizeRounding::Round, SizeRounding::Floor];
    let mut scales = vec![base.scale];
    for s in [1.0 / 255.0, 1.0] {
        if (s - base.scale).abs() > 1e-9 {
            scales.push(s);
        }
    }
    let mut out = Vec::new();
    for color in colors {
        for anchor in anchors {
            for rounding in roundings {
                for &scale in &scales {
                    let mut c = base.clone();
                    let mut changes = Vec::new();
                    if base.color.known() != Some(color) {
                        let (m, f) = if color == ColorOrder::Bgr { ("BGR", "bgr") } else { ("RGB", "rgb") };
                        changes.push(format!("input.color = \"{m}\" (pack --color {f})"));
                        c.color = Choice::Known(color);
                    }
                    if base.letterbox.known() != Some(anchor) {
                        let name = if anchor == LetterboxMode::TopLeft { "top-left" } else { "center" };
                        changes.push(format!("input.letterbox = \"{name}\" (pack --letterbox {name})"));
                        c.letterbox = Choice::Known(anchor);
                    }
                    if base.size_rounding.known() != Some(rounding) {
                        let name = rounding.name();
                        changes.push(format!("input.size_rounding = \"{name}\" (pack --size-rounding {name})"));
                        c.size_rounding = Choice::Known(rounding);
                    }
                    if (scale - base.scale).abs() > 1e-9 {
                        changes.push(format!("input.scale = {} (pack --scale {scale})", scale_name(scale)));
                        c.scale = scale;
                    }
                    if !changes.is_empty() {
                        out.push(Variant { conventions: c, changes });
                    }
                }
            }
        }
    }
    out.sort_by_key(|v| v.changes.len());
    out
}

/// After a disagreement: the first (fewest changes) other set of conventions under which the
/// model's detections agree with the exporter's, if any.
pub fn diagnose(
    detector: &mut Detector,
    base: &InputSection,
    image: Image<'_>,
    source: (u32, u32),
    expected: &[Detection],
    threshold: f32,
) -> Result<Option<(Variant, Agreement)>, InferError> {
    for v in variants(base) {
        let got = detect_with(detector, &v.conventions, image, source)?;
        let a = agree(expected, &got, threshold);
        if a.agrees() {
            return Ok(Some((v, a)));
        }
    }
    Ok(None)
}

/// The whole check, as pack and acceptance run it: Ok(agreement) when the service path
/// (`detector`, the bundle's conventions) gives the exporter's detections; otherwise one message
/// saying what differs and which conventions would agree.
pub fn check(
    detector: &mut Detector,
    base: &InputSection,
    image: Image<'_>,
    source: (u32, u32),
    expected: &[Detection],
    threshold: f32,
) -> Result<Agreement, String> {
    let run = |e: InferError| format!("the model failed on the reference picture: {e}");
    let got = detector.detect(image, source).map_err(run)?;
    let a = agree(expected, &got, threshold);
    if a.agrees() {
        return Ok(a);
    }
    let head = format!("vigil's detections on the reference picture differ from the exporter's: {}", a.summary());
    Err(match diagnose(detector, base, image, source, expected, threshold).map_err(run)? {
        Some((v, b)) => format!(
            "{head}. With {} they agree ({} matched): the bundle's pre-processing conventions are wrong; re-pack \
             with that",
            v.changes.join(" and "),
            b.matched
        ),
        None => format!(
            "{head}. No other colour order, placement, scale (1 or 1/255) or size rounding makes them agree: check \
             mean and std, the pad value, the output format, and that the exporter ran with the bundle's score \
             threshold ({threshold}) and NMS IoU"
        ),
    })
}

/// [`check`] on a bundle's own reference picture and expected detections, if it carries them
/// (`vigil model pack --expect`); `Ok(None)` when it does not.
pub fn check_bundle(bundle: &crate::Bundle, detector: &mut Detector) -> Result<Option<Agreement>, String> {
    let Some(e) = bundle.expected().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let image = Image::rgb(&e.rgb, e.size.0 as usize * 3);
    let threshold = bundle.manifest.postprocess.score_threshold;
    check(detector, &bundle.manifest.input, image, e.size, &e.detections, threshold).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: usize, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
        Detection { class_id, score, bbox: BBox { x1, y1, x2, y2 } }
    }

    #[test]
    fn agreement_matches_one_to_one_and_forgives_only_scores_at_the_threshold() {
        let expected = [det(0, 0.9, 10.0, 10.0, 50.0, 50.0), det(1, 0.8, 100.0, 100.0, 140.0, 160.0)];
        let same = [det(1, 0.79, 100.5, 100.0, 140.0, 160.5), det(0, 0.91, 10.0, 10.5, 50.0, 50.0)];
        let a = agree(&expected, &same, 0.25);
        assert!(a.agrees(), "{a:?}");
        assert_eq!(a.matched, 2);
        assert!((a.max_score_diff - 0.01).abs() < 1e-4);

        // A box moved by a fifth of its size is another box; a class swap is another detection.
        let moved = [det(0, 0.9, 18.0, 10.0, 58.0, 50.0), det(0, 0.8, 100.0, 100.0, 140.0, 160.0)];
        let b = agree(&expected, &moved, 0.25);
        assert_eq!((b.matched, b.missing, b.extra), (0, 2, 2));
        assert!(!b.agrees());

        // One at the threshold may be on either side; one well above it may not be missing.
        let faint = [det(0, 0.9, 10.0, 10.0, 50.0, 50.0), det(1, 0.27, 100.0, 100.0, 140.0, 160.0)];
        assert!(agree(&faint, &expected[..1], 0.25).agrees());
        assert!(!agree(&expected, &expected[..1], 0.25).agrees());
        // Two copies of one box match once.
        let twice = [expected[0].clone(), expected[0].clone()];
        assert_eq!(agree(&expected[..1], &twice, 0.25).extra, 1);
    }

    #[test]
    fn variants_name_each_change_fewest_first() {
        let manifest: crate::bundle::Manifest = toml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/bundles/shapes-v1/manifest.toml"
            ))
            .unwrap(),
        )
        .unwrap();
        let v = variants(&manifest.input);
        // 2 colours × 2 placements × 2 roundings × 2 scales (1/255 and 1), less the bundle's own.
        assert_eq!(v.len(), 15);
        assert!(v.windows(2).all(|w| w[0].changes.len() <= w[1].changes.len()));
        let singles: Vec<&str> = v.iter().filter(|v| v.changes.len() == 1).map(|v| v.changes[0].as_str()).collect();
        assert_eq!(singles.len(), 4, "{singles:?}");
        assert!(singles.iter().any(|c| c.starts_with("input.color = \"BGR\" (pack --color bgr)")), "{singles:?}");
        assert!(singles.iter().any(|c| c.contains("--letterbox top-left")), "{singles:?}");
        assert!(singles.iter().any(|c| c.contains("--scale 1)")), "{singles:?}");
        assert!(singles.iter().any(|c| c.contains("--size-rounding floor")), "{singles:?}");
        let bgr = v.iter().find(|v| v.changes.len() == 1 && v.changes[0].contains("BGR")).unwrap();
        assert!(bgr.conventions.bgr() && bgr.conventions.scale == manifest.input.scale);
    }

    #[test]
    fn expected_files_are_read_against_the_labels_with_every_problem_named() {
        let dir = tempfile::tempdir().unwrap();
        let labels: Vec<String> = ["person", "car"].map(String::from).to_vec();
        let path = dir.path().join("e.json");
        std::fs::write(
            &path,
            r#"[{"label": "car", "score": 0.5, "box": [1, 2, 3, 4]},
                {"class_id": 0, "score": 0.7, "box": [5, 6, 7, 8]}]"#,
        )
        .unwrap();
        let got = read_expected(&path, &labels).unwrap();
        assert_eq!((got[0].class_id, got[1].class_id), (1, 0));
        assert_eq!(got[1].bbox, BBox { x1: 5.0, y1: 6.0, x2: 7.0, y2: 8.0 });

        std::fs::write(
            &path,
            r#"[{"label": "dog", "score": 0.5, "box": [1, 2, 3, 4]},
                {"label": "car", "class_id": 0, "score": 0.5, "box": [1, 2, 3, 4]},
                {"score": 0.5, "box": [1, 2, 3, 4]},
                {"label": "car", "score": 0.5, "box": [3, 2, 1, 4]},
                {"label": "car", "score": 7, "box": [1, 2, 3, 4]}]"#,
        )
        .unwrap();
        let e = read_expected(&path, &labels).unwrap_err();
        for needle in [
            "`dog` is not one of",
            "is class 1, the line says class_id 0",
            "`label` or `class_id`",
            "x1 < x2",
            "score 7",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        std::fs::write(&path, r#"{"detections": []}"#).unwrap();
        assert!(read_expected(&path, &labels).unwrap_err().contains("JSON array"));
    }
}
