//! `vigil model pack`: an ONNX export and its labels → a checked bundle (models/README.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use vigil_infer::bundle::{ColorOrder, LetterboxMode, SizeRounding};
use vigil_infer::pack::{Frame, PackRequest};
use vigil_infer::{BundleBackend, OutputFormat};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Packs an ONNX export into a bundle: reads its inputs and outputs, recognises the output
    /// layout, writes the manifest, SHA-256 and reference tensors from a real frame, and checks
    /// the result as `vigil model-check` does.
    Pack(Box<PackArgs>),
    /// Writes calibration tensors for quantising a bundle's model: frames of clips, pre-processed
    /// by the bundle's conventions, as raw f32 NCHW files (models/tools/quantize.py reads them).
    Calibration(CalibrationArgs),
    /// Runs a bundle on a picture or a clip's frame through the service's own pre-processing and
    /// prints the detections in the picture's pixels as JSON (the `--expect` format), optionally
    /// drawing them.
    Run(RunArgs),
    /// A candidate bundle against a reference bundle (an INT8 model against its FP32 original) on
    /// the same tensors: the candidate's detections' precision and recall against the reference's.
    Compare(CompareArgs),
}

#[derive(Args)]
pub struct CalibrationArgs {
    /// The bundle whose conventions pre-process the frames (the FP32 model's bundle).
    #[arg(long)]
    bundle: PathBuf,
    /// A clip or picture (repeat); recordings of the device's own cameras calibrate best.
    #[arg(long = "clip", required = true)]
    clips: Vec<PathBuf>,
    /// Take every Nth frame.
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// At most this many tensors in all.
    #[arg(long, default_value_t = 500)]
    max: usize,
    /// The directory to write `NNNNN.f32` files into.
    #[arg(long, short)]
    out: PathBuf,
}

/// One frame: a picture, or a clip's frame.
#[derive(Args)]
struct FrameArgs {
    /// A picture (JPEG, PNG) …
    #[arg(long, conflicts_with = "clip", required_unless_present = "clip")]
    image: Option<PathBuf>,
    /// … or a clip, with --frame.
    #[arg(long)]
    clip: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    frame: u64,
}

