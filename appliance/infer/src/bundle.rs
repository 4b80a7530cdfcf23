//! Model bundles: a directory with `manifest.toml`, the INT8 QDQ ONNX model (what ONNX Runtime
//! runs here and TensorRT builds its engine from on a Jetson) and reference tensors.
//!
//! A bundle is checked completely before use: schema, shapes against labels, the model file's
//! SHA-256. A bad bundle is refused with every problem named, never half-loaded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use super::{Detection, OutputLayout};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub model: ModelSection,
    pub input: InputSection,
    pub output: OutputSection,
    pub postprocess: PostprocessSection,
    pub budget: BudgetSection,
    #[serde(default)]
    pub reference: Option<ReferenceSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// The INT8 QDQ model.
    pub onnx: PathBuf,
    #[serde(default)]
    pub onnx_fp32: Option<PathBuf>,
    /// Hex SHA-256 of `onnx`.
    pub sha256: String,
    /// Backends this model is known to work on (names vigil does not know are left out).
    pub backends: Vec<Choice<BundleBackend>>,
}

/// A manifest value that must be one of a few, kept as written when it is none of them, so that
/// an unsupported value is reported among every other problem of the bundle (by
/// [`Bundle::load`]), not as the first parse error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<T> {
    Known(T),
    Unsupported(String),
}

impl<T: Copy> Choice<T> {
    pub fn known(&self) -> Option<T> {
        match self {
            Choice::Known(t) => Some(*t),
            Choice::Unsupported(_) => None,
        }
    }

    /// The value as written, if it is not one vigil supports.
    pub fn unsupported(&self) -> Option<&str> {
        match self {
            Choice::Known(_) => None,
            Choice::Unsupported(v) => Some(v),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = String::deserialize(d)?;
        let known: Result<T, serde::de::value::Error> =
            T::deserialize(serde::de::value::StrDeserializer::new(&written));
        Ok(known.map_or(Choice::Unsupported(written), Choice::Known))
    }
}

/// A backend a bundle can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleBackend {
    Onnxruntime,
    Tensorrt,
}

impl fmt::Display for BundleBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Onnxruntime => "onnxruntime",
            Self::Tensorrt => "tensorrt",
        })
    }
}

/// The input tensor's memory layout (only NCHW is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TensorLayout {
    #[serde(rename = "NCHW")]
    Nchw,
}

/// The input's channel order: the order of the tensor's three planes (and of `mean` and `std`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ColorOrder {
    #[serde(rename = "RGB")]
    Rgb,
    /// OpenCV-trained models (YOLOX exports, many Caffe-era models).
    #[serde(rename = "BGR")]
    Bgr,
}

/// The input tensor's element type as the ONNX model takes it (quantization happens inside the
/// QDQ model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum InputDtype {
    #[serde(rename = "f32")]
    F32,
    /// Half precision (models exported with `half=True`); vigil converts while building the tensor.
    #[serde(rename = "f16")]
    F16,
}

/// Where a frame sits in the input once fitted (aspect kept). vigil's GStreamer path scales and
/// centres it; the tensor is built at the bundle's anchor with its pad value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum LetterboxMode {
    #[serde(rename = "center")]
    Center,
    /// The image in the top-left corner, padding right and below (YOLOX's preprocessing).
    #[serde(rename = "top-left")]
    TopLeft,
}

/// How the scaled picture's size is made whole from `side × scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum SizeRounding {
    /// Python's `round()` (Ultralytics: `int(round(w * r))`).
    #[serde(rename = "round")]
    Round,
    /// Python's `int()` (YOLOX: `int(w * r)`).
    #[serde(rename = "floor")]
    Floor,
}

impl SizeRounding {
    pub fn rounding(self) -> vigil_core::geometry::Rounding {
        match self {
            Self::Round => vigil_core::geometry::Rounding::Round,
            Self::Floor => vigil_core::geometry::Rounding::Floor,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Round => "round",
            Self::Floor => "floor",
        }
    }
}

