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
