//! Pictures: the letterboxed model input a frame was run on, and an event's picture cut out of it
//! (at the model's resolution) with the object's box drawn, as JPEG.

use crate::geometry::{BBox, Letterbox};
use crate::image::Image;

/// A processed frame's picture as the scheduler holds it (borrowed from GStreamer's buffer).
#[derive(Clone, Copy)]
pub struct SourceImage<'a> {
    pub pixels: Image<'a>,
    pub width: u32,
    pub height: u32,
    pub letterbox: Letterbox,
}

/// An owned RGB picture, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotImage {
    pub rgb: Vec<u8>,
    pub width: u16,
    pub height: u16,
}

/// The box outline colour: a yellow that stands out on most scenes.
const OUTLINE: [u8; 3] = [255, 210, 0];

impl SourceImage<'_> {
    /// The picture without the letterbox borders, as tight RGB, with `bbox` (source pixels)
    /// outlined.
    pub fn crop_with_box(&self, bbox: &BBox) -> SnapshotImage {
        let mut img = SnapshotImage { rgb: Vec::new(), width: 0, height: 0 };
        self.crop_with_box_into(bbox, &mut img);
        img
    }

    /// [`Self::crop_with_box`] into `img`, reusing its buffer (no allocation when it is large
    /// enough: an event's earlier best picture, replaced by a better one).
    pub fn crop_with_box_into(&self, bbox: &BBox, img: &mut SnapshotImage) {
        self.crop_into(img);
        let (w, h) = (img.width as usize, img.height as usize);
        let scale = self.letterbox.scale;
        let to_px = |v: f32, max: usize| ((v * scale).round().max(0.0) as usize).min(max - 1);
        img.outline(to_px(bbox.x1, w), to_px(bbox.y1, h), to_px(bbox.x2, w), to_px(bbox.y2, h));
    }

    /// The picture without the letterbox borders, as tight RGB.
    pub fn crop(&self) -> SnapshotImage {
        let mut img = SnapshotImage { rgb: Vec::new(), width: 0, height: 0 };
        self.crop_into(&mut img);
        img
    }

    fn crop_into(&self, img: &mut SnapshotImage) {
        let lb = &self.letterbox;
        let x0 = (lb.pad_x as usize).min(self.width as usize);
        let y0 = (lb.pad_y as usize).min(self.height as usize);
        let w = ((lb.source_width as f32 * lb.scale).round() as usize).clamp(1, self.width as usize - x0);
        let h = ((lb.source_height as f32 * lb.scale).round() as usize).clamp(1, self.height as usize - y0);
        let Image { data, stride, bytes_per_pixel: bpp } = self.pixels;
        let rgb = &mut img.rgb;
        rgb.clear();
        rgb.reserve_exact(w * h * 3);
        for y in y0..y0 + h {
            let row = &data[y * stride + x0 * bpp..];
            for px in row.chunks_exact(bpp).take(w) {
                rgb.extend_from_slice(&px[..3]);
            }
        }
        (img.width, img.height) = (w as u16, h as u16);
    }
}

impl SnapshotImage {
    /// Draws a 2-pixel rectangle (clipped to the picture).
    fn outline(&mut self, x1: usize, y1: usize, x2: usize, y2: usize) {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut put = |x: usize, y: usize| {
            if x < w && y < h {
                self.rgb[(y * w + x) * 3..][..3].copy_from_slice(&OUTLINE);
            }
        };
        for t in 0..2 {
            for x in x1..=x2 {
                put(x, y1 + t);
                put(x, y2.saturating_sub(t));
            }
            for y in y1..=y2 {
                put(x1 + t, y);
                put(x2.saturating_sub(t), y);
            }
        }
    }

    /// JPEG at `quality` (1-100).
    pub fn encode_jpeg(&self, quality: u8) -> Result<Vec<u8>, jpeg_encoder::EncodingError> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100)).encode(
            &self.rgb,
            self.width,
            self.height,
            jpeg_encoder::ColorType::Rgb,
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crop_drops_the_letterbox_and_outlines_the_box() {
        // A 640x480 source letterboxed into 64x64: scale 0.1, 64x48 picture, 8 rows of border
        // above and below. RGBA, stride padded to 264 bytes.
        let lb = Letterbox::new(640, 480, 64, 64);
        let stride = 264;
        let mut data = vec![0u8; stride * 64];
        for y in 8..56 {
            for x in 0..64 {
                data[y * stride + x * 4..][..4].copy_from_slice(&[10, 20, 30, 255]);
            }
        }
        let pixels = Image { data: &data, stride, bytes_per_pixel: 4 };
        let src = SourceImage { pixels, width: 64, height: 64, letterbox: lb };
        let img = src.crop_with_box(&BBox { x1: 100.0, y1: 100.0, x2: 300.0, y2: 200.0 });
        assert_eq!((img.width, img.height), (64, 48));
        let px = |x: usize, y: usize| &img.rgb[(y * 64 + x) * 3..][..3];
        assert_eq!(px(0, 0), [10, 20, 30], "no border row is left");
        assert_eq!(px(10, 10), OUTLINE, "box corner at source (100,100) → (10,10)");
        assert_eq!(px(20, 15), [10, 20, 30], "inside the box is the picture");
        let jpeg = img.encode_jpeg(80).unwrap();
        assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG starts with SOI");
    }
}
