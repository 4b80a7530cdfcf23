//! `vigil model pack`: an ONNX export → a complete bundle (models/README.md).
//!
//! It reads the model's inputs and outputs through ONNX Runtime, recognises the output layout
//! (YOLOv5, YOLOv8/11, YOLOX, vigil-grid) from its shape and the labels, checks the contract
//! (one NCHW image input of fixed size, f32 or f16; an output that fits the labels), writes the
//! manifest with the exporter's pre-processing conventions, the model's SHA-256, and reference
//! tensors and detections computed from a real frame with the CPU reference transform. The
//! result is loaded and checked as `vigil model-check` would before it is reported done. What
//! it cannot serve is refused with the reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::bundle::{f32_bytes, BundleBackend, ColorOrder, InputDtype, LetterboxMode, OutputFormat, SizeRounding};
use crate::onnxruntime::{describe_model, Tensor};
use crate::transform::{self, Pixels};
use crate::{Bundle, Detector, OrtBackend, OutputLayout};

/// Everything a bundle needs besides the ONNX file.
#[derive(Debug, Clone)]
pub struct PackRequest {
    pub onnx: PathBuf,
    /// The bundle directory to create (it must not exist, or be empty).
    pub out: PathBuf,
    pub name: String,
    pub version: String,
    pub description: String,
    pub labels: Vec<String>,
    /// The output layout; recognised from the shape when `None`.
    pub format: Option<OutputFormat>,
    /// The output to decode, when the model has several.
    pub output: Option<String>,
    pub color: ColorOrder,
    pub letterbox: LetterboxMode,
    /// How the exporter makes the scaled size whole (`int(round(w*r))` or `int(w*r)`).
    pub size_rounding: SizeRounding,
    pub pad_value: u8,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub max_detections: usize,
    pub budget_ms: u64,
    /// Largest |output − reference| another backend may show (TensorRT on a Jetson).
    pub tolerance: f32,
    pub backends: Vec<BundleBackend>,
    /// The exporter's own detections on the reference frame, in its pixels (`--expect`): the
    /// bundle is refused unless vigil's agree (src/expect.rs).
    pub expect: Option<PathBuf>,
}

/// A frame at its own size, tight RGBA.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    pub width: u32,
    pub height: u32,
    pub rgba: &'a [u8],
}

/// What was packed.
#[derive(Debug, Clone)]
pub struct Packed {
    pub dir: PathBuf,
    pub format: OutputFormat,
    pub input: (u32, u32),
    pub detections: usize,
    /// The model holds QuantizeLinear/DequantizeLinear nodes (INT8 QDQ): TensorRT builds INT8.
    pub quantized: bool,
    /// How vigil's detections compared with the exporter's (with `expect`).
    pub agreement: Option<crate::expect::Agreement>,
    /// What the packer should know: the bundle is sound, but a check had little to go on.
    pub warnings: Vec<String>,
}

/// Why a model cannot be packed: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("cannot pack {}:\n{}", onnx.display(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct PackError {
    pub onnx: PathBuf,
    pub problems: Vec<String>,
}

const FORMATS: [(OutputFormat, &str); 4] = [
    (OutputFormat::VigilGridV1, "vigil-grid-v1"),
    (OutputFormat::YoloV5, "yolov5"),
    (OutputFormat::YoloV8, "yolov8"),
    (OutputFormat::Yolox, "yolox"),
];

fn format_name(f: OutputFormat) -> &'static str {
    FORMATS.iter().find(|(g, _)| *g == f).map_or("?", |(_, n)| n)
}

/// The image input: `[1 or −1, 3, H, W]` with H and W fixed; its size and dtype.
fn image_input(inputs: &[Tensor], problems: &mut Vec<String>) -> Option<(Tensor, (u32, u32), InputDtype)> {
    let [input] = inputs else {
        let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
        problems.push(format!("the model has {} inputs ({names:?}); vigil feeds one image tensor", inputs.len()));
        return None;
    };
    let s = &input.shape;
    let ok = s.len() == 4 && (s[0] == 1 || s[0] < 0) && s[1] == 3 && s[2] > 0 && s[3] > 0;
    if !ok {
        problems.push(format!(
            "input `{}` has shape {s:?}; vigil feeds [1, 3, H, W] (NCHW, 3 channels, fixed H and W): re-export with a \
             fixed image size",
            input.name
        ));
        return None;
    }
    let dtype = match input.dtype.as_str() {
        "f32" => InputDtype::F32,
        "f16" => InputDtype::F16,
        other => {
            problems.push(format!("input `{}` is {other}; vigil feeds f32 or f16", input.name));
            return None;
        }
    };
    Some((input.clone(), (s[3] as u32, s[2] as u32), dtype))
}

