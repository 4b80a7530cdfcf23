//! Boxes, detections and the letterbox geometry between a source frame and the model's input.

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

/// Where a letterboxed image sits in the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Anchor {
    /// Centred, the borders split evenly, the odd pixel right and below (vigil's own models,
    /// Ultralytics).
    #[default]
    Center,
    /// In the top-left corner, the borders right and below (YOLOX and some other exporters).
    TopLeft,
}

/// How the scaled picture's size is made whole from `side × scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// To the nearest, ties to even: Python's `round()` (Ultralytics' `int(round(w * r))`).
    #[default]
    Round,
    /// Down: Python's `int()` (YOLOX's `int(w * r)`).
    Floor,
}

/// The geometry of a letterbox: the source resized to `scaled_width`×`scaled_height` (aspect
/// kept) and placed at (`pad_x`, `pad_y`) in the input; the rest is border.
///
/// This is the one definition of where a picture goes: the CPU and CUDA pre-processing build
/// the tensor from it, `vigil model pack` computes reference tensors with it, and boxes are
/// mapped back through it (`input = source * scale + pad`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    pub source_width: u32,
    pub source_height: u32,
    pub scaled_width: u32,
    pub scaled_height: u32,
}

impl Letterbox {
    /// The default fit of a source into `input_w`×`input_h`: centred, the scaled size rounded.
    pub fn new(source_width: u32, source_height: u32, input_w: u32, input_h: u32) -> Self {
        Self::fit((source_width, source_height), (input_w, input_h), Anchor::Center, Rounding::Round)
    }

    /// The fit with the image at `anchor` (sizes rounded).
    pub fn anchored(source_width: u32, source_height: u32, input_w: u32, input_h: u32, anchor: Anchor) -> Self {
        Self::fit((source_width, source_height), (input_w, input_h), anchor, Rounding::Round)
    }

    /// The fit of `source` into `input` with the picture at `anchor` and its size made whole by
    /// `rounding`. Computed in double precision, as exporters' Python does, so that a size on
    /// a rounding edge comes out as theirs does.
    pub fn fit(source: (u32, u32), input: (u32, u32), anchor: Anchor, rounding: Rounding) -> Self {
        let (sw, sh) = (f64::from(source.0.max(1)), f64::from(source.1.max(1)));
        let scale = (f64::from(input.0) / sw).min(f64::from(input.1) / sh);
        let whole = |v: f64| match rounding {
            Rounding::Round => v.round_ties_even(),
            Rounding::Floor => v.floor(),
        };
        let scaled_width = (whole(sw * scale) as u32).clamp(1, input.0.max(1));
        let scaled_height = (whole(sh * scale) as u32).clamp(1, input.1.max(1));
        let (pad_x, pad_y) = match anchor {
            Anchor::Center => ((input.0 - scaled_width) / 2, (input.1 - scaled_height) / 2),
            Anchor::TopLeft => (0, 0),
        };
        Self {
            scale: scale as f32,
            pad_x: pad_x as f32,
            pad_y: pad_y as f32,
            source_width: source.0,
            source_height: source.1,
            scaled_width,
            scaled_height,
        }
    }

    /// Size of the scaled image inside the borders.
    pub fn scaled_size(&self) -> (u32, u32) {
        (self.scaled_width, self.scaled_height)
    }

    /// Source pixels per scaled pixel, across and down: the resize ratios (as `cv2.resize` to
    /// the scaled size uses them; they differ from `1 / scale` by the rounding).
    pub fn resize_ratios(&self) -> (f32, f32) {
        (
            self.source_width as f32 / self.scaled_width.max(1) as f32,
            self.source_height as f32 / self.scaled_height.max(1) as f32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_left_letterbox_keeps_the_scale_and_moves_the_borders() {
        let centred = Letterbox::new(640, 480, 320, 320);
        let corner = Letterbox::anchored(640, 480, 320, 320, Anchor::TopLeft);
        assert_eq!((centred.scale, centred.pad_x, centred.pad_y), (0.5, 0.0, 40.0));
        assert_eq!((corner.scale, corner.pad_x, corner.pad_y), (0.5, 0.0, 0.0));
        assert_eq!(corner.scaled_size(), centred.scaled_size());
        // The same object, drawn at each anchor's place, maps back to the same source box.
        let at = |lb: &Letterbox| lb.to_source(&BBox { x1: 10.0, y1: lb.pad_y + 20.0, x2: 30.0, y2: lb.pad_y + 60.0 });
        assert_eq!(at(&centred), at(&corner));
        assert_eq!(at(&corner), BBox { x1: 20.0, y1: 40.0, x2: 60.0, y2: 120.0 });
        assert_eq!(Letterbox::anchored(640, 480, 320, 320, Anchor::Center), centred);
    }

    #[test]
    fn odd_borders_put_the_odd_row_below_and_sizes_round_as_python_does() {
        // 1280x720 into 416: 234 rows, 182 rows of border, 91 above (GStreamer's videoscale put
        // 90 above: the offset this geometry now owns).
        let lb = Letterbox::new(1280, 720, 416, 416);
        assert_eq!((lb.scaled_size(), lb.pad_x, lb.pad_y), ((416, 234), 0.0, 91.0));
        // 640x272 into 416: 176.8 rows; Ultralytics rounds to 177, YOLOX truncates to 176.
        let round = Letterbox::new(640, 272, 416, 416);
        let floor = Letterbox::fit((640, 272), (416, 416), Anchor::TopLeft, Rounding::Floor);
        assert_eq!((round.scaled_size(), round.pad_y), ((416, 177), 119.0));
        assert_eq!((floor.scaled_size(), floor.pad_y), ((416, 176), 0.0));
        assert_eq!(round.scale, floor.scale, "the scale is the fit's; only the size is rounded");
        let (rx, ry) = round.resize_ratios();
        assert_eq!((rx, ry), (640.0 / 416.0, 272.0 / 177.0));
        // Ties go to even, as Python's round() does: 8x5 into 4x4 scales by 0.5, 2.5 rows → 2.
        assert_eq!(Letterbox::new(8, 5, 4, 4).scaled_size(), (4, 2));
        assert_eq!(Letterbox::new(4, 5, 6, 6).scaled_size(), (5, 6), "4 x 1.2 = 4.8 → 5");
        assert_eq!(Letterbox::fit((4, 5), (6, 6), Anchor::Center, Rounding::Floor).scaled_size(), (4, 6));
    }
}
