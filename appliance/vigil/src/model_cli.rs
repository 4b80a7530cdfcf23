//! `vigil model pack`: an ONNX export and its labels → a checked bundle (models/README.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use vigil_infer::bundle::{ColorOrder, LetterboxMode};
use vigil_infer::pack::{Frame, PackRequest};
use vigil_infer::{BundleBackend, OutputFormat};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Packs an ONNX export into a bundle: reads its inputs and outputs, recognises the output
    /// layout, writes the manifest, SHA-256 and reference tensors from a real frame, and checks
    /// the result as `vigil model-check` does.
    Pack(PackArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Rgb,
    Bgr,
}

#[derive(Clone, Copy, ValueEnum)]
enum Anchor {
    Center,
    TopLeft,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Onnxruntime,
    Tensorrt,
}

#[derive(Args)]
pub struct PackArgs {
    /// The ONNX model (an INT8 QDQ model for TensorRT INT8; see models/README.md).
    onnx: PathBuf,
    /// The bundle directory to create.
    #[arg(long, short)]
    out: PathBuf,
    /// Class names in output order: a file with one per line, or a comma-separated list.
    #[arg(long)]
    labels: String,
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "1.0.0")]
    version: String,
    #[arg(long, default_value = "")]
    description: String,
    /// The reference frame: a picture (JPEG, PNG) …
    #[arg(long, conflicts_with = "clip", required_unless_present = "clip")]
    image: Option<PathBuf>,
    /// … or a clip, with --frame.
    #[arg(long)]
    clip: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    frame: u64,
    /// yolov5, yolov8 (also YOLO11), yolox or vigil-grid-v1; recognised from the output shape when
    /// left out.
    #[arg(long)]
    format: Option<String>,
    /// The output to decode, when the model has several.
    #[arg(long)]
    output: Option<String>,
    /// The channel order the model was trained on (Ultralytics: rgb; YOLOX: bgr).
    #[arg(long, value_enum, default_value_t = Color::Rgb)]
    color: Color,
    /// Where the picture sits in the input (Ultralytics: center; YOLOX: top-left).
    #[arg(long, value_enum, default_value_t = Anchor::Center)]
    letterbox: Anchor,
    /// The border value (Ultralytics and YOLOX: 114).
    #[arg(long, default_value_t = 114)]
    pad_value: u8,
    /// Multiplies each 0-255 value before mean/std (Ultralytics: 1/255; YOLOX: 1).
    #[arg(long, default_value_t = 1.0 / 255.0)]
    scale: f32,
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.0, 0.0, 0.0])]
    mean: Vec<f32>,
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [1.0, 1.0, 1.0])]
    std: Vec<f32>,
    #[arg(long, default_value_t = 0.25)]
    score_threshold: f32,
    #[arg(long, default_value_t = 0.45)]
    nms_iou: f32,
    #[arg(long, default_value_t = 100)]
    max_detections: usize,
    /// Capture → detections budget for this model, in milliseconds.
    #[arg(long, default_value_t = 100)]
    budget_ms: u64,
    /// Largest |output − reference| another backend may show (TensorRT on a Jetson): measure it
    /// there with `vigil model-check --backend tensorrt` and raise this if needed (INT8 engines
    /// differ from ONNX Runtime by more than FP32 ones).
    #[arg(long, default_value_t = 0.05)]
    tolerance: f32,
    /// Backends the bundle declares (repeat); default both.
    #[arg(long = "backend", value_enum)]
    backends: Vec<Backend>,
    /// libonnxruntime.so (default: as `inference.ort_library` finds it).
    #[arg(long)]
    ort_library: Option<PathBuf>,
}

fn labels(spec: &str) -> anyhow::Result<Vec<String>> {
    let path = std::path::Path::new(spec);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        spec.replace(',', "\n")
    };
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

pub fn run(command: &ModelCommand) -> anyhow::Result<()> {
    let ModelCommand::Pack(a) = command;
    let format = a.format.as_deref().map(str::parse::<OutputFormat>).transpose().map_err(anyhow::Error::msg)?;
    let (source, index) = match (&a.image, &a.clip) {
        (Some(image), _) => (image, 0),
        (None, Some(clip)) => (clip, a.frame),
        (None, None) => anyhow::bail!("give the reference frame: --image PICTURE or --clip CLIP [--frame N]"),
    };
    let still = vigil_capture::still::decode_frame(source, index).map_err(anyhow::Error::msg)?;
    let library = vigil_infer::find_ort_library(a.ort_library.as_deref())?;
    let backends =
        if a.backends.is_empty() { vec![Backend::Onnxruntime, Backend::Tensorrt] } else { a.backends.clone() };
    let triple = |v: &[f32]| [v[0], v[1], v[2]];
    let req = PackRequest {
        onnx: a.onnx.clone(),
        out: a.out.clone(),
        name: a.name.clone(),
        version: a.version.clone(),
        description: a.description.clone(),
        labels: labels(&a.labels)?,
        format,
        output: a.output.clone(),
        color: match a.color {
            Color::Rgb => ColorOrder::Rgb,
            Color::Bgr => ColorOrder::Bgr,
        },
        letterbox: match a.letterbox {
            Anchor::Center => LetterboxMode::Center,
            Anchor::TopLeft => LetterboxMode::TopLeft,
        },
        pad_value: a.pad_value,
        scale: a.scale,
        mean: triple(&a.mean),
        std: triple(&a.std),
        score_threshold: a.score_threshold,
        nms_iou: a.nms_iou,
        max_detections: a.max_detections,
        budget_ms: a.budget_ms,
        tolerance: a.tolerance,
        backends: backends
            .iter()
            .map(|b| match b {
                Backend::Onnxruntime => BundleBackend::Onnxruntime,
                Backend::Tensorrt => BundleBackend::Tensorrt,
            })
            .collect(),
    };
    let frame = Frame { width: still.width, height: still.height, rgba: &still.rgba };
    let packed = vigil_infer::pack::pack(&req, &frame, &library)?;
    println!(
        "{}: {} model, {}x{} input, {} output; {} detection(s) on the reference frame; checked on ONNX Runtime",
        packed.dir.display(),
        if packed.quantized {
            "INT8 QDQ"
        } else {
            "not quantized (TensorRT will build FP16; see models/README.md for INT8)"
        },
        packed.input.0,
        packed.input.1,
        a.format.as_deref().unwrap_or(match packed.format {
            OutputFormat::VigilGridV1 => "vigil-grid-v1",
            OutputFormat::YoloV5 => "yolov5",
            OutputFormat::YoloV8 => "yolov8",
            OutputFormat::Yolox => "yolox",
        }),
        packed.detections
    );
    Ok(())
}
