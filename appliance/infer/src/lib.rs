//! Inference: the `Backend` seam, pre-processing of letterboxed RGB frames into the model's input
//! tensor, and post-processing of its output into source-frame detections.

pub mod accept;
pub mod bundle;
pub mod check;
pub mod compare;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine_cache;
mod load;
mod onnxruntime;
pub mod pack;
pub mod postprocess;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;
pub mod transform;

pub use bundle::{Bundle, BundleBackend, BundleError, Choice, OutputFormat};
pub use load::{load_detector, load_detector_with};
pub use onnxruntime::{describe_model, find_ort_library, OrtBackend};
pub use postprocess::{BBox, Detection, Letterbox, OutputLayout};

use vigil_config::BackendKind;
use vigil_core::image::FrameImage;
pub use vigil_core::image::Image;
use vigil_pipeline::scheduler::Stages;

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

/// One inference engine holding one loaded model. A backend runs one batch at a time; the
/// scheduler owns it on a dedicated thread.
///
/// Implementations: ONNX Runtime on the CPU (here and as a fallback everywhere); TensorRT on
/// Jetson (feature `tensorrt`). All read the same INT8 QDQ ONNX file from the bundle.
pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// The largest batch the loaded model takes (1 unless its batch dimension is dynamic).
    fn max_batch(&self) -> usize {
        1
    }
    /// GPU backends: pre-processes a letterboxed RGBA `image` on the device, straight into input
    /// slot `slot`, on the stream inference runs on. `Ok(false)` when this backend or image
    /// cannot (the caller pre-processes on the CPU instead). Slots loaded here are not taken from
    /// `input` by the next [`Backend::infer`].
    fn load_on_device(&mut self, _slot: usize, _image: &Image<'_>) -> Result<bool, InferError> {
        Ok(false)
    }
    /// Runs the model on `batch` NCHW f32 images laid end to end in `input`; writes the raw
    /// output tensors, image after image, into `output`.
    fn infer(&mut self, input: &[f32], batch: usize, output: &mut Vec<f32>) -> Result<(), InferError>;
}

/// The backend a service will run, and why if it is not the one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    pub backend: BackendKind,
    /// Set when the choice differs from the request: the line to log.
    pub fallback: Option<String>,
}

/// Chooses between TensorRT and ONNX Runtime from the configured `requested` kind, the backends
/// the bundle declares (`supported`) and whether TensorRT can run here (`tensorrt`: why not).
pub fn choose_backend(
    requested: BackendKind,
    supported: &[BundleBackend],
    tensorrt: Result<(), String>,
) -> Result<BackendChoice, InferError> {
    let declares = |b: BundleBackend| supported.contains(&b);
    let supported: Vec<String> = supported.iter().map(ToString::to_string).collect();
    let trt_why_not = match (&tensorrt, declares(BundleBackend::Tensorrt)) {
        (Ok(()), true) => None,
        (Ok(()), false) => Some(format!("the model bundle does not declare tensorrt (it declares {supported:?})")),
        (Err(why), _) => Some(why.clone()),
    };
    let ort_ok = declares(BundleBackend::Onnxruntime);
    let pick = |backend, fallback| Ok(BackendChoice { backend, fallback });
    match (requested, trt_why_not) {
        (BackendKind::Auto | BackendKind::Tensorrt, None) => pick(BackendKind::Tensorrt, None),
        (BackendKind::Auto, Some(_)) if ort_ok => pick(BackendKind::Onnxruntime, None),
        (BackendKind::Tensorrt, Some(why)) if ort_ok => {
            pick(BackendKind::Onnxruntime, Some(format!("TensorRT was asked for but {why}; using ONNX Runtime (CPU)")))
        }
        (BackendKind::Onnxruntime, _) if ort_ok => pick(BackendKind::Onnxruntime, None),
        (BackendKind::Onnxruntime, None) => pick(
            BackendKind::Tensorrt,
            Some(format!("the model bundle does not declare onnxruntime (it declares {supported:?}); using TensorRT")),
        ),
        (_, why) => Err(InferError::Library(format!(
            "no backend can run this model: the bundle declares {supported:?}{}; install a bundle that declares \
             onnxruntime, or run where TensorRT is available",
            why.map(|w| format!(", and TensorRT is out because {w}")).unwrap_or_default()
        ))),
    }
}

