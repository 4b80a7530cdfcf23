//! Inference: the `Backend` seam, pre-processing of letterboxed RGB frames into the model's input
//! tensor, and post-processing of its output into source-frame detections.

pub mod bundle;
mod onnxruntime;
pub mod postprocess;

use std::time::{Duration, Instant};

pub use bundle::{Bundle, BundleError};
pub use onnxruntime::{find_ort_library, OrtBackend};
pub use postprocess::{BBox, Detection, Letterbox};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    Library(String),
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// One inference engine holding one loaded model. A backend runs one frame at a time; the
/// scheduler owns it on a dedicated thread.
///
/// Implementations: ONNX Runtime on the CPU (here and as a fallback everywhere); TensorRT on
/// Jetson (later). All read the same INT8 QDQ ONNX file from the bundle.
pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// Runs the model on one NCHW f32 input; writes the raw output tensor into `output`.
    fn infer(&mut self, input: &[f32], output: &mut Vec<f32>) -> Result<(), InferError>;
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

/// Converts a letterboxed packed RGB/RGBA image into normalized NCHW f32:
/// `(pixel * scale - mean[c]) / std[c]`, through a per-channel lookup table.
pub struct Preprocessor {
    lut: [[f32; 256]; 3],
    width: usize,
    height: usize,
}

impl Preprocessor {
    pub fn new(bundle: &Bundle) -> Self {
        let i = &bundle.manifest.input;
        let mut lut = [[0.0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 * i.scale - i.mean[c]) / i.std[c];
            }
        }
        let (w, h) = bundle.input_size();
        Self { lut, width: w as usize, height: h as usize }
    }

    pub fn run(&self, image: Image<'_>, out: &mut Vec<f32>) {
        let plane = self.width * self.height;
        out.resize(3 * plane, 0.0);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let bpp = image.bytes_per_pixel;
        for y in 0..self.height {
            let row = &image.data[y * image.stride..y * image.stride + self.width * bpp];
            let o = y * self.width;
            for (x, px) in row.chunks_exact(bpp).enumerate() {
                r[o + x] = self.lut[0][px[0] as usize];
                g[o + x] = self.lut[1][px[1] as usize];
                b[o + x] = self.lut[2][px[2] as usize];
            }
        }
    }
}

/// Time spent in each stage of one frame.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
}

/// A bundle's model on a backend, end to end: RGB frame in, source-pixel detections out.
pub struct Detector {
    backend: Box<dyn Backend>,
    pre: Preprocessor,
    labels: Vec<String>,
    classes: usize,
    grid_h: usize,
    grid_w: usize,
    stride: f32,
    threshold: f32,
    nms_iou: f32,
    max_detections: usize,
    input_size: (u32, u32),
    input: Vec<f32>,
    output: Vec<f32>,
}

impl Detector {
    pub fn new(bundle: &Bundle, backend: Box<dyn Backend>) -> Self {
        let m = &bundle.manifest;
        let (w, _) = bundle.input_size();
        let grid_h = m.output.shape[2] as usize;
        let grid_w = m.output.shape[3] as usize;
        Self {
            backend,
            pre: Preprocessor::new(bundle),
            labels: m.postprocess.labels.clone(),
            classes: m.postprocess.labels.len(),
            grid_h,
            grid_w,
            stride: w as f32 / grid_w as f32,
            threshold: m.postprocess.score_threshold,
            nms_iou: m.postprocess.nms_iou,
            max_detections: m.postprocess.max_detections,
            input_size: bundle.input_size(),
            input: Vec::with_capacity(bundle.input_len()),
            output: Vec::with_capacity(bundle.output_len()),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn input_size(&self) -> (u32, u32) {
        self.input_size
    }

    /// Runs the model on a letterboxed image. Boxes come back in source pixels.
    pub fn detect(
        &mut self,
        image: Image<'_>,
        letterbox: &Letterbox,
    ) -> Result<(Vec<Detection>, StageTimes), InferError> {
        let t0 = Instant::now();
        self.pre.run(image, &mut self.input);
        let t1 = Instant::now();
        self.backend.infer(&self.input, &mut self.output)?;
        let t2 = Instant::now();
        let mut dets = self.decode(&self.output);
        for d in &mut dets {
            d.bbox = letterbox.to_source(&d.bbox);
        }
        let t3 = Instant::now();
        Ok((dets, StageTimes { preprocess: t1 - t0, inference: t2 - t1, postprocess: t3 - t2 }))
    }

    /// Decodes and suppresses a raw output tensor; boxes in model-input pixels.
    pub fn decode(&self, output: &[f32]) -> Vec<Detection> {
        let cands =
            postprocess::decode_grid(output, self.classes, self.grid_h, self.grid_w, self.stride, self.threshold);
        postprocess::nms(cands, self.nms_iou, self.max_detections)
    }

    /// Runs the backend alone on a prepared input tensor (benchmarks, reference checks).
    pub fn infer_raw(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        self.backend.infer(input, &mut self.output)?;
        Ok(&self.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgba_and_rgb_images_preprocess_alike() {
        let bundle =
            Bundle::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/bundles/shapes-v1"))
                .expect("the shipped bundle loads");
        let pre = Preprocessor::new(&bundle);
        let (w, h) = bundle.input_size();
        let (w, h) = (w as usize, h as usize);
        // RGB rows padded to 4 bytes, as GStreamer lays them out; RGBA rows are never padded.
        let rgb_stride = (w * 3).div_ceil(4) * 4;
        let mut rgb = vec![0u8; rgb_stride * h];
        let mut rgba = vec![0u8; w * 4 * h];
        for y in 0..h {
            for x in 0..w {
                let px = [(x * 7 % 256) as u8, (y * 3 % 256) as u8, ((x + y) % 256) as u8];
                rgb[y * rgb_stride + x * 3..][..3].copy_from_slice(&px);
                rgba[y * w * 4 + x * 4..][..4].copy_from_slice(&[px[0], px[1], px[2], 255]);
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        pre.run(Image::rgb(&rgb, rgb_stride), &mut a);
        pre.run(Image { data: &rgba, stride: w * 4, bytes_per_pixel: 4 }, &mut b);
        assert_eq!(a.len(), 3 * w * h);
        assert_eq!(a, b);
        assert_ne!(a[1], a[w * h + 1], "channels land in their own planes");
    }
}
