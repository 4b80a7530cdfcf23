//! `vigil model pack` on real models: the shipped INT8 export packed from a frame of the held-out
//! clip gives a bundle that loads, passes `vigil model-check` and detects what the shipped bundle
//! detects; exports vigil cannot serve are refused with the reason and leave nothing behind.

mod support;

use std::path::{Path, PathBuf};

use support::*;
use vigil_infer::{Bundle, OutputFormat};

fn shipped_model() -> PathBuf {
    bundle_dir().join("model.int8.onnx")
}

fn pack(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let model = shipped_model();
    let clip = eval_clip();
    let mut args = vec![
        "model",
        "pack",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--name",
        "shapes-repacked",
        "--clip",
        clip.to_str().unwrap(),
        "--frame",
        "40",
    ];
    args.extend_from_slice(extra);
    vigil_cmd(&args, &[])
}

/// The shipped model's own conventions (RGB, centred, black borders, 0-1 values).
const SHAPES: &[&str] = &["--labels", "circle,square,triangle", "--pad-value", "0", "--budget-ms", "100"];

#[test]
fn the_shipped_export_packs_into_a_bundle_that_passes_model_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let (code, stdout, stderr) = pack(&out, SHAPES);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("INT8 QDQ model, 320x320 input, vigil-grid-v1 output"), "{stdout}");
    let bundle = Bundle::load(&out).expect("the packed bundle loads");
    let m = &bundle.manifest;
    assert_eq!(m.output.format.known(), Some(OutputFormat::VigilGridV1), "recognised from the shape");
    assert_eq!((m.input.name.as_str(), m.output.name.as_str()), ("images", "grid"), "names read from the graph");
    assert_eq!(m.model.sha256, Bundle::load(&bundle_dir()).unwrap().manifest.model.sha256);
    let detections: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("reference/detections.json")).unwrap()).unwrap();
    assert!(!detections.is_empty(), "a frame of the clip holds objects");
    let (code, stdout, stderr) = vigil_cmd(&["model-check", "--bundle", out.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "model-check on the packed bundle: {stdout}{stderr}");
}

#[test]
fn labels_that_do_not_fit_the_output_are_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let (code, _, stderr) = pack(&out, &["--labels", "person,car"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no output fits a layout vigil decodes with 2 labels"), "{stderr}");
    assert!(stderr.contains("[1, 5 + 2 labels, G, G]"), "says what the shape needs: {stderr}");
    assert!(!out.exists(), "a refused model leaves no bundle behind");
    // The wrong format named explicitly: refused with that format's reason.
    let (code, _, stderr) = pack(&out, &["--labels", "circle,square,triangle", "--format", "yolov8"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("as yolov8") && stderr.contains("4 + 3 labels"), "{stderr}");
}

#[test]
fn a_bundle_directory_in_use_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("manifest.toml"), "mine").unwrap();
    let (code, _, stderr) = pack(&out, SHAPES);
    assert_ne!(code, 0);
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("manifest.toml")).unwrap(), "mine");
}