/// Converts a letterboxed packed RGB/RGBA image into normalized NCHW f32 as the bundle
/// declares it: `(pixel * scale - mean[c]) / std[c]` through a per-channel lookup table, the
/// planes in the bundle's channel order (RGB or BGR), the image at the bundle's anchor and the
/// rest of the tensor at its pad value.
///
/// The frames come from GStreamer scaled and centred with black borders ([`Letterbox::new`]):
/// the borders are not read; the scaled image is copied to where the model wants it.
pub struct Preprocessor {
    lut: [[f32; 256]; 3],
    /// The image channel each tensor plane takes (RGB: 0, 1, 2; BGR: 2, 1, 0).
    source_channel: [usize; 3],
    /// The pad value, normalized, per plane.
    pad: [f32; 3],
    anchor: vigil_core::geometry::Anchor,
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
        let source_channel = if i.bgr() { [2, 1, 0] } else { [0, 1, 2] };
        let anchor = i.anchor();
        let pad = [0, 1, 2].map(|c| lut[c][i.pad_value as usize]);
        let (w, h) = bundle.input_size();
        Self { lut, source_channel, pad, anchor, width: w as usize, height: h as usize }
    }

    /// Values one image takes.
    pub fn len(&self) -> usize {
        3 * self.width * self.height
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the model wants a frame of `source` size: the letterbox boxes are mapped back with.
    pub fn model_letterbox(&self, source: (u32, u32)) -> Letterbox {
        Letterbox::anchored(source.0, source.1, self.width as u32, self.height as u32, self.anchor)
    }

    /// Fills `out` (exactly [`Self::len`] values) from `image`, a frame of `source` size
    /// letterboxed (centred) to the input size.
    pub fn run(&self, image: Image<'_>, source: (u32, u32), out: &mut [f32]) {
        let plane = self.width * self.height;
        assert_eq!(out.len(), 3 * plane, "one image's worth of input");
        let (w, h) = (self.width as u32, self.height as u32);
        let given = Letterbox::new(source.0, source.1, w, h);
        let wanted = self.model_letterbox(source);
        let (fw, fh) = given.scaled_size();
        let (fw, fh) = (fw.min(w) as usize, fh.min(h) as usize);
        let (gx, gy) = (given.pad_x as usize, given.pad_y as usize);
        let (mx, my) = (wanted.pad_x as usize, wanted.pad_y as usize);
        let bpp = image.bytes_per_pixel;
        let (p0, rest) = out.split_at_mut(plane);
        let (p1, p2) = rest.split_at_mut(plane);
        let mut planes = [p0, p1, p2];
        // The pad value goes where the image does not: the rows above and below it, and the
        // columns beside it (each value is written once).
        let (top, image_end) = (my * self.width, (my + fh) * self.width);
        for (c, p) in planes.iter_mut().enumerate() {
            p[..top].fill(self.pad[c]);
            p[image_end..].fill(self.pad[c]);
            for row in p[top..image_end].chunks_exact_mut(self.width) {
                row[..mx].fill(self.pad[c]);
                row[mx + fw..].fill(self.pad[c]);
            }
        }
        let [s0, s1, s2] = self.source_channel;
        let [l0, l1, l2] = &self.lut;
        let [o0, o1, o2] = planes;
        for row in 0..fh {
            let src = &image.data[(gy + row) * image.stride + gx * bpp..][..fw * bpp];
            let at = (my + row) * self.width + mx;
            let (o0, o1, o2) = (&mut o0[at..at + fw], &mut o1[at..at + fw], &mut o2[at..at + fw]);
            for (x, px) in src.chunks_exact(bpp).enumerate() {
                o0[x] = l0[px[s0] as usize];
                o1[x] = l1[px[s1] as usize];
                o2[x] = l2[px[s2] as usize];
            }
        }
    }
}

