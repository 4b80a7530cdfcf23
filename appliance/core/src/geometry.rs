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
    /// Centred, the borders split evenly (GStreamer, vigil's own models).
    #[default]
    Center,
    /// In the top-left corner, the borders right and below (some exporters' convention).
    TopLeft,
}

/// The geometry of a letterbox: `input = source * scale + pad`.
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

    /// The same fit with the image at `anchor` (the scale and scaled size are those of
    /// [`Letterbox::new`]; only the borders move).
    pub fn anchored(source_width: u32, source_height: u32, input_w: u32, input_h: u32, anchor: Anchor) -> Self {
        let centred = Self::new(source_width, source_height, input_w, input_h);
        match anchor {
            Anchor::Center => centred,
            Anchor::TopLeft => Self { pad_x: 0.0, pad_y: 0.0, ..centred },
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
}