impl LetterboxMode {
    pub fn anchor(self) -> vigil_core::geometry::Anchor {
        match self {
            Self::Center => vigil_core::geometry::Anchor::Center,
            Self::TopLeft => vigil_core::geometry::Anchor::TopLeft,
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    /// A format by its manifest name; the error names the ones vigil decodes.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vigil-grid-v1" => Ok(Self::VigilGridV1),
            "yolov5" => Ok(Self::YoloV5),
            "yolov8" => Ok(Self::YoloV8),
            "yolox" => Ok(Self::Yolox),
            other => {
                Err(format!("output.format `{other}` is not supported (one of vigil-grid-v1, yolov5, yolov8, yolox)"))
            }
        }
    }
}

/// The output layouts vigil decodes (see [`OutputLayout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OutputFormat {
    #[serde(rename = "vigil-grid-v1")]
    VigilGridV1,
    #[serde(rename = "yolov5")]
    YoloV5,
    #[serde(rename = "yolov8")]
    YoloV8,
    #[serde(rename = "yolox")]
    Yolox,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub name: String,
    pub shape: Vec<i64>,
    pub layout: Choice<TensorLayout>,
    pub color: Choice<ColorOrder>,
    pub dtype: Choice<InputDtype>,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub letterbox: Choice<LetterboxMode>,
    pub pad_value: u8,
    /// How the scaled picture's size is made whole (`round`, the default, or `floor`).
    #[serde(default = "round")]
    pub size_rounding: Choice<SizeRounding>,
}

fn round() -> Choice<SizeRounding> {
    Choice::Known(SizeRounding::Round)
}

impl InputSection {
    /// Where the frame sits in the input (a loaded bundle's value is always a known one).
    pub fn anchor(&self) -> vigil_core::geometry::Anchor {
        self.letterbox.known().map(LetterboxMode::anchor).unwrap_or_default()
    }

    /// How the scaled size is rounded (a loaded bundle's value is always a known one).
    pub fn rounding(&self) -> vigil_core::geometry::Rounding {
        self.size_rounding.known().map(SizeRounding::rounding).unwrap_or_default()
    }

    /// Where a frame of `source` size goes in the `input`: the letterbox boxes are mapped back
    /// with.
    pub fn letterbox(&self, source: (u32, u32), input: (u32, u32)) -> vigil_core::geometry::Letterbox {
        vigil_core::geometry::Letterbox::fit(source, input, self.anchor(), self.rounding())
    }

    /// The planes are in B, G, R order.
    pub fn bgr(&self) -> bool {
        self.color.known() == Some(ColorOrder::Bgr)
    }

