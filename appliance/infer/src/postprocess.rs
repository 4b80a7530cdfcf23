//! Turning raw model output into detections: decoders for the output layouts people export
//! ([`OutputLayout`]) and class-aware NMS. The letterbox mapping back to source-frame pixels is
//! [`vigil_core::geometry::Letterbox`].

pub use vigil_core::geometry::{BBox, Detection, Letterbox};

use crate::bundle::OutputFormat;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Decodes a `vigil-grid-v1` tensor `[1, 5 + C, G, G]` (raw values):
/// per cell (gy, gx) with t = grid[0, :, gy, gx] and stride s,
/// objectness = σ(t0), centre = ((gx + σ(t1))·s, (gy + σ(t2))·s), size = (e^t3·s, e^t4·s),
/// class probability = σ(t5+c), score = objectness · max class probability.
/// Returns candidates with score ≥ `threshold`, in input pixels.
pub fn decode_grid(
    grid: &[f32],
    classes: usize,
    grid_h: usize,
    grid_w: usize,
    stride: f32,
    threshold: f32,
) -> Vec<Detection> {
    let plane = grid_h * grid_w;
    assert_eq!(grid.len(), (5 + classes) * plane, "grid tensor length does not match its shape");
    let at = |ch: usize, cell: usize| grid[ch * plane + cell];
    // σ(t0)·max σ(t5+c) ≥ threshold needs σ(t0) ≥ threshold: test the cheap bound first.
    let obj_logit_min =
        if threshold > 0.0 && threshold < 1.0 { (threshold / (1.0 - threshold)).ln() } else { f32::MIN };
    let mut out = Vec::new();
    for gy in 0..grid_h {
        for gx in 0..grid_w {
            let cell = gy * grid_w + gx;
            let t0 = at(0, cell);
            if t0 < obj_logit_min {
                continue;
            }
            let (class_id, best) = (0..classes).map(|c| (c, at(5 + c, cell))).fold((0, f32::MIN), max_by_score);
            let score = sigmoid(t0) * sigmoid(best);
            if score < threshold {
                continue;
            }
            let cx = (gx as f32 + sigmoid(at(1, cell))) * stride;
            let cy = (gy as f32 + sigmoid(at(2, cell))) * stride;
            let w = at(3, cell).exp() * stride;
            let h = at(4, cell).exp() * stride;
            out.push(Detection { class_id, score, bbox: centre_box(cx, cy, w, h) });
        }
    }
    out
}

/// The output layouts vigil decodes, named by `output.format` in a bundle's manifest. Shapes
/// are per image (batch dimension 1).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputLayout {
    /// `vigil-grid-v1`: `[1, 5 + C, G, G]` raw logits, see [`decode_grid`].
    VigilGrid { classes: usize, grid_h: usize, grid_w: usize, stride: f32 },
    /// `yolov5`: `[1, N, 5 + C]`, rows `cx, cy, w, h` (input pixels), objectness, class
    /// probabilities (sigmoid already applied by the export). Score = objectness × best class.
    YoloV5 { classes: usize, boxes: usize },
    /// `yolov8` (also YOLO11): `[1, 4 + C, N]`, channel-major: `cx, cy, w, h` then class
    /// probabilities, no objectness. Score = best class.
    YoloV8 { classes: usize, boxes: usize },
    /// `yolox`: `[1, N, 5 + C]` as exported without `decode_in_inference`: per anchor point of
    /// the stride-8, -16 and -32 grids (in that order, row-major), `x, y` offsets in cells and
    /// `log w, log h` in strides, then objectness and class probabilities (sigmoid applied).
    Yolox { classes: usize, grids: Vec<(usize, usize, f32)> },
}

/// Strides of the YOLOX heads.
const YOLOX_STRIDES: [u32; 3] = [8, 16, 32];