/// A bundle's model on a backend, end to end: RGB frames in, source-pixel detections out, one
/// or a batch at a time.
pub struct Detector {
    backend: Box<dyn Backend>,
    pre: Preprocessor,
    layout: OutputLayout,
    labels: Vec<String>,
    threshold: f32,
    nms_iou: f32,
    max_detections: usize,
    input_size: (u32, u32),
    /// The bundle's pre-processing, for frames letterboxed to another size (see
    /// [`Detector::load_other_size`]).
    conventions: bundle::InputSection,
    /// The model and its backend: what the scheduler estimates costs per.
    cost_key: String,
    /// `max_batch` images' worth of input, and the letterbox of the frame in each slot.
    input: Vec<f32>,
    letterboxes: Vec<Letterbox>,
    output: Vec<f32>,
}

impl Detector {
    pub fn new(bundle: &Bundle, backend: Box<dyn Backend>) -> Result<Self, InferError> {
        let m = &bundle.manifest;
        let layout = bundle.output_layout()?;
        let pre = Preprocessor::new(bundle);
        let batch = backend.max_batch().max(1);
        let (w, h) = bundle.input_size();
        let cost_key = format!("{} {} on {}", m.model.name, m.model.version, backend.name());
        Ok(Self {
            cost_key,
            backend,
            input: vec![0.0; batch * pre.len()],
            letterboxes: vec![Letterbox::new(w, h, w, h); batch],
            output: Vec::with_capacity(batch * layout.len()),
            pre,
            layout,
            labels: m.postprocess.labels.clone(),
            threshold: m.postprocess.score_threshold,
            nms_iou: m.postprocess.nms_iou,
            max_detections: m.postprocess.max_detections,
            input_size: (w, h),
            conventions: m.input.clone(),
        })
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

    pub fn max_batch(&self) -> usize {
        self.letterboxes.len()
    }

    /// Pre-processes an image letterboxed (centred, as [`Letterbox::new`] says) into batch slot
    /// `slot`; the boxes found there are mapped back with the model's own letterbox.
    pub fn load(&mut self, slot: usize, image: Image<'_>, letterbox: Letterbox) -> Result<(), InferError> {
        let (w, h) = self.input_size;
        let need = (h as usize - 1) * image.stride + w as usize * image.bytes_per_pixel;
        // Too tall: a frame letterboxed for another model (capture is being re-planned).
        let too_tall = image.data.len() >= (h as usize + 1) * image.stride;
        if image.data.len() < need || too_tall || !(3..=4).contains(&image.bytes_per_pixel) {
            return Err(not_an_image(&image, (w, h)));
        }
        let chunk = slot_input(&mut self.input, slot, self.pre.len())?;
        let source = (letterbox.source_width, letterbox.source_height);
        if !self.backend.load_on_device(slot, &image)? {
            self.pre.run(image, source, chunk);
        }
        self.letterboxes[slot] = self.pre.model_letterbox(source);
        Ok(())
    }

    /// Pre-processes into batch slot `slot` a frame that capture letterboxed (centred) to
    /// another size, `image_size` — the previous model's, until capture is re-planned after a
    /// model update: the picture inside its borders is letterboxed again, bilinear on the CPU
    /// ([`transform::reference`]), so that no frame is refused while the cameras catch up.
    pub fn load_other_size(
        &mut self,
        slot: usize,
        image: Image<'_>,
        image_size: (u32, u32),
        source: (u32, u32),
    ) -> Result<(), InferError> {
        let (fw, fh) = image_size;
        let bpp = image.bytes_per_pixel;
        let rows_fit = fw > 0 && fh > 0 && image.data.len() >= (fh as usize - 1) * image.stride + fw as usize * bpp;
        if !rows_fit || !(3..=4).contains(&bpp) || source.0 == 0 || source.1 == 0 {
            return Err(not_an_image(&image, image_size));
        }
        let given = Letterbox::new(source.0, source.1, fw, fh);
        let (pw, ph) = given.scaled_size();
        let (pw, ph) = (pw.clamp(1, fw), ph.clamp(1, fh));
        let start = given.pad_y as usize * image.stride + given.pad_x as usize * bpp;
        let (data, stride) = (&image.data[start..], image.stride);
        let picture =
            if bpp == 4 { transform::Pixels::Rgba { data, stride } } else { transform::Pixels::Rgb { data, stride } };
        let chunk = slot_input(&mut self.input, slot, self.pre.len())?;
        transform::reference(&picture, &self.conventions.transform((pw, ph), self.input_size), chunk);
        self.letterboxes[slot] = self.pre.model_letterbox(source);
        Ok(())
    }

    /// Runs the model on slots `0..batch`.
    pub fn run(&mut self, batch: usize) -> Result<(), InferError> {
        if batch == 0 || batch > self.max_batch() {
            return Err(InferError::Run(format!("batch of {batch}: this engine takes 1 to {}", self.max_batch())));
        }
        let len = self.pre.len();
        self.backend.infer(&self.input[..batch * len], batch, &mut self.output)?;
        if self.output.len() != batch * self.layout.len() {
            return Err(InferError::Run(format!(
                "the backend returned {} output values for {batch} image(s); the layout needs {} each",
                self.output.len(),
                self.layout.len()
            )));
        }
        Ok(())
    }

    /// Slot `slot`'s detections, in source pixels.
    pub fn detections(&self, slot: usize) -> Vec<Detection> {
        let n = self.layout.len();
        let mut dets = self.decode(&self.output[slot * n..(slot + 1) * n]);
        for d in &mut dets {
            d.bbox = self.letterboxes[slot].to_source(&d.bbox);
        }
        dets
    }

    /// Runs the model on one letterboxed image. Boxes come back in source pixels.
    pub fn detect(&mut self, image: Image<'_>, letterbox: &Letterbox) -> Result<Vec<Detection>, InferError> {
        self.load(0, image, *letterbox)?;
        self.run(1)?;
        Ok(self.detections(0))
    }

    /// Decodes and suppresses one image's raw output; boxes in model-input pixels.
    pub fn decode(&self, output: &[f32]) -> Vec<Detection> {
        postprocess::nms(self.layout.decode(output, self.threshold), self.nms_iou, self.max_detections)
    }

    /// Runs the backend alone on a prepared input tensor (benchmarks, reference checks).
    pub fn infer_raw(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        self.backend.infer(input, 1, &mut self.output)?;
        Ok(&self.output)
    }
}

/// Batch slot `slot`'s part of `input` (`len` values an image).
fn slot_input(input: &mut [f32], slot: usize, len: usize) -> Result<&mut [f32], InferError> {
    let batch = input.len() / len.max(1);
    input
        .get_mut(slot * len..(slot + 1) * len)
        .ok_or_else(|| InferError::Run(format!("batch slot {slot} is beyond the engine's batch of {batch}")))
}

/// The error for a frame whose bytes do not hold a `size` RGB or RGBA image.
fn not_an_image(image: &Image<'_>, size: (u32, u32)) -> InferError {
    InferError::Run(format!(
        "frame of {} bytes ({} per pixel, stride {}) is not a {}x{} RGB/RGBA image",
        image.data.len(),
        image.bytes_per_pixel,
        image.stride,
        size.0,
        size.1
    ))
}

/// The detector is the scheduler's stages for any letterboxed frame.
impl<F: FrameImage> Stages<F> for Detector {
    type Error = InferError;

