//! Images as inference reads them: packed 8-bit RGB or RGBA rows.

/// Bytes of each pixel handed to inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelLayout {
    /// Packed 8-bit R, G, B (rows padded to 4 bytes).
    Rgb,
    /// Packed 8-bit R, G, B, A (what `nvvidconv` can produce).
    Rgba,
}

impl PixelLayout {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb => 3,
            Self::Rgba => 4,
        }
    }
}

/// A packed 8-bit RGB or RGBA image, rows `stride` bytes apart (alpha, if any, is ignored).
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    /// 3 (RGB) or 4 (RGBA).
    pub bytes_per_pixel: usize,
}

impl<'a> Image<'a> {
    pub fn rgb(data: &'a [u8], stride: usize) -> Self {
        Self { data, stride, bytes_per_pixel: 3 }
    }
}

/// A decoded frame as inference reads it (a camera frame, a test picture), at its own size:
/// the model's pre-processing letterboxes it, and detections are mapped back to it.
pub trait FrameImage {
    /// The pixels.
    fn image(&self) -> Image<'_>;
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
}