    /// A pre-processing transform from a `source`-sized frame into the `input` size, with the
    /// bundle's values and conventions.
    pub fn transform(&self, source: (u32, u32), input: (u32, u32)) -> crate::transform::Transform {
        crate::transform::Transform::new(source, input, self.scale, self.mean, self.std, self.pad_value)
            .with_conventions(self.anchor(), self.rounding(), self.bgr())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub name: String,
    pub format: Choice<OutputFormat>,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostprocessSection {
    pub labels: Vec<String>,
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub max_detections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// Capture → detections budget (`latency_ms` in the manifest, at least 1).
    #[serde(rename = "latency_ms", deserialize_with = "milliseconds")]
    pub latency: Duration,
}

fn milliseconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSection {
    pub input: PathBuf,
    /// The bundle's model's output on `input` (`output_int8` in older bundles, when
    /// every bundle was INT8).
    #[serde(alias = "output_int8")]
    pub output: PathBuf,
    /// The FP32 original's output on `input`, where the bundle's model is its INT8 version.
    #[serde(default)]
    pub output_fp32: Option<PathBuf>,
    /// The model's detections on `input`, in model-input pixels.
    pub detections: PathBuf,
    /// Largest absolute difference allowed between a backend's output and `output`.
    pub tolerance: f32,
    /// The reference picture as decoded, packed RGB, `picture_size` pixels: what `expected`
    /// was given for (`vigil model pack --expect`).
    #[serde(default)]
    pub picture: Option<PathBuf>,
    #[serde(default)]
    pub picture_size: Option<[u32; 2]>,
    /// The exporter's own pipeline's detections on `picture`, in its pixels (src/expect.rs).
    #[serde(default)]
    pub expected: Option<PathBuf>,
}

/// A bundle's reference picture and its exporter's detections on it.
#[derive(Debug, Clone)]
pub struct ExpectedPicture {
    /// Packed RGB.
    pub rgb: Vec<u8>,
    pub size: (u32, u32),
    /// In the picture's pixels.
    pub detections: Vec<Detection>,
}

/// A loaded, checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("model bundle {dir}: cannot read {file}: {source}")]
    Read { dir: PathBuf, file: PathBuf, source: std::io::Error },
    #[error("model bundle {dir}: manifest.toml is invalid: {message}")]
    Parse { dir: PathBuf, message: String },
    #[error("model bundle {dir} is unusable:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { dir: PathBuf, problems: Vec<String> },
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let manifest_path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| BundleError::Read {
            dir: dir.into(),
            file: manifest_path.clone(),
            source,
        })?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| BundleError::Parse { dir: dir.into(), message: e.to_string() })?;
        let bundle = Self { dir: dir.to_path_buf(), manifest };
        let problems = bundle.check();
        if problems.is_empty() {
            Ok(bundle)
        } else {
            Err(BundleError::Invalid { dir: dir.into(), problems })
        }
    }

    fn check(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut problems = Vec::new();
        if m.schema != SCHEMA {
            problems.push(format!("schema {} is not supported (this vigil reads schema {SCHEMA})", m.schema));
        }
        let model = self.model_path();
        match std::fs::read(&model) {
            Ok(bytes) => {
                let digest = hex::encode(Sha256::digest(&bytes));
                if !digest.eq_ignore_ascii_case(&m.model.sha256) {
                    problems.push(format!(
                        "model.onnx {} has SHA-256 {digest}, the manifest says {}; the bundle is corrupt or was \
                         edited: re-install it",
                        model.display(),
                        m.model.sha256
                    ));
                }
            }
            Err(e) => problems.push(format!("model.onnx {}: {e}", model.display())),
        }
        let i = &m.input;
        if i.shape.len() != 4 || i.shape[0] != 1 || i.shape[1] != 3 || i.shape[2] <= 0 || i.shape[3] <= 0 {
            problems.push(format!("input.shape {:?} must be [1, 3, H, W]", i.shape));
        }
        for (field, value, allowed) in [
            ("input.layout", i.layout.unsupported(), "`NCHW`"),
            ("input.color", i.color.unsupported(), "`RGB` or `BGR`"),
            ("input.dtype", i.dtype.unsupported(), "`f32` or `f16`"),
            ("input.letterbox", i.letterbox.unsupported(), "`center` or `top-left`"),
            ("input.size_rounding", i.size_rounding.unsupported(), "`round` or `floor`"),
        ] {
            if let Some(value) = value {
                problems.push(format!("{field} `{value}` is not supported (use {allowed})"));
            }
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(i.scale) || !i.std.iter().all(|s| positive(*s)) {
            problems.push("input.scale and input.std must be positive".to_owned());
        }
        let classes = m.postprocess.labels.len() as i64;
        if classes == 0 {
            problems.push("postprocess.labels is empty".to_owned());
        }
        if i.shape.len() == 4 && i.shape[2] > 0 && i.shape[3] > 0 {
            if let Err(e) = self.output_layout_unchecked() {
                problems.push(e);
            }
        }
        let pp = &m.postprocess;
        if !(0.0..=1.0).contains(&pp.score_threshold) || !(0.0..=1.0).contains(&pp.nms_iou) {
            problems.push("postprocess.score_threshold and nms_iou must be within 0..=1".to_owned());
        }
        if pp.max_detections == 0 {
            problems.push("postprocess.max_detections must be at least 1".to_owned());
        }
        if m.budget.latency.is_zero() {
            problems.push("budget.latency_ms must be at least 1".to_owned());
        }
        if let Some(r) = &m.reference {
            match (&r.picture, r.picture_size, &r.expected) {
                (None, None, None) | (Some(_), Some(_), Some(_)) => {}
                _ => problems.push(
                    "reference.picture, picture_size and expected go together (vigil model pack --expect writes them)"
                        .to_owned(),
                ),
            }
        }
        problems
    }

    /// The reference picture and the exporter's detections on it, when the bundle was packed with
    /// `--expect`.
    pub fn expected(&self) -> Result<Option<ExpectedPicture>, BundleError> {
        let Some(r) = &self.manifest.reference else { return Ok(None) };
        let (Some(picture), Some([w, h]), Some(expected)) = (&r.picture, r.picture_size, &r.expected) else {
            return Ok(None);
        };
        let invalid = |p: String| BundleError::Invalid { dir: self.dir.clone(), problems: vec![p] };
        let path = self.dir.join(picture);
        let rgb = std::fs::read(&path).map_err(|source| BundleError::Read {
            dir: self.dir.clone(),
            file: path.clone(),
            source,
        })?;
        if w == 0 || h == 0 || rgb.len() != w as usize * h as usize * 3 {
            return Err(invalid(format!("{} holds {} bytes, not {w}×{h} packed RGB", path.display(), rgb.len())));
        }
        let dets = crate::expect::read_expected(&self.dir.join(expected), &self.manifest.postprocess.labels)
            .map_err(invalid)?;
        Ok(Some(ExpectedPicture { rgb, size: (w, h), detections: dets }))
    }

    fn output_layout_unchecked(&self) -> Result<OutputLayout, String> {
        let m = &self.manifest;
        match &m.output.format {
            Choice::Known(format) => {
                OutputLayout::new(*format, &m.output.shape, m.postprocess.labels.len(), self.input_size())
            }
            // Parsed again for its error, which names the formats vigil decodes.
            Choice::Unsupported(other) => other
                .parse::<OutputFormat>()
                .and_then(|f| OutputLayout::new(f, &m.output.shape, m.postprocess.labels.len(), self.input_size())),
        }
    }

    /// The backends the bundle declares that vigil knows.
    pub fn backends(&self) -> Vec<BundleBackend> {
        self.manifest.model.backends.iter().filter_map(Choice::known).collect()
    }

    /// How to decode the model's output (checked when the bundle was loaded).
    pub fn output_layout(&self) -> Result<OutputLayout, BundleError> {
        self.output_layout_unchecked().map_err(|p| BundleError::Invalid { dir: self.dir.clone(), problems: vec![p] })
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.model.onnx)
    }

    /// Model input (width, height) in pixels.
    pub fn input_size(&self) -> (u32, u32) {
        let s = &self.manifest.input.shape;
        (s[3] as u32, s[2] as u32)
    }

    pub fn input_len(&self) -> usize {
        self.manifest.input.shape.iter().product::<i64>() as usize
    }

    pub fn output_len(&self) -> usize {
        self.manifest.output.shape.iter().product::<i64>() as usize
    }

    /// Reads a raw little-endian f32 file named by the reference section.
    pub fn read_f32(&self, rel: &Path) -> Result<Vec<f32>, BundleError> {
        let path = self.dir.join(rel);
        let bytes = std::fs::read(&path).map_err(|source| BundleError::Read {
            dir: self.dir.clone(),
            file: path.clone(),
            source,
        })?;
        f32_values(&bytes).ok_or_else(|| BundleError::Invalid {
            dir: self.dir.clone(),
            problems: vec![format!("{} is not a whole number of f32 values", path.display())],
        })
    }
}

/// Raw little-endian f32 values, as reference tensors and calibration tensors are stored;
/// `None` when the bytes are not a whole number of them.
pub fn f32_values(bytes: &[u8]) -> Option<Vec<f32>> {
    bytes
        .len()
        .is_multiple_of(4)
        .then(|| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// `values` as raw little-endian f32 bytes (see [`f32_values`]).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
