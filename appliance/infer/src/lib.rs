//! Inference: the `Backend` seam, pre-processing of decoded frames into the model's input
//! tensor, and post-processing of its output into source-frame detections.

pub mod accept;
pub mod bundle;
pub mod check;
pub mod compare;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine_cache;
pub mod expect;
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
    /// GPU backends: pre-processes an RGBA `image` of `source` size on the device (the
    /// transform of [`transform::reference`]), straight into input slot `slot`, on the stream
    /// inference runs on. `Ok(false)` when this backend or image cannot (the caller
    /// pre-processes on the CPU instead). Slots loaded here are not taken from
    /// `input` by the next [`Backend::infer`].
    fn load_on_device(&mut self, _slot: usize, _image: &Image<'_>, _source: (u32, u32)) -> Result<bool, InferError> {
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

/// Builds the model's input tensor from a decoded frame at its own size, as the bundle declares
/// it: [`transform::reference`] with the bundle's conventions (letterbox anchor and rounding, pad
/// value, channel order, scale, mean and std). The same function computed the bundle's reference
/// tensors at pack time, so a frame and the same decoded picture give the same tensor.
pub struct Preprocessor {
    conventions: bundle::InputSection,
    width: u32,
    height: u32,
}

impl Preprocessor {
    pub fn new(bundle: &Bundle) -> Self {
        let (width, height) = bundle.input_size();
        Self { conventions: bundle.manifest.input.clone(), width, height }
    }

    /// Values one image takes.
    pub fn len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the model wants a frame of `source` size: the letterbox boxes are mapped back with.
    pub fn model_letterbox(&self, source: (u32, u32)) -> Letterbox {
        self.conventions.letterbox(source, (self.width, self.height))
    }

    /// Fills `out` (exactly [`Self::len`] values) from `image`, a packed RGB or RGBA frame of
    /// `source` size.
    pub fn run(&self, image: Image<'_>, source: (u32, u32), out: &mut [f32]) -> Result<(), InferError> {
        let (w, h) = source;
        let bpp = image.bytes_per_pixel;
        let fits = w > 0
            && h > 0
            && image.stride >= w as usize * bpp
            && image.data.len() >= (h as usize - 1) * image.stride + w as usize * bpp;
        if !fits || !(3..=4).contains(&bpp) {
            return Err(not_an_image(&image, source));
        }
        let (data, stride) = (image.data, image.stride);
        let pixels =
            if bpp == 4 { transform::Pixels::Rgba { data, stride } } else { transform::Pixels::Rgb { data, stride } };
        transform::reference(&pixels, &self.conventions.transform(source, (self.width, self.height)), out);
        Ok(())
    }
}

/// A bundle's model on a backend, end to end: decoded frames in, source-pixel detections out, one
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

    /// Pre-processes a decoded frame of `source` size into batch slot `slot` (on the device
    /// where the backend can, else on the CPU); the boxes found there are mapped back with the
    /// model's letterbox.
    pub fn load(&mut self, slot: usize, image: Image<'_>, source: (u32, u32)) -> Result<(), InferError> {
        let chunk = slot_input(&mut self.input, slot, self.pre.len())?;
        if !self.backend.load_on_device(slot, &image, source)? {
            self.pre.run(image, source, chunk)?;
        }
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

    /// Runs the model on one decoded frame of `source` size. Boxes come back in source pixels.
    pub fn detect(&mut self, image: Image<'_>, source: (u32, u32)) -> Result<Vec<Detection>, InferError> {
        self.load(0, image, source)?;
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

/// The detector is the scheduler's stages for any decoded frame.
impl<F: FrameImage> Stages<F> for Detector {
    type Error = InferError;

    fn cost_key(&self) -> &str {
        &self.cost_key
    }

    fn max_batch(&self) -> usize {
        Detector::max_batch(self)
    }

    fn preprocess(&mut self, slot: usize, frame: &F) -> Result<(), InferError> {
        self.load(slot, frame.image(), frame.size())
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
        fn load_on_device(&mut self, slot: usize, image: &Image<'_>, _source: (u32, u32)) -> Result<bool, InferError> {
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
        let size = (w as u32, h as u32);
        let rgba = vec![255u8; w * h * 4];
        let rgb = vec![255u8; w * h * 3];
        det.load(0, Image { data: &rgba, stride: w * 4, bytes_per_pixel: 4 }, size).unwrap();
        det.load(1, Image::rgb(&rgb, w * 3), size).unwrap();
        det.run(2).unwrap();
        assert_eq!(det.max_batch(), 2);
        let len = 3 * w * h;
        assert_eq!(*backend.loaded.lock().unwrap(), [0]);
        let seen = backend.seen.lock().unwrap();
        assert!(seen[..len].iter().all(|&v| v == 0.0), "slot 0 was the device's to fill");
        assert!(seen[len..2 * len].iter().all(|&v| (v - 1.0).abs() < 1e-6), "slot 1: white on the CPU");
        assert!(det.detections(0).is_empty() && det.detections(1).is_empty());
    }

    /// A frame as capture hands it over: packed RGB at its decoded size, rows padded to 4 bytes.
    struct Captured {
        rgb: Vec<u8>,
        stride: usize,
        size: (u32, u32),
    }

    impl FrameImage for Captured {
        fn image(&self) -> Image<'_> {
            Image::rgb(&self.rgb, self.stride)
        }
        fn size(&self) -> (u32, u32) {
            self.size
        }
    }

    #[test]
    fn frames_of_any_size_are_letterboxed_by_the_model_and_mapped_back_through_its_letterbox() {
        let bundle = shipped_bundle();
        assert_eq!(bundle.input_size(), (320, 320));
        let backend = DeviceLoading { output_len: bundle.output_len(), ..DeviceLoading::default() };
        let mut det = Detector::new(&bundle, Box::new(backend.clone())).unwrap();
        for (sw, sh) in [(257usize, 191usize), (1280, 720), (320, 320)] {
            let stride = (sw * 3).div_ceil(4) * 4;
            let mut rgb = vec![0u8; stride * sh];
            for y in 0..sh {
                for x in 0..sw {
                    rgb[y * stride + x * 3..][..3].copy_from_slice(&[
                        (x % 256) as u8,
                        (y * 3 % 256) as u8,
                        ((x + y) % 256) as u8,
                    ]);
                }
            }
            let frame = Captured { rgb, stride, size: (sw as u32, sh as u32) };
            Stages::<Captured>::preprocess(&mut det, 0, &frame).unwrap();
            det.run(1).unwrap();
            let mut want = vec![0.0; 3 * 320 * 320];
            let direct = transform::Pixels::Rgb { data: &frame.rgb, stride };
            transform::reference(&direct, &bundle.manifest.input.transform(frame.size, (320, 320)), &mut want);
            assert_eq!(*backend.seen.lock().unwrap(), want, "{sw}x{sh}");
            assert_eq!(det.letterboxes[0], bundle.manifest.input.letterbox(frame.size, (320, 320)), "{sw}x{sh}");
        }
        // A frame whose bytes do not hold its size is refused, not read past.
        let short = Captured { rgb: vec![0; 100], stride: 768, size: (256, 192) };
        let e = Stages::<Captured>::preprocess(&mut det, 0, &short).unwrap_err().to_string();
        assert!(e.contains("is not a 256x192 RGB/RGBA image"), "{e}");
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
    fn the_cpu_preprocessing_follows_each_convention_of_the_manifest() {
        // 320x160 into 320x320 (scale 1): each convention's tensor is the frame's pixels at the
        // anchor, in the channel order, with the pad value around them.
        let (sw, sh) = (320u32, 160u32);
        let px = |x: u32, y: u32| [(x % 251) as u8, (y * 3 % 256) as u8, ((x + 2 * y) % 256) as u8, 255];
        let frame: Vec<u8> = (0..sw * sh).flat_map(|i| px(i % sw, i / sw)).collect();
        for (color, letterbox, pad) in
            [("RGB", "center", 0), ("BGR", "top-left", 114), ("BGR", "center", 114), ("RGB", "top-left", 7)]
        {
            let dir = tempfile::tempdir().unwrap();
            let bundle = bundle_with(dir.path(), color, letterbox, pad);
            let pre = Preprocessor::new(&bundle);
            let mut got = vec![0.0; pre.len()];
            pre.run(Image { data: &frame, stride: sw as usize * 4, bytes_per_pixel: 4 }, (sw, sh), &mut got).unwrap();
            let top = if letterbox == "center" { 80 } else { 0 };
            let plane = 320 * 320;
            let value = |v: u8| f32::from(v) * bundle.manifest.input.scale;
            for (x, y) in [(0u32, 0u32), (17, 5), (319, 159)] {
                let want = px(x, y);
                let want = if color == "BGR" { [want[2], want[1], want[0]] } else { [want[0], want[1], want[2]] };
                let at = ((y + top) * 320 + x) as usize;
                let seen = [got[at], got[plane + at], got[2 * plane + at]];
                assert_eq!(seen, want.map(value), "{color} {letterbox}: pixel ({x}, {y})");
            }
            let border = if letterbox == "center" { 0 } else { 319 * 320 };
            assert_eq!(got[border], value(pad), "{color} {letterbox}: the border");
            assert_eq!(pre.model_letterbox((sw, sh)).pad_y, top as f32);
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
        pre.run(Image::rgb(&rgb, rgb_stride), source, &mut a).unwrap();
        pre.run(Image { data: &rgba, stride: w * 4, bytes_per_pixel: 4 }, source, &mut b).unwrap();
        assert_eq!(a.len(), 3 * w * h);
        assert_eq!(a, b);
        assert_ne!(a[1], a[w * h + 1], "channels land in their own planes");
    }
}
