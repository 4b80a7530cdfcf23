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

/// A letterboxed frame as inference reads it (a decoded camera frame, a test picture).
pub trait FrameImage {
    /// The pixels, at the model's input size.
    fn image(&self) -> Image<'_>;
    /// The frame's size before letterboxing: detections are mapped back to it.
    fn source_size(&self) -> (u32, u32);
    /// The size capture letterboxed it to: the model's input size, or the previous model's
    /// while capture is re-planned for a new one.
    fn image_size(&self) -> (u32, u32);
}