impl FrameArgs {
    /// The frame, decoded.
    fn decode(&self) -> anyhow::Result<vigil_capture::still::Still> {
        let (source, index) = match (&self.image, &self.clip) {
            (Some(image), _) => (image, 0),
            (None, Some(clip)) => (clip, self.frame),
            (None, None) => anyhow::bail!("give the frame: --image PICTURE or --clip CLIP [--frame N]"),
        };
        vigil_capture::still::decode_frame(source, index).map_err(anyhow::Error::msg)
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// The bundle directory.
    bundle: PathBuf,
    #[command(flatten)]
    frame: FrameArgs,
    /// Also write the picture with the boxes drawn (JPEG).
    #[arg(long)]
    draw: Option<PathBuf>,
    #[arg(long)]
    ort_library: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompareArgs {
    #[arg(long)]
    reference: PathBuf,
    #[arg(long)]
    candidate: PathBuf,
    /// Tensors written by `vigil model calibration`.
    #[arg(long)]
    tensors: PathBuf,
    /// Compare on every Nth tensor only (those quantize.py held back from calibration); 1: all.
    #[arg(long, default_value_t = 5)]
    holdout: usize,
    #[arg(long)]
    ort_library: Option<PathBuf>,
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
enum Rounding {
    Round,
    Floor,
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
    /// The reference frame.
    #[command(flatten)]
    frame: FrameArgs,
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
    /// How the scaled picture's size is made whole (Ultralytics: round, `int(round(w * r))`;
    /// YOLOX: floor, `int(w * r)`).
    #[arg(long, value_enum, default_value_t = Rounding::Round)]
    size_rounding: Rounding,
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
    /// The detections the exporter's own pipeline gives on the reference frame, in its pixels
    /// (a JSON array of {"label", "score", "box": [x1, y1, x2, y2]}; models/README.md). The bundle
    /// is refused unless vigil's agree; when they do not, pack names the conventions that would.
    #[arg(long)]
    expect: Option<PathBuf>,
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
    match command {
        ModelCommand::Pack(a) => pack(a),
        ModelCommand::Calibration(a) => calibration(a),
        ModelCommand::Compare(a) => compare(a),
        ModelCommand::Run(a) => run_bundle(a),
    }
}

fn run_bundle(a: &RunArgs) -> anyhow::Result<()> {
    let still = a.frame.decode()?;
    let bundle = vigil_infer::Bundle::load(&a.bundle)?;
    let library = vigil_infer::find_ort_library(a.ort_library.as_deref())?;
    let backend = vigil_infer::OrtBackend::new(&bundle, &library, 1, 1)?;
    let mut detector = vigil_infer::Detector::new(&bundle, Box::new(backend))?;
    let source = (still.width, still.height);
    let image = vigil_infer::Image { data: &still.rgba, stride: still.width as usize * 4, bytes_per_pixel: 4 };
    let dets = detector.detect(image, source)?;
    let json: Vec<serde_json::Value> = dets
        .iter()
        .map(|d| {
            serde_json::json!({
                "label": detector.labels()[d.class_id], "class_id": d.class_id, "score": d.score,
                "box": [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
            })
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(out) = &a.draw {
        let letterbox = vigil_core::geometry::Letterbox::fit(
            source,
            source,
            vigil_core::geometry::Anchor::Center,
            vigil_core::geometry::Rounding::Round,
        );
        let picture = vigil_core::picture::SourceImage { pixels: image, width: source.0, height: source.1, letterbox };
        let boxes: Vec<_> = dets.iter().map(|d| d.bbox).collect();
        let jpeg = picture.crop_with_boxes(&boxes).encode_jpeg(90).context("cannot encode the picture")?;
        std::fs::write(out, jpeg).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("{} detection(s) drawn in {}", dets.len(), out.display());
    }
    Ok(())
}

fn calibration(a: &CalibrationArgs) -> anyhow::Result<()> {
    let bundle = vigil_infer::Bundle::load(&a.bundle)?;
    if a.out.exists() && std::fs::read_dir(&a.out)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty; write the tensors into a new directory", a.out.display());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let every = a.every.max(1);
    let mut written = 0usize;
    for clip in &a.clips {
        vigil_capture::still::each_frame(clip, |i, still| {
            if i % every != 0 {
                return Ok(true);
            }
            let frame = Frame { width: still.width, height: still.height, rgba: &still.rgba };
            let tensor = vigil_infer::pack::input_tensor(&bundle, &frame);
            let path = a.out.join(format!("{written:05}.f32"));
            std::fs::write(&path, vigil_infer::bundle::f32_bytes(&tensor))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            written += 1;
            Ok(written < a.max)
        })
        .map_err(anyhow::Error::msg)?;
        if written >= a.max {
            break;
        }
    }
    let (w, h) = bundle.input_size();
    println!("{written} tensors [1, 3, {h}, {w}] f32 in {}", a.out.display());
    Ok(())
}

fn compare(a: &CompareArgs) -> anyhow::Result<()> {
    let library = vigil_infer::find_ort_library(a.ort_library.as_deref())?;
    let detector = |dir: &PathBuf| -> anyhow::Result<vigil_infer::Detector> {
        let bundle = vigil_infer::Bundle::load(dir)?;
        let backend = vigil_infer::OrtBackend::new(&bundle, &library, 1, 1)?;
        Ok(vigil_infer::Detector::new(&bundle, Box::new(backend))?)
    };
    let (mut reference, mut candidate) = (detector(&a.reference)?, detector(&a.candidate)?);
    if reference.input_size() != candidate.input_size() || reference.labels() != candidate.labels() {
        anyhow::bail!("the two bundles differ in input size or labels; compare versions of one model");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.tensors)
        .with_context(|| format!("cannot read {}", a.tensors.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "f32"))
        .collect();
    files.sort();
    let holdout = a.holdout.max(1);
    let chosen: Vec<PathBuf> =
        files.into_iter().enumerate().filter(|(i, _)| i % holdout == holdout - 1).map(|(_, p)| p).collect();
    if chosen.is_empty() {
        anyhow::bail!("no tensors to compare on in {}", a.tensors.display());
    }
    let tensors = chosen.iter().map(|p| {
        // An unreadable file feeds no values, which the model refuses, naming the shape.
        std::fs::read(p).ok().and_then(|b| vigil_infer::bundle::f32_values(&b)).unwrap_or_default()
    });
    let c = vigil_infer::compare::compare(&mut reference, &mut candidate, tensors)?;
    println!(
        "{} tensors: reference {} detections, candidate {}, matched {} (IoU >= {}, same class); \
         precision {:.3}, recall {:.3}, mean score change {:.4}",
        c.tensors,
        c.reference_detections,
        c.candidate_detections,
        c.matched,
        vigil_infer::compare::MATCH_IOU,
        c.precision(),
        c.recall(),
        c.mean_score_change
    );
    Ok(())
}

fn pack(a: &PackArgs) -> anyhow::Result<()> {
    let format = a.format.as_deref().map(str::parse::<OutputFormat>).transpose().map_err(anyhow::Error::msg)?;
    let still = a.frame.decode()?;
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
        size_rounding: match a.size_rounding {
            Rounding::Round => SizeRounding::Round,
            Rounding::Floor => SizeRounding::Floor,
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
        expect: a.expect.clone(),
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
    if let Some(agreement) = &packed.agreement {
        println!("agrees with the exporter's detections: {}", agreement.summary());
    }
    for w in &packed.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}