/// The output to decode, and its layout: the requested one, or the one whose shape fits a
/// layout vigil decodes.
fn decoded_output(
    outputs: &[Tensor],
    req: &PackRequest,
    input: (u32, u32),
    problems: &mut Vec<String>,
) -> Option<(Tensor, OutputFormat)> {
    let candidates: Vec<&Tensor> = match &req.output {
        Some(name) => match outputs.iter().find(|o| &o.name == name) {
            Some(o) => vec![o],
            None => {
                let names: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
                problems.push(format!("the model has no output `{name}` (it has {names:?})"));
                return None;
            }
        },
        None => outputs.iter().collect(),
    };
    let classes = req.labels.len();
    let mut reasons = Vec::new();
    let mut fits = Vec::new();
    for o in &candidates {
        if o.dtype != "f32" && o.dtype != "f16" {
            reasons.push(format!("output `{}` is {}, not f32 or f16", o.name, o.dtype));
            continue;
        }
        let mut shape = o.shape.clone();
        if shape.first().is_some_and(|&b| b < 0) {
            shape[0] = 1;
        }
        let formats: Vec<OutputFormat> = match req.format {
            Some(f) => vec![f],
            None => FORMATS.iter().map(|(f, _)| *f).collect(),
        };
        let mut fitting: Vec<OutputFormat> = Vec::new();
        for f in formats {
            match OutputLayout::new(f, &shape, classes, input) {
                Ok(_) => fitting.push(f),
                Err(e) => reasons.push(format!("output `{}` as {}: {e}", o.name, format_name(f))),
            }
        }
        // [1, N, 5 + C] fits YOLOv5 for any N; when N is exactly YOLOX's grid (one box per
        // cell of strides 8, 16, 32) it is YOLOX (YOLOv5 has three anchors per cell).
        if fitting.contains(&OutputFormat::Yolox) {
            fitting.retain(|&f| f != OutputFormat::YoloV5);
        }
        for f in fitting {
            fits.push((Tensor { shape: shape.clone(), ..(*o).clone() }, f));
        }
    }
    match fits.len() {
        1 => fits.pop(),
        0 => {
            problems.push(format!(
                "no output fits a layout vigil decodes with {classes} labels ({}); check the labels, or pass \
                 --format and --output",
                reasons.join("; ")
            ));
            None
        }
        _ => {
            let found: Vec<String> = fits.iter().map(|(o, f)| format!("`{}` as {}", o.name, format_name(*f))).collect();
            problems
                .push(format!("more than one reading fits ({}); choose with --output and --format", found.join(", ")));
            None
        }
    }
}

/// Whether the ONNX file holds QDQ quantization nodes (their op names are stored as text).
fn is_qdq(bytes: &[u8]) -> bool {
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    has(b"QuantizeLinear") && has(b"DequantizeLinear")
}

/// What the bundle's model is, for its manifest.
#[derive(Clone, Copy)]
struct Model<'a> {
    input: &'a Tensor,
    size: (u32, u32),
    dtype: InputDtype,
    output: &'a Tensor,
    format: OutputFormat,
    sha256: &'a str,
    quantized: bool,
}