impl OutputLayout {
    /// The layout for `format`, checked against the output `shape`, the number of `classes` and
    /// the model's input size; the error says what was expected.
    pub fn new(format: OutputFormat, shape: &[i64], classes: usize, input: (u32, u32)) -> Result<Self, String> {
        let c = classes as i64;
        let dims = |n: usize| shape.len() == n && shape[0] == 1 && shape[1..].iter().all(|&d| d > 0);
        let (in_w, in_h) = input;
        match format {
            OutputFormat::VigilGridV1 => {
                if !dims(4) || shape[1] != 5 + c {
                    return Err(format!("output.shape {shape:?} must be [1, 5 + {classes} labels, G, G]"));
                }
                let (gh, gw) = (shape[2] as u32, shape[3] as u32);
                if in_h % gh != 0 || in_w % gw != 0 || in_h / gh != in_w / gw {
                    return Err(format!("output grid {gh}x{gw} does not divide input {in_w}x{in_h} evenly"));
                }
                Ok(Self::VigilGrid { classes, grid_h: gh as usize, grid_w: gw as usize, stride: (in_w / gw) as f32 })
            }
            OutputFormat::YoloV5 => {
                if !dims(3) || shape[2] != 5 + c {
                    return Err(format!("output.shape {shape:?} must be [1, N, 5 + {classes} labels] for yolov5"));
                }
                Ok(Self::YoloV5 { classes, boxes: shape[1] as usize })
            }
            OutputFormat::YoloV8 => {
                if !dims(3) || shape[1] != 4 + c {
                    return Err(format!(
                        "output.shape {shape:?} must be [1, 4 + {classes} labels, N] for yolov8 (channel-major, \
                         as exported by Ultralytics)"
                    ));
                }
                Ok(Self::YoloV8 { classes, boxes: shape[2] as usize })
            }
            OutputFormat::Yolox => {
                if !dims(3) || shape[2] != 5 + c {
                    return Err(format!("output.shape {shape:?} must be [1, N, 5 + {classes} labels] for yolox"));
                }
                if YOLOX_STRIDES.iter().any(|s| in_w % s != 0 || in_h % s != 0) {
                    return Err(format!("yolox needs an input size divisible by 32, not {in_w}x{in_h}"));
                }
                let grids: Vec<(usize, usize, f32)> =
                    YOLOX_STRIDES.iter().map(|&s| ((in_h / s) as usize, (in_w / s) as usize, s as f32)).collect();
                let points: usize = grids.iter().map(|(h, w, _)| h * w).sum();
                if shape[1] as usize != points {
                    return Err(format!(
                        "output.shape {shape:?}: a {in_w}x{in_h} yolox model has {points} anchor points (strides \
                         8, 16, 32), not {}; export it without decode_in_inference",
                        shape[1]
                    ));
                }
                Ok(Self::Yolox { classes, grids })
            }
        }
    }