    fn cost_key(&self) -> &str {
        &self.cost_key
    }

    fn max_batch(&self) -> usize {
        Detector::max_batch(self)
    }

    fn preprocess(&mut self, slot: usize, frame: &F) -> Result<(), InferError> {
        let (w, h) = self.input_size;
        let (source_w, source_h) = frame.source_size();
        if frame.image_size() != (w, h) {
            return self.load_other_size(slot, frame.image(), frame.image_size(), (source_w, source_h));
        }
        self.load(slot, frame.image(), Letterbox::new(source_w, source_h, w, h))
    }

    fn infer(&mut self, batch: usize) -> Result<(), InferError> {
        self.run(batch)
    }

    fn postprocess(&mut self, slot: usize, _frame: &F) -> Vec<Detection> {
        self.detections(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes RGBA images on its "device" and records what reaches `infer`.
    #[derive(Clone, Default)]
    struct DeviceLoading {
        loaded: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
        seen: std::sync::Arc<std::sync::Mutex<Vec<f32>>>,
        output_len: usize,
    }

    impl Backend for DeviceLoading {
        fn name(&self) -> &'static str {
            "device-loading"
        }
        fn max_batch(&self) -> usize {
            2
        }
        fn load_on_device(&mut self, slot: usize, image: &Image<'_>) -> Result<bool, InferError> {
            if image.bytes_per_pixel == 4 {
                self.loaded.lock().unwrap().push(slot);
            }
            Ok(image.bytes_per_pixel == 4)
        }
        fn infer(&mut self, input: &[f32], batch: usize, output: &mut Vec<f32>) -> Result<(), InferError> {
            *self.seen.lock().unwrap() = input.to_vec();
            output.clear();
            output.resize(batch * self.output_len, -20.0);
            Ok(())
        }
    }

    #[test]
    fn frames_a_gpu_backend_takes_are_not_pre_processed_on_the_cpu() {
        let bundle = shipped_bundle();
        let (w, h) = bundle.input_size();
        let (w, h) = (w as usize, h as usize);
        let backend = DeviceLoading { output_len: bundle.output_len(), ..DeviceLoading::default() };
        let mut det = Detector::new(&bundle, Box::new(backend.clone())).unwrap();
        let lb = Letterbox::new(w as u32, h as u32, w as u32, h as u32);
        let rgba = vec![255u8; w * h * 4];
        let rgb = vec![255u8; w * h * 3];
        det.load(0, Image { data: &rgba, stride: w * 4, bytes_per_pixel: 4 }, lb).unwrap();
        det.load(1, Image::rgb(&rgb, w * 3), lb).unwrap();
        det.run(2).unwrap();
        assert_eq!(det.max_batch(), 2);
        let len = 3 * w * h;
        assert_eq!(*backend.loaded.lock().unwrap(), [0]);
        let seen = backend.seen.lock().unwrap();
        assert!(seen[..len].iter().all(|&v| v == 0.0), "slot 0 was the device's to fill");
        assert!(seen[len..2 * len].iter().all(|&v| (v - 1.0).abs() < 1e-6), "slot 1: white on the CPU");
        assert!(det.detections(0).is_empty() && det.detections(1).is_empty());
    }

    /// A frame as capture hands it over: packed RGB letterboxed to `size`.
    struct Captured {
        rgb: Vec<u8>,
        size: (u32, u32),
        source: (u32, u32),
    }

    impl FrameImage for Captured {
        fn image(&self) -> Image<'_> {
            Image::rgb(&self.rgb, self.size.0 as usize * 3)
        }
        fn source_size(&self) -> (u32, u32) {
            self.source
        }
        fn image_size(&self) -> (u32, u32) {
            self.size
        }
    }

