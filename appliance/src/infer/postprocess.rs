//! Turning raw model output into detections: the `vigil-grid-v1` decoder, class-aware NMS, and
//! the letterbox mapping back to source-frame pixels.

use serde::{Deserialize, Serialize};

/// An axis-aligned box, `x1 < x2`, `y1 < y2`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    pub fn iou(&self, o: &BBox) -> f32 {
        let w = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let h = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + o.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub class_id: usize,
    pub score: f32,
    /// In model-input pixels until [`Letterbox::to_source`] maps it.
    pub bbox: BBox,
}

/// The geometry of a centred letterbox: `input = source * scale + pad`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    pub source_width: u32,
    pub source_height: u32,
}

impl Letterbox {
    /// The letterbox GStreamer's `videoscale add-borders=true` applies to fit a source into
    /// `input_w`×`input_h` (aspect kept, image centred, integer border split).
    pub fn new(source_width: u32, source_height: u32, input_w: u32, input_h: u32) -> Self {
        let scale = (input_w as f32 / source_width as f32).min(input_h as f32 / source_height as f32);
        let scaled_w = (source_width as f32 * scale).round() as u32;
        let scaled_h = (source_height as f32 * scale).round() as u32;
        Self {
            scale,
            pad_x: (input_w.saturating_sub(scaled_w) / 2) as f32,
            pad_y: (input_h.saturating_sub(scaled_h) / 2) as f32,
            source_width,
            source_height,
        }
    }

    /// Size of the scaled image inside the borders.
    pub fn scaled_size(&self) -> (u32, u32) {
        (
            (self.source_width as f32 * self.scale).round() as u32,
            (self.source_height as f32 * self.scale).round() as u32,
        )
    }

    /// Maps a box from model-input pixels to source pixels, clipped to the source frame.
    pub fn to_source(&self, b: &BBox) -> BBox {
        let w = self.source_width as f32;
        let h = self.source_height as f32;
        BBox {
            x1: ((b.x1 - self.pad_x) / self.scale).clamp(0.0, w),
            y1: ((b.y1 - self.pad_y) / self.scale).clamp(0.0, h),
            x2: ((b.x2 - self.pad_x) / self.scale).clamp(0.0, w),
            y2: ((b.y2 - self.pad_y) / self.scale).clamp(0.0, h),
        }
    }
}

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
            let (class_id, best) =
                (0..classes)
                    .map(|c| (c, at(5 + c, cell)))
                    .fold((0, f32::MIN), |acc, x| if x.1 > acc.1 { x } else { acc });
            let score = sigmoid(t0) * sigmoid(best);
            if score < threshold {
                continue;
            }
            let cx = (gx as f32 + sigmoid(at(1, cell))) * stride;
            let cy = (gy as f32 + sigmoid(at(2, cell))) * stride;
            let w = at(3, cell).exp() * stride;
            let h = at(4, cell).exp() * stride;
            out.push(Detection {
                class_id,
                score,
                bbox: BBox { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 },
            });
        }
    }
    out
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
