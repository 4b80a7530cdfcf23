//! Pictures: the decoded frame a model was run on, and an event's picture made from it (at the
//! model's resolution: the size the frame was scaled to inside the letterbox) with the object's
//! box drawn, as JPEG.

use crate::geometry::{BBox, Letterbox};
use crate::image::Image;

/// A processed frame as the scheduler holds it (borrowed from GStreamer's buffer): `pixels` at
/// its decoded `width`×`height`, and the model's `letterbox` of it, whose scaled size is the
/// picture's.
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
    /// The picture as tight RGB, with `bbox` (source pixels) outlined.
    pub fn crop_with_box(&self, bbox: &BBox) -> SnapshotImage {
        let mut img = SnapshotImage { rgb: Vec::new(), width: 0, height: 0 };
        self.crop_with_box_into(bbox, &mut img);
        img
    }

    /// [`Self::crop_with_box`] into `img`, reusing its buffer (no allocation when it is large
    /// enough: an event's earlier best picture, replaced by a better one).
    pub fn crop_with_box_into(&self, bbox: &BBox, img: &mut SnapshotImage) {
        self.crop_into(img);
        self.outline(img, bbox);
    }

    /// The picture as tight RGB, with every one of `boxes` (source pixels) outlined.
    pub fn crop_with_boxes(&self, boxes: &[BBox]) -> SnapshotImage {
        let mut img = self.crop();
        for b in boxes {
            self.outline(&mut img, b);
        }
        img
    }

    fn outline(&self, img: &mut SnapshotImage, bbox: &BBox) {
        let (w, h) = (img.width as usize, img.height as usize);
        let (rx, ry) = self.letterbox.resize_ratios();
        let to_px = |v: f32, ratio: f32, max: usize| ((v / ratio).round().max(0.0) as usize).min(max - 1);
        img.outline(to_px(bbox.x1, rx, w), to_px(bbox.y1, ry, h), to_px(bbox.x2, rx, w), to_px(bbox.y2, ry, h));
    }

    /// The picture as tight RGB: the frame at the letterbox's scaled size (nearest pixel).
    pub fn crop(&self) -> SnapshotImage {
        let mut img = SnapshotImage { rgb: Vec::new(), width: 0, height: 0 };
        self.crop_into(&mut img);
        img
    }

    fn crop_into(&self, img: &mut SnapshotImage) {
        let (w, h) = self.letterbox.scaled_size();
        let (w, h) = (w.clamp(1, self.width.max(1)) as usize, h.clamp(1, self.height.max(1)) as usize);
        let (fw, fh) = (self.width as usize, self.height as usize);
        let Image { data, stride, bytes_per_pixel: bpp } = self.pixels;
        // The source pixel whose area holds each picture pixel's centre.
        let nearest =
            |d: usize, size: usize, src: usize| ((((d as f32 + 0.5) * src as f32) / size as f32) as usize).min(src - 1);
        let columns: Vec<usize> = (0..w).map(|x| nearest(x, w, fw) * bpp).collect();
        let rgb = &mut img.rgb;
        rgb.clear();
        rgb.reserve_exact(w * h * 3);
        for y in 0..h {
            let row = &data[nearest(y, h, fh) * stride..];
            for &at in &columns {
                rgb.extend_from_slice(&row[at..at + 3]);
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
    fn the_picture_is_the_frame_at_the_models_scale_with_the_box_outlined() {
        // A 640x480 frame for a 64x64 model: scale 0.1, a 64x48 picture. RGBA, stride padded to
        // 2564 bytes; the left half of the frame dark, the right half light.
        let lb = Letterbox::new(640, 480, 64, 64);
        let stride = 2564;
        let mut data = vec![0u8; stride * 480];
        for y in 0..480 {
            for x in 0..640 {
                let px = if x < 320 { [10, 20, 30, 255] } else { [200, 210, 220, 255] };
                data[y * stride + x * 4..][..4].copy_from_slice(&px);
            }
        }
        let pixels = Image { data: &data, stride, bytes_per_pixel: 4 };
        let src = SourceImage { pixels, width: 640, height: 480, letterbox: lb };
        let img = src.crop_with_box(&BBox { x1: 100.0, y1: 100.0, x2: 300.0, y2: 200.0 });
        assert_eq!((img.width, img.height), (64, 48));
        let px = |x: usize, y: usize| &img.rgb[(y * 64 + x) * 3..][..3];
        assert_eq!(px(0, 47), [10, 20, 30], "the bottom-left corner");
        assert_eq!(px(63, 0), [200, 210, 220], "the top-right corner");
        assert_eq!(px(31, 40), [10, 20, 30], "the dark half ends in the middle");
        assert_eq!(px(32, 40), [200, 210, 220], "the light half starts there");
        assert_eq!(px(10, 10), OUTLINE, "box corner at source (100,100) → (10,10)");
        assert_eq!(px(20, 15), [10, 20, 30], "inside the box is the picture");
        let jpeg = img.encode_jpeg(80).unwrap();
        assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG starts with SOI");
    }
}