    #[test]
    fn a_frame_letterboxed_for_the_previous_model_is_letterboxed_again_not_refused() {
        let bundle = shipped_bundle();
        assert_eq!(bundle.input_size(), (320, 320));
        let backend = DeviceLoading { output_len: bundle.output_len(), ..DeviceLoading::default() };
        let mut det = Detector::new(&bundle, Box::new(backend.clone())).unwrap();
        // A 256×192 picture; capture planned for a 256×256 model put it between 32-row borders.
        let (sw, sh) = (256usize, 192usize);
        let pixel = |x: usize, y: usize| [(x % 256) as u8, (y * 3 % 256) as u8, ((x + y) % 256) as u8];
        let picture: Vec<u8> = (0..sh).flat_map(|y| (0..sw).flat_map(move |x| pixel(x, y))).collect();
        let mut old = vec![0u8; 256 * 256 * 3];
        old[32 * 256 * 3..][..picture.len()].copy_from_slice(&picture);
        let frame = Captured { rgb: old, size: (256, 256), source: (sw as u32, sh as u32) };
        Stages::<Captured>::preprocess(&mut det, 0, &frame).unwrap();
        det.run(1).unwrap();
        // The same as the picture letterboxed straight into the model's input.
        let mut want = vec![0.0; 3 * 320 * 320];
        let direct = transform::Pixels::Rgb { data: &picture, stride: sw * 3 };
        transform::reference(&direct, &bundle.manifest.input.transform((256, 192), (320, 320)), &mut want);
        assert_eq!(*backend.seen.lock().unwrap(), want);
        assert_eq!(det.letterboxes[0], det.pre.model_letterbox((256, 192)), "boxes map back to the source");
        // At the model's own size a frame takes the usual path; a frame too short for its size is refused.
        let direct_frame = Captured { rgb: vec![0; 320 * 320 * 3], size: (320, 320), source: (320, 320) };
        Stages::<Captured>::preprocess(&mut det, 0, &direct_frame).unwrap();
        let short = Captured { rgb: vec![0; 100], size: (256, 256), source: (256, 192) };
        assert!(Stages::<Captured>::preprocess(&mut det, 0, &short).is_err());
    }