fn manifest(req: &PackRequest, model: &Model<'_>) -> String {
    let Model { input, size, dtype, output, format, sha256: sha, quantized } = *model;
    // TOML strings (a description may hold quotes or control characters).
    let q = |s: &str| toml::Value::from(s).to_string();
    let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let floats = |v: &[f32; 3]| format!("[{:?}, {:?}, {:?}]", v[0], v[1], v[2]);
    let backends: Vec<String> = req.backends.iter().map(ToString::to_string).collect();
    let mut m = String::new();
    let _ = writeln!(m, "schema = {}", crate::bundle::SCHEMA);
    let _ = writeln!(
        m,
        "[model]\nname = {}\nversion = {}\ndescription = {}",
        q(&req.name),
        q(&req.version),
        q(&req.description)
    );
    let what = if quantized { "INT8 QDQ" } else { "not quantized: TensorRT builds it in FP16" };
    let _ =
        writeln!(m, "onnx = \"model.onnx\"          # {what}\nsha256 = \"{sha}\"\nbackends = [{}]", list(&backends));
    let color = match req.color {
        ColorOrder::Rgb => "RGB",
        ColorOrder::Bgr => "BGR",
    };
    let letterbox = match req.letterbox {
        LetterboxMode::Center => "center",
        LetterboxMode::TopLeft => "top-left",
    };
    let dtype = match dtype {
        InputDtype::F32 => "f32",
        InputDtype::F16 => "f16",
    };
    let _ = writeln!(
        m,
        "[input]\nname = {}\nshape = [1, 3, {}, {}]\nlayout = \"NCHW\"\ncolor = \"{color}\"\ndtype = \"{dtype}\"\n\
         scale = {:?}\nmean = {}\nstd = {}\nletterbox = \"{letterbox}\"\nsize_rounding = \"{}\"\npad_value = {}",
        q(&input.name),
        size.1,
        size.0,
        req.scale,
        floats(&req.mean),
        floats(&req.std),
        req.size_rounding.name(),
        req.pad_value
    );
    let shape: Vec<String> = output.shape.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        m,
        "[output]\nname = {}\nformat = \"{}\"\nshape = [{}]",
        q(&output.name),
        format_name(format),
        shape.join(", ")
    );
    let _ = writeln!(
        m,
        "[postprocess]\nlabels = [{}]\nscore_threshold = {:?}\nnms_iou = {:?}\nmax_detections = {}",
        list(&req.labels),
        req.score_threshold,
        req.nms_iou,
        req.max_detections
    );
    let _ = writeln!(m, "[budget]\nlatency_ms = {}", req.budget_ms);
    m
}

/// `frame` as `bundle`'s model takes it: the CPU reference transform with the bundle's
/// conventions (what the device's pre-processing is checked against), f32 NCHW.
pub fn input_tensor(bundle: &Bundle, frame: &Frame<'_>) -> Vec<f32> {
    let transform = bundle.manifest.input.transform((frame.width, frame.height), bundle.input_size());
    let mut tensor = vec![0.0f32; transform.len()];
    transform::reference(&Pixels::Rgba { data: frame.rgba, stride: frame.width as usize * 4 }, &transform, &mut tensor);
    tensor
}

/// Packs `req.onnx` into `req.out`, computing the reference from `frame` with ONNX Runtime
/// (`library`). A refused model leaves no bundle behind.
pub fn pack(req: &PackRequest, frame: &Frame<'_>, library: &Path) -> Result<Packed, PackError> {
    let existed = req.out.exists();
    if existed && std::fs::read_dir(&req.out).map_or(true, |mut d| d.next().is_some()) {
        let why = format!("{} exists and is not empty; pack into a new directory", req.out.display());
        return Err(PackError { onnx: req.onnx.clone(), problems: vec![why] });
    }
    let result = pack_into(req, frame, library);
    if result.is_err() && req.out.exists() {
        let _ = std::fs::remove_dir_all(&req.out);
        if existed {
            let _ = std::fs::create_dir(&req.out);
        }
    }
    result
}