#[test]
fn the_exporters_conventions_are_written_to_the_manifest() {
    // The same model packed with YOLOX's conventions (BGR, top-left, 114): the manifest says so,
    // the reference is computed with them, and the bundle still checks out on ONNX Runtime.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let (code, stdout, stderr) = pack(
        &out,
        &["--labels", "circle,square,triangle", "--color", "bgr", "--letterbox", "top-left", "--pad-value", "114"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let text = std::fs::read_to_string(out.join("manifest.toml")).unwrap();
    for line in ["color = \"BGR\"", "letterbox = \"top-left\"", "pad_value = 114", "dtype = \"f32\""] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    let bundle = Bundle::load(&out).unwrap();
    let input = bundle.read_f32(&bundle.manifest.reference.as_ref().unwrap().input).unwrap();
    // The clip is 4:3 (or wider): the image fills the top rows; the last row is pad (114/255)
    // in every plane.
    let (w, h) = bundle.input_size();
    let plane = (w * h) as usize;
    let last_row = &input[plane - w as usize..plane];
    assert!(last_row.iter().all(|&v| (v - 114.0 / 255.0).abs() < 1e-6), "{:?}", &last_row[..4]);
}

#[test]
fn a_half_precision_export_runs_on_onnx_runtime_and_finds_what_fp32_finds() {
    // The shipped FP32 model with f16 input and output (tests/fixtures, made by
    // models/recipe/half_io.py), and the FP32 model itself, packed from the same frame.
    let dir = tempfile::tempdir().unwrap();
    let half = repo_root().join("tests/fixtures/shapes-fp32-half-io.onnx");
    let clip = eval_clip();
    let pack_model = |model: &Path, out: &Path| {
        let mut args = vec!["model", "pack", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend(["--name", "shapes", "--clip", clip.to_str().unwrap(), "--frame", "40"]);
        args.extend_from_slice(SHAPES);
        vigil_cmd(&args, &[])
    };
    let (code, stdout, stderr) = pack_model(&half, &dir.path().join("half"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("not quantized"), "an FP32 model is reported as such: {stdout}");
    let text = std::fs::read_to_string(dir.path().join("half/manifest.toml")).unwrap();
    assert!(text.contains("dtype = \"f16\""), "{text}");
    let (code, stdout, stderr) = pack_model(&bundle_dir().join("model.fp32.onnx"), &dir.path().join("fp32"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let dets = |b: &str| -> Vec<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(dir.path().join(b).join("reference/detections.json")).unwrap()).unwrap()
    };
    let (half, full) = (dets("half"), dets("fp32"));
    assert!(!full.is_empty());
    assert_eq!(half.len(), full.len(), "{half:?} vs {full:?}");
    for (h, f) in half.iter().zip(&full) {
        assert_eq!(h["label"], f["label"]);
        for k in 0..4 {
            let (a, b) = (h["box"][k].as_f64().unwrap(), f["box"][k].as_f64().unwrap());
            assert!((a - b).abs() < 1.0, "box {k}: {a} vs {b}");
        }
    }
}

/// `vigil model compare`'s report, parsed: (precision, recall).
fn precision_recall(report: &str) -> (f32, f32) {
    let num = |key: &str| -> f32 {
        let at = report.find(key).unwrap_or_else(|| panic!("no `{key}` in {report}")) + key.len();
        report[at..].split(|c: char| c == ',' || c.is_whitespace()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
    };
    (num("precision "), num("recall "))
}

#[test]
fn an_fp32_export_is_quantized_on_real_frames_and_the_accuracy_change_is_reported() {
    // The engineer's path: pack the FP32 export, write calibration tensors from a clip with the
    // bundle's own pre-processing, quantize (models/tools/quantize.py), pack the INT8 model,
    // and compare it with the FP32 one on the held-back frames.
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
    let clip = eval_clip();
    let clip = clip.to_str().unwrap();
    let fp32 = bundle_dir().join("model.fp32.onnx");
    let labels = ["--labels", "circle,square,triangle", "--pad-value", "0", "--clip", clip, "--frame", "40"];
    let run = |args: &[&str]| {
        let (code, stdout, stderr) = vigil_cmd(args, &[]);
        assert_eq!(code, 0, "vigil {args:?}: {stdout}{stderr}");
        stdout
    };
    run(&[&["model", "pack", fp32.to_str().unwrap(), "--out", &d("fp32"), "--name", "shapes"][..], &labels].concat());
    let out =
        run(&["model", "calibration", "--bundle", &d("fp32"), "--clip", clip, "--every", "3", "--out", &d("calib")]);
    assert!(out.contains("60 tensors [1, 3, 320, 320]"), "{out}");
    let python = repo_root().join(".venv/bin/python");
    let quantize = std::process::Command::new(python)
        .arg(repo_root().join("models/tools/quantize.py"))
        .args(["--fp32", &d("fp32/model.onnx"), "--tensors", &d("calib"), "--out", &d("model.int8.onnx")])
        .args(["--holdout", "5", "--exclude", "conv7"])
        .output()
        .expect("python runs (make setup)");
    let text = String::from_utf8_lossy(&quantize.stdout).into_owned() + &String::from_utf8_lossy(&quantize.stderr);
    assert!(quantize.status.success() && text.contains("calibrated on 48 tensors, 12 held back"), "{text}");
    let out = run(&[
        &["model", "pack", &d("model.int8.onnx"), "--out", &d("int8"), "--name", "shapes", "--tolerance", "2"][..],
        &labels,
    ]
    .concat());
    assert!(out.contains("INT8 QDQ model"), "{out}");
    let report =
        run(&["model", "compare", "--reference", &d("fp32"), "--candidate", &d("int8"), "--tensors", &d("calib")]);
    let (precision, recall) = precision_recall(&report);
    assert!(report.starts_with("12 tensors") && precision >= 0.95 && recall >= 0.95, "{report}");

    // A candidate that quietly detects far less (its score threshold raised) is reported so.
    let manifest = dir.path().join("int8/manifest.toml");
    let text =
        std::fs::read_to_string(&manifest).unwrap().replace("score_threshold = 0.25", "score_threshold = 0.9999");
    std::fs::write(&manifest, text).unwrap();
    let report =
        run(&["model", "compare", "--reference", &d("fp32"), "--candidate", &d("int8"), "--tensors", &d("calib")]);
    let (_, recall) = precision_recall(&report);
    assert!(recall < 0.5, "the drop shows: {report}");
}

/// The exporter's conventions for the shipped model: RGB, centred, black borders, 0-1 values,
/// score threshold 0.5.
const EXPORTER: &[&str] = &["--pad", "0", "--threshold", "0.5"];

fn pack_picture(out: &Path, picture: &Path, extra: &[&str]) -> (i32, String, String) {
    let model = shipped_model();
    let mut args = vec!["model", "pack", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(&["--name", "shapes-repacked", "--image", picture.to_str().unwrap()]);
    args.extend_from_slice(&["--labels", "circle,square,triangle", "--score-threshold", "0.5"]);
    if !extra.contains(&"--pad-value") {
        args.extend_from_slice(&["--pad-value", "0"]);
    }
    args.extend_from_slice(extra);
    vigil_cmd(&args, &[])
}

/// `vigil model run` gives the exporter's boxes on a picture whose border is odd, in the
/// picture's pixels; `--draw` writes them on it.
#[test]
fn model_run_gives_the_exporters_detections_in_the_pictures_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let picture = exporter_picture(dir.path());
    let truth = dir.path().join("truth.json");
    let n = exporter_detections(&shipped_model(), &picture, &truth, EXPORTER);
    assert!(n >= 3, "the clip's frame holds objects: {n}");
    let drawn = dir.path().join("drawn.jpg");
    let bundle = bundle_dir();
    let args = ["model", "run", bundle.to_str().unwrap(), "--image", picture.to_str().unwrap(), "--draw"];
    let (code, stdout, stderr) = vigil_cmd(&[&args[..], &[drawn.to_str().unwrap()]].concat(), &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let got: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("JSON on stdout");
    let want: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
    assert_eq!(got.len(), want.len(), "vigil {stdout}\nexporter {want:?}");
    let bbox = |d: &serde_json::Value| -> [f32; 4] { serde_json::from_value(d["box"].clone()).unwrap() };
    for w in &want {
        let best = got
            .iter()
            .filter(|g| g["label"] == w["label"])
            .map(|g| {
                let (a, b) = (bbox(g), bbox(w));
                a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
            })
            .fold(f32::INFINITY, f32::min);
        assert!(best <= 0.5, "{w}: nearest vigil box of its class is {best} px off\n{stdout}");
    }
    let jpeg = std::fs::read(&drawn).unwrap();
    assert!(jpeg.starts_with(&[0xFF, 0xD8]) && jpeg.len() > 4096, "a JPEG picture: {} bytes", jpeg.len());
    assert!(stderr.contains(&format!("{} detection(s) drawn", want.len())), "{stderr}");
}

/// `pack --expect`: with the exporter's conventions (the shipped model's, and YOLOX's) the bundle
/// is packed and carries the truth (a device checks it again); with a wrong colour order, placement or scale it is refused, the
/// right value named, and nothing is left behind.
#[test]
fn pack_expect_refuses_wrong_conventions_and_names_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let picture = exporter_picture(dir.path());
    let (truth, tensor) = (dir.path().join("truth.json"), dir.path().join("exporter.f32"));
    let args = [EXPORTER, &["--tensor", tensor.to_str().unwrap()]].concat();
    assert!(exporter_detections(&shipped_model(), &picture, &truth, &args) >= 3);
    let expect = ["--expect", truth.to_str().unwrap()];

    let out = dir.path().join("right");
    let (code, stdout, stderr) = pack_picture(&out, &picture, &expect);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("agrees with the exporter's detections") && stdout.contains("0 missing, 0 extra"),
        "{stdout}"
    );
    assert!(!stderr.contains("without --expect"), "{stderr}");
    let bundle = Bundle::load(&out).unwrap();
    let e = bundle.expected().unwrap().expect("the bundle carries the picture and the truth");
    assert_eq!((e.size, e.rgb.len()), ((700, 400), 700 * 400 * 3));
    assert!(e.detections.len() >= 3);
    let (code, stdout, stderr) = vigil_cmd(&["model-check", "--bundle", out.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // vigil's transform resizes as cv2.resize does: the tensors are the same, value for value.
    let ours = bundle.read_f32(&bundle.manifest.reference.as_ref().unwrap().input).unwrap();
    let theirs = vigil_infer::bundle::f32_values(&std::fs::read(&tensor).unwrap()).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} of {} tensor values differ from OpenCV's", ours.len());

    // YOLOX's conventions on both sides (BGR, top-left, pad 114, floor): they agree too, and the
    // tensors are the same.
    let (yolox, yolox_tensor) = (dir.path().join("yolox.json"), dir.path().join("yolox.f32"));
    let conventions = ["--color", "bgr", "--letterbox", "top-left", "--pad", "114"];
    let args = [
        &conventions[..],
        &["--rounding", "floor", "--threshold", "0.5", "--tensor"],
        &[yolox_tensor.to_str().unwrap()],
    ]
    .concat();
    assert!(exporter_detections(&shipped_model(), &picture, &yolox, &args) >= 3);
    let out = dir.path().join("yolox");
    let flags = ["--color", "bgr", "--letterbox", "top-left", "--size-rounding", "floor", "--pad-value", "114"];
    let (code, stdout, stderr) =
        pack_picture(&out, &picture, &[&flags[..], &["--expect", yolox.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("0 missing, 0 extra"), "{stdout}");
    let bundle = Bundle::load(&out).unwrap();
    let ours = bundle.read_f32(&bundle.manifest.reference.as_ref().unwrap().input).unwrap();
    let theirs = vigil_infer::bundle::f32_values(&std::fs::read(&yolox_tensor).unwrap()).unwrap();
    assert!(ours == theirs, "YOLOX's conventions: the tensors differ");

    let wrong: [(&[&str], &str); 3] = [
        (&["--color", "bgr"], "input.color = \"RGB\" (pack --color rgb)"),
        (&["--letterbox", "top-left"], "input.letterbox = \"center\" (pack --letterbox center)"),
        (&["--scale", "1"], "input.scale = 1/255 (pack --scale 0.003921569)"),
    ];
    for (n, (flags, named)) in wrong.iter().enumerate() {
        let out = dir.path().join(format!("wrong-{n}"));
        let (code, stdout, stderr) = pack_picture(&out, &picture, &[&expect[..], flags].concat());
        assert_ne!(code, 0, "{flags:?} packed: {stdout}");
        assert!(stderr.contains("differ from the exporter's"), "{flags:?}: {stderr}");
        assert!(stderr.contains(&format!("With {named} they agree")), "{flags:?} should name {named}: {stderr}");
        assert!(!out.exists(), "{flags:?}: a refused bundle is not left behind");
    }
}

/// Without the exporter's truth, and on a frame without objects, pack says what that leaves
/// unchecked.
#[test]
fn pack_warns_when_its_reference_can_prove_little() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.png");
    let desc = format!(
        "videotestsrc pattern=solid-color foreground-color=0xff808080 num-buffers=1 ! video/x-raw,width=640,height=360 \
         ! pngenc snapshot=true ! filesink location={}",
        blank.display()
    );
    let o = std::process::Command::new("gst-launch-1.0").args(desc.split(' ')).output().expect("gst-launch-1.0");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("bundle");
    let (code, stdout, stderr) = pack_picture(&out, &blank, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("0 detection(s) on the reference frame"), "{stdout}");
    assert!(stderr.contains("warning: the reference frame gives 0 detections"), "{stderr}");
    assert!(stderr.contains("warning: packed without --expect"), "{stderr}");
}