    #[test]
    fn backend_choice_follows_the_request_the_bundle_and_the_machine() {
        let both = [BundleBackend::Onnxruntime, BundleBackend::Tensorrt];
        let ort_only = [BundleBackend::Onnxruntime];
        let trt_only = [BundleBackend::Tensorrt];
        let no_gpu = || Err("no CUDA device".to_owned());
        let choose =
            |req, sup: &[BundleBackend], trt| choose_backend(req, sup, trt).map(|c| (c.backend, c.fallback.is_some()));
        assert_eq!(choose(BackendKind::Auto, &both, Ok(())).unwrap(), (BackendKind::Tensorrt, false));
        assert_eq!(choose(BackendKind::Auto, &both, no_gpu()).unwrap(), (BackendKind::Onnxruntime, false));
        assert_eq!(choose(BackendKind::Auto, &ort_only, Ok(())).unwrap(), (BackendKind::Onnxruntime, false));
        // Asked for TensorRT, cannot have it: falls back, and says why.
        let c = choose_backend(BackendKind::Tensorrt, &both, no_gpu()).unwrap();
        assert_eq!(c.backend, BackendKind::Onnxruntime);
        assert!(c.fallback.unwrap().contains("no CUDA device"));
        let c = choose_backend(BackendKind::Tensorrt, &ort_only, Ok(())).unwrap();
        assert!(c.fallback.unwrap().contains("does not declare tensorrt"));
        assert_eq!(choose(BackendKind::Onnxruntime, &both, Ok(())).unwrap(), (BackendKind::Onnxruntime, false));
        assert_eq!(choose(BackendKind::Onnxruntime, &trt_only, Ok(())).unwrap(), (BackendKind::Tensorrt, true));
        let err = choose_backend(BackendKind::Auto, &trt_only, no_gpu()).unwrap_err().to_string();
        assert!(err.contains("no backend can run this model") && err.contains("no CUDA device"), "{err}");
    }

    fn shipped_bundle() -> Bundle {
        Bundle::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/bundles/shapes-v1"))
            .expect("the shipped bundle loads")
    }