    /// Values per image.
    pub fn len(&self) -> usize {
        match self {
            Self::VigilGrid { classes, grid_h, grid_w, .. } => (5 + classes) * grid_h * grid_w,
            Self::YoloV5 { classes, boxes } => boxes * (5 + classes),
            Self::YoloV8 { classes, boxes } => boxes * (4 + classes),
            Self::Yolox { classes, grids } => grids.iter().map(|(h, w, _)| h * w).sum::<usize>() * (5 + classes),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidates with score ≥ `threshold`, boxes in model-input pixels (before NMS).
    pub fn decode(&self, out: &[f32], threshold: f32) -> Vec<Detection> {
        assert_eq!(out.len(), self.len(), "output tensor length does not match its layout");
        match self {
            Self::VigilGrid { classes, grid_h, grid_w, stride } => {
                decode_grid(out, *classes, *grid_h, *grid_w, *stride, threshold)
            }
            Self::YoloV5 { classes, .. } => out
                .chunks_exact(5 + classes)
                .filter_map(|row| {
                    let (class_id, p) = best(&row[5..]);
                    let score = row[4] * p;
                    (score >= threshold).then(|| Detection {
                        class_id,
                        score,
                        bbox: centre_box(row[0], row[1], row[2], row[3]),
                    })
                })
                .collect(),
            Self::YoloV8 { classes, boxes } => {
                let at = |ch: usize, i: usize| out[ch * boxes + i];
                let mut dets = Vec::new();
                for i in 0..*boxes {
                    let (class_id, score) = (0..*classes).map(|c| (c, at(4 + c, i))).fold((0, f32::MIN), max_by_score);
                    if score >= threshold {
                        let bbox = centre_box(at(0, i), at(1, i), at(2, i), at(3, i));
                        dets.push(Detection { class_id, score, bbox });
                    }
                }
                dets
            }
            Self::Yolox { classes, grids } => {
                let mut rows = out.chunks_exact(5 + classes);
                let mut dets = Vec::new();
                for &(gh, gw, s) in grids {
                    for gy in 0..gh {
                        for gx in 0..gw {
                            let Some(row) = rows.next() else { return dets };
                            let (class_id, p) = best(&row[5..]);
                            let score = row[4] * p;
                            if score < threshold {
                                continue;
                            }
                            let cx = (row[0] + gx as f32) * s;
                            let cy = (row[1] + gy as f32) * s;
                            let bbox = centre_box(cx, cy, row[2].exp() * s, row[3].exp() * s);
                            dets.push(Detection { class_id, score, bbox });
                        }
                    }
                }
                dets
            }
        }
    }
}

fn max_by_score(acc: (usize, f32), x: (usize, f32)) -> (usize, f32) {
    if x.1 > acc.1 {
        x
    } else {
        acc
    }
}

/// The best class and its probability.
fn best(probs: &[f32]) -> (usize, f32) {
    probs.iter().copied().enumerate().fold((0, f32::MIN), max_by_score)
}

fn centre_box(cx: f32, cy: f32, w: f32, h: f32) -> BBox {
    BBox { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 }
}

/// Class-aware non-maximum suppression: keeps the best-scoring box of each overlapping group of
/// the same class, at most `max` boxes, best first.
pub fn nms(mut dets: Vec<Detection>, iou: f32, max: usize) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.len() >= max {
            break;
        }
        if kept.iter().all(|k| k.class_id != d.class_id || k.bbox.iou(&d.bbox) <= iou) {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        BBox { x1, y1, x2, y2 }
    }

    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(b(0., 0., 10., 10.).iou(&b(0., 0., 10., 10.)), 1.0);
        assert_eq!(b(0., 0., 10., 10.).iou(&b(20., 20., 30., 30.)), 0.0);
        let v = b(0., 0., 10., 10.).iou(&b(5., 0., 15., 10.));
        assert!((v - 50.0 / 150.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn one_hot_cell_decodes_to_the_expected_box() {
        // 2 classes, 4x4 grid, stride 8; one object in cell (gy=1, gx=2).
        let (c, g, s) = (2usize, 4usize, 8.0f32);
        let mut grid = vec![-10.0f32; (5 + c) * g * g];
        let cell = g + 2;
        let plane = g * g;
        grid[cell] = logit(0.9); // objectness
        grid[plane + cell] = 0.0; // σ=0.5 → cx = 2.5 cells
        grid[2 * plane + cell] = 0.0; // cy = 1.5 cells
        grid[3 * plane + cell] = 2.0f32.ln(); // w = 2 cells
        grid[4 * plane + cell] = 1.0f32.ln(); // h = 1 cell
        grid[6 * plane + cell] = logit(0.8); // class 1
        let dets = decode_grid(&grid, c, g, g, s, 0.5);
        assert_eq!(dets.len(), 1);
        let d = &dets[0];
        assert_eq!(d.class_id, 1);
        assert!((d.score - 0.72).abs() < 1e-4, "{}", d.score);
        let want = b(12.0, 8.0, 28.0, 16.0);
        for (got, exp) in [(d.bbox.x1, want.x1), (d.bbox.y1, want.y1), (d.bbox.x2, want.x2), (d.bbox.y2, want.y2)] {
            assert!((got - exp).abs() < 1e-4, "{:?} vs {want:?}", d.bbox);
        }
        assert!(decode_grid(&grid, c, g, g, s, 0.75).is_empty(), "0.72 is below 0.75");
    }

    /// Checks one decoded box against the expected one (input pixels).
    fn assert_box(d: &Detection, class_id: usize, score: f32, want: BBox) {
        assert_eq!(d.class_id, class_id, "{d:?}");
        assert!((d.score - score).abs() < 1e-4, "score {} vs {score}", d.score);
        for (got, exp) in [(d.bbox.x1, want.x1), (d.bbox.y1, want.y1), (d.bbox.x2, want.x2), (d.bbox.y2, want.y2)] {
            assert!((got - exp).abs() < 1e-3, "{:?} vs {want:?}", d.bbox);
        }
    }

    #[test]
    fn yolov5_rows_decode_with_objectness_times_class() {
        // 3 rows × (5 + 2 classes): one strong class-1 object, one weak, one below threshold.
        let layout = OutputLayout::new(OutputFormat::YoloV5, &[1, 3, 7], 2, (320, 320)).unwrap();
        #[rustfmt::skip]
        let out = [
            100.0, 50.0, 40.0, 20.0, 0.9, 0.1, 0.8,
            10.0, 10.0, 4.0, 4.0, 0.3, 0.9, 0.1,
            200.0, 200.0, 50.0, 50.0, 0.6, 0.95, 0.2,
        ];
        let dets = layout.decode(&out, 0.5);
        assert_eq!(dets.len(), 2, "{dets:?}");
        assert_box(&dets[0], 1, 0.72, b(80.0, 40.0, 120.0, 60.0));
        assert_box(&dets[1], 0, 0.57, b(175.0, 175.0, 225.0, 225.0));
    }

    #[test]
    fn yolov8_is_channel_major_without_objectness() {
        // 4 + 3 classes channels × 2 anchors; anchor 1 is class 2 at 0.7.
        let layout = OutputLayout::new(OutputFormat::YoloV8, &[1, 7, 2], 3, (640, 640)).unwrap();
        #[rustfmt::skip]
        let out = [
            10.0, 300.0,   // cx
            10.0, 200.0,   // cy
            5.0, 60.0,     // w
            5.0, 30.0,     // h
            0.1, 0.05,     // class 0
            0.2, 0.1,      // class 1
            0.3, 0.7,      // class 2
        ];
        let dets = layout.decode(&out, 0.5);
        assert_eq!(dets.len(), 1);
        assert_box(&dets[0], 2, 0.7, b(270.0, 185.0, 330.0, 215.0));
        assert!(OutputLayout::new(OutputFormat::YoloV8, &[1, 2, 7], 3, (640, 640)).is_err(), "row-major is refused");
    }

    #[test]
    fn yolox_anchor_points_decode_on_their_own_grid() {
        // A 64×64 input: strides 8, 16, 32 give 8×8 + 4×4 + 2×2 = 84 anchor points.
        let classes = 1;
        let layout = OutputLayout::new(OutputFormat::Yolox, &[1, 84, 6], classes, (64, 64)).unwrap();
        let mut out = vec![0.0f32; 84 * 6];
        // Point (gy=1, gx=0) of the stride-16 grid: index 64 + 1·4 + 0 = 68.
        let row = &mut out[68 * 6..69 * 6];
        row.copy_from_slice(&[0.5, 0.25, 2.0f32.ln(), 1.0f32.ln(), 0.8, 0.9]);
        let dets = layout.decode(&out, 0.5);
        assert_eq!(dets.len(), 1);
        // centre ((0 + 0.5)·16, (1 + 0.25)·16) = (8, 20); size (2·16, 1·16) = (32, 16).
        assert_box(&dets[0], 0, 0.72, b(-8.0, 12.0, 24.0, 28.0));
        let err = OutputLayout::new(OutputFormat::Yolox, &[1, 100, 6], classes, (64, 64)).unwrap_err();
        assert!(err.contains("84 anchor points"), "{err}");
    }

    #[test]
    fn layouts_refuse_shapes_that_do_not_fit_the_labels() {
        assert!(OutputLayout::new(OutputFormat::YoloV5, &[1, 10, 8], 2, (320, 320)).unwrap_err().contains("5 + 2"));
        assert!(OutputLayout::new(OutputFormat::VigilGridV1, &[1, 8, 40, 40], 3, (320, 320)).is_ok());
        assert!(OutputLayout::new(OutputFormat::VigilGridV1, &[1, 8, 30, 30], 3, (320, 320))
            .unwrap_err()
            .contains("evenly"));
        assert!("ssd".parse::<OutputFormat>().unwrap_err().contains("not supported"));
    }

    #[test]
    fn nms_is_class_aware_and_keeps_the_best() {
        let d = |class_id, score, bbox| Detection { class_id, score, bbox };
        let kept = nms(
            vec![
                d(0, 0.6, b(0., 0., 10., 10.)),
                d(0, 0.9, b(1., 1., 11., 11.)),
                d(1, 0.7, b(0., 0., 10., 10.)),
                d(0, 0.5, b(50., 50., 60., 60.)),
            ],
            0.45,
            10,
        );
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(scores, [0.9, 0.7, 0.5]);
        assert_eq!(nms(kept, 0.45, 2).len(), 2);
    }

    #[test]
    fn letterbox_maps_back_to_source_pixels() {
        let lb = Letterbox::new(640, 480, 320, 320);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (0.5, 0.0, 40.0));
        let src = lb.to_source(&b(10., 50., 110., 90.));
        assert_eq!(src, b(20., 20., 220., 100.));
        let tall = Letterbox::new(480, 640, 320, 320);
        assert_eq!((tall.pad_x, tall.pad_y), (40.0, 0.0));
        let clipped = lb.to_source(&b(-10., 0., 400., 400.));
        assert_eq!(clipped, b(0., 0., 640., 480.));
    }
}