fn pack_into(req: &PackRequest, frame: &Frame<'_>, library: &Path) -> Result<Packed, PackError> {
    let refuse = |problems: Vec<String>| PackError { onnx: req.onnx.clone(), problems };
    let mut problems = Vec::new();
    if req.labels.is_empty() {
        problems.push("no labels: give the model's class names in output order (--labels)".to_owned());
    }
    let valid_name = !req.name.is_empty()
        && req.name.len() <= 64
        && req.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_name {
        problems.push(format!("`{}` is not a valid model name (letters, digits, '-', '_', '.')", req.name));
    }
    if frame.rgba.len() != frame.width as usize * frame.height as usize * 4 || frame.width == 0 {
        problems.push("the reference frame is empty or not RGBA".to_owned());
    }
    let bytes = std::fs::read(&req.onnx).map_err(|e| refuse(vec![format!("cannot read it: {e}")]))?;
    let (inputs, outputs) = describe_model(&req.onnx, library).map_err(|e| refuse(vec![e.to_string()]))?;
    let input = image_input(&inputs, &mut problems);
    let output = input.as_ref().and_then(|(_, size, _)| decoded_output(&outputs, req, *size, &mut problems));
    let (Some((input, size, dtype)), Some((output, format))) = (input, output) else {
        return Err(refuse(problems));
    };
    if !problems.is_empty() {
        return Err(refuse(problems));
    }
    let quantized = is_qdq(&bytes);
    let sha = hex::encode(Sha256::digest(&bytes));
    let io = |e: std::io::Error| refuse(vec![format!("cannot write the bundle in {}: {e}", req.out.display())]);
    std::fs::create_dir_all(req.out.join("reference")).map_err(io)?;
    std::fs::write(req.out.join("model.onnx"), &bytes).map_err(io)?;
    let model = Model { input: &input, size, dtype, output: &output, format, sha256: &sha, quantized };
    let head = manifest(req, &model);
    std::fs::write(req.out.join("manifest.toml"), &head).map_err(io)?;

    // The reference: the frame through the CPU reference transform, the model on ONNX Runtime.
    let bundle = Bundle::load(&req.out).map_err(|e| refuse(vec![e.to_string()]))?;
    let tensor = input_tensor(&bundle, frame);
    let backend = OrtBackend::new(&bundle, library, 1, 1).map_err(|e| refuse(vec![e.to_string()]))?;
    let mut detector = Detector::new(&bundle, Box::new(backend)).map_err(|e| refuse(vec![e.to_string()]))?;
    let out = detector.infer_raw(&tensor).map_err(|e| refuse(vec![e.to_string()]))?.to_vec();
    if out.iter().any(|v| !v.is_finite()) {
        return Err(refuse(vec!["the model's output on the reference frame holds NaN or infinity".to_owned()]));
    }
    let dets = detector.decode(&out);
    let json: Vec<serde_json::Value> = dets
        .iter()
        .map(|d| {
            serde_json::json!({
                "label": req.labels[d.class_id], "class_id": d.class_id, "score": d.score,
                "box": [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
            })
        })
        .collect();
    std::fs::write(req.out.join("reference/input.f32"), f32_bytes(&tensor)).map_err(io)?;
    std::fs::write(req.out.join("reference/output.f32"), f32_bytes(&out)).map_err(io)?;
    let pretty = serde_json::to_vec_pretty(&json).expect("detections serialise");
    std::fs::write(req.out.join("reference/detections.json"), pretty).map_err(io)?;
    let mut reference = format!(
        "[reference]\ninput = \"reference/input.f32\"\noutput = \"reference/output.f32\"\n\
         detections = \"reference/detections.json\"   # in model-input pixels\n\
         tolerance = {:?}   # max |output − reference| another backend may show\n",
        req.tolerance
    );
    let mut warnings = Vec::new();
    if dets.is_empty() {
        warnings.push(
            "the reference frame gives 0 detections: the bundle's reference then checks the model's raw output but \
             no box, label or score, so a device cannot tell a wrong placement or colour order from a right one; \
             pack with a frame where the model finds objects"
                .to_owned(),
        );
    }
    match &req.expect {
        None => {
            warnings.push(
                "packed without --expect: nothing compared these conventions with the exporter's own pipeline; give \
                 its detections on the same picture (models/README.md) so that a wrong colour order, placement, \
                 scale or rounding is caught here and on every device"
                    .to_owned(),
            );
        }
        Some(path) => {
            let expected = crate::expect::read_expected(path, &req.labels).map_err(|e| refuse(vec![e]))?;
            if expected.is_empty() {
                warnings.push(format!(
                    "{} holds no detection: agreeing on nothing proves nothing about the conventions; use a picture \
                     where the exporter finds objects",
                    path.display()
                ));
            }
            let rgb: Vec<u8> = frame.rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            std::fs::write(req.out.join("reference/picture.rgb"), rgb).map_err(io)?;
            std::fs::copy(path, req.out.join("reference/expected.json")).map_err(io)?;
            let _ = writeln!(
                reference,
                "picture = \"reference/picture.rgb\"   # the reference frame as decoded, packed RGB\n\
                 picture_size = [{}, {}]\nexpected = \"reference/expected.json\"   # the exporter's detections, in \
                 the picture's pixels",
                frame.width, frame.height
            );
        }
    }
    std::fs::write(req.out.join("manifest.toml"), format!("{head}{reference}")).map_err(io)?;

    // Loaded and checked as a device will.
    let bundle = Bundle::load(&req.out).map_err(|e| refuse(vec![e.to_string()]))?;
    let backend = OrtBackend::new(&bundle, library, 1, 1).map_err(|e| refuse(vec![e.to_string()]))?;
    let mut detector = Detector::new(&bundle, Box::new(backend)).map_err(|e| refuse(vec![e.to_string()]))?;
    let check = crate::check::check_model(&bundle, &mut detector).map_err(|e| refuse(vec![e.to_string()]))?;
    if !check.passed() {
        return Err(refuse(check.problems));
    }
    // The exporter's detections, from the files a device reads, through the service's path.
    let agreement = crate::expect::check_bundle(&bundle, &mut detector).map_err(|e| refuse(vec![e]))?;
    Ok(Packed { dir: req.out.clone(), format, input: size, detections: dets.len(), quantized, agreement, warnings })
}