    /// The shipped bundle with other pre-processing conventions written into its manifest.
    fn bundle_with(dir: &std::path::Path, color: &str, letterbox: &str, pad: u8) -> Bundle {
        let shipped = shipped_bundle();
        for entry in std::fs::read_dir(&shipped.dir).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
            }
        }
        let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
        let text = text
            .replace("color = \"RGB\"", &format!("color = \"{color}\""))
            .replace("letterbox = \"center\"", &format!("letterbox = \"{letterbox}\""))
            .replace("pad_value = 0", &format!("pad_value = {pad}"));
        std::fs::write(dir.join("manifest.toml"), text).unwrap();
        Bundle::load(dir).expect("the conventions are accepted")
    }

    #[test]
    fn the_cpu_preprocessing_follows_each_convention_as_the_reference_transform_does() {
        // A 320×160 frame into 320×320 is not resampled (scale 1): GStreamer's centred letterbox
        // of it and the reference transform of the frame itself must give the same tensor.
        let (sw, sh) = (320u32, 160u32);
        let frame: Vec<u8> = (0..sw * sh)
            .flat_map(|i| {
                let (x, y) = (i % sw, i / sw);
                [(x % 251) as u8, (y * 3 % 256) as u8, ((x + 2 * y) % 256) as u8, 255]
            })
            .collect();
        // What GStreamer hands over: the frame centred, black above and below.
        let mut boxed = vec![0u8; 320 * 320 * 4];
        boxed[80 * 320 * 4..240 * 320 * 4].copy_from_slice(&frame);
        for (color, letterbox, pad) in
            [("RGB", "center", 0), ("BGR", "top-left", 114), ("BGR", "center", 114), ("RGB", "top-left", 7)]
        {
            let dir = tempfile::tempdir().unwrap();
            let bundle = bundle_with(dir.path(), color, letterbox, pad);
            let pre = Preprocessor::new(&bundle);
            let mut got = vec![0.0; pre.len()];
            pre.run(Image { data: &boxed, stride: 320 * 4, bytes_per_pixel: 4 }, (sw, sh), &mut got);
            let i = &bundle.manifest.input;
            let anchor = i.letterbox.known().unwrap().anchor();
            let t = transform::Transform::new((sw, sh), (320, 320), i.scale, i.mean, i.std, pad)
                .with_conventions(anchor, color == "BGR");
            let mut want = vec![0.0; t.len()];
            transform::reference(&transform::Pixels::Rgba { data: &frame, stride: sw as usize * 4 }, &t, &mut want);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-6, "{color} {letterbox} pad {pad}: off by {worst}");
            // And boxes go back through the model's own letterbox.
            let lb = pre.model_letterbox((sw, sh));
            assert_eq!(lb.pad_y, if letterbox == "center" { 80.0 } else { 0.0 });
        }
    }

    #[test]
    fn unknown_conventions_are_refused_with_the_ones_vigil_takes() {
        let dir = tempfile::tempdir().unwrap();
        bundle_with(dir.path(), "RGB", "center", 0);
        let manifest = dir.path().join("manifest.toml");
        let text = std::fs::read_to_string(&manifest).unwrap().replace("color = \"RGB\"", "color = \"HSV\"");
        std::fs::write(&manifest, text.replace("dtype = \"f32\"", "dtype = \"f64\"")).unwrap();
        let e = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("input.color `HSV` is not supported (use `RGB` or `BGR`)"), "{e}");
        assert!(e.contains("input.dtype `f64` is not supported (use `f32` or `f16`)"), "{e}");
    }

    #[test]
    fn rgba_and_rgb_images_preprocess_alike() {
        let bundle = shipped_bundle();
        let pre = Preprocessor::new(&bundle);
        let (w, h) = bundle.input_size();
        let source = (w, h);
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
        let (mut a, mut b) = (vec![0.0; pre.len()], vec![0.0; pre.len()]);
        pre.run(Image::rgb(&rgb, rgb_stride), source, &mut a);
        pre.run(Image { data: &rgba, stride: w * 4, bytes_per_pixel: 4 }, source, &mut b);
        assert_eq!(a.len(), 3 * w * h);
        assert_eq!(a, b);
        assert_ne!(a[1], a[w * h + 1], "channels land in their own planes");
    }
}
