//! The shipped model and its path through vigil: the INT8 model reaches the accuracy bar on the
//! held-out clip through vigil's own capture and inference code, ONNX Runtime reproduces the
//! bundle's reference outputs, and the decoder reproduces the reference detections.

mod support;

use std::time::{Duration, Instant};

use support::*;
use vigil_capture::{self as capture, CameraSpec, FrameImage, FrameSource, Platform, Timeline};
use vigil_core::source::{Pace, SourceUri};
use vigil_infer::check::{self, RefDetection};
use vigil_infer::{find_ort_library, Bundle, Detector, OrtBackend};

fn detector() -> (Bundle, Detector) {
    let bundle = Bundle::load(&bundle_dir()).expect("the shipped bundle loads");
    let lib = find_ort_library(None).expect("ONNX Runtime is installed (make setup)");
    let backend = OrtBackend::new(&bundle, &lib, 1, 1).expect("ORT loads the INT8 model");
    let det = Detector::new(&bundle, Box::new(backend)).expect("the layout matches the bundle");
    (bundle, det)
}

#[test]
fn int8_model_reaches_precision_and_recall_of_0_9_on_the_held_out_clip() {
    capture::init_gstreamer().unwrap();
    let gt = GroundTruth::for_clip(&eval_clip()).expect("the clip's ground truth");
    let (_bundle, mut det) = detector();
    let source = SourceUri::File { path: eval_clip(), looped: false, pace: Pace::Fast };
    let spec = CameraSpec::new(0, "eval", source);
    let mut src = FrameSource::open(&spec, &Platform::detect()).expect("pipeline starts");
    let mut timeline = Timeline::default();
    let mut dets = Vec::new();
    let mut frames = Vec::new();
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        match src.next_frame(&mut timeline) {
            Ok(Some(frame)) => {
                let pts = frame.pts.expect("file frames have timestamps");
                let index = gt.frame_at(pts.as_nanos() as u64).expect("a ground-truth frame for every pts").index;
                assert_eq!(frame.size(), (gt.width, gt.height));
                let found = det.detect(frame.image(), frame.size()).expect("inference");
                for d in found {
                    let label = det.labels()[d.class_id].clone();
                    dets.push((index, label, [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]));
                }
                frames.push(index);
            }
            Ok(None) => {}
            Err(_) if src.at_end() => break,
            Err(e) => panic!("capture failed: {e}"),
        }
    }
    assert_eq!(frames.len(), gt.frames.len(), "every frame of the clip was decoded once");
    let (p, r, matched) = precision_recall(&gt, &dets, &frames);
    println!(
        "INT8 on the held-out clip: precision {p:.3} recall {r:.3} ({matched} matched, {} detections)",
        dets.len()
    );
    assert!(p >= 0.9, "precision {p:.3} < 0.9");
    assert!(r >= 0.9, "recall {r:.3} < 0.9");
}

fn reference_detections(bundle: &Bundle) -> Vec<RefDetection> {
    let dets = check::reference_detections(bundle).expect("the shipped bundle has reference detections");
    assert!(!dets.is_empty(), "the reference frame has objects");
    dets
}

/// Same labels in the same order, scores within `score_tol`, box corners within `px_tol` pixels.
fn assert_same_detections(
    det: &Detector,
    got: &[vigil_infer::Detection],
    want: &[RefDetection],
    score_tol: f32,
    px_tol: f32,
) {
    let problems = check::compare_detections(det.labels(), got, want, score_tol, px_tol);
    assert!(problems.is_empty(), "{problems:#?}\n{got:?}");
}

#[test]
fn onnxruntime_reproduces_the_bundled_int8_reference_output() {
    // The check `vigil model-check` runs: raw output within the manifest's tolerance (meant for
    // other runtimes), and the detections to 0.01 in score and 1 px in position.
    let (bundle, mut det) = detector();
    let report = check::check_model(&bundle, &mut det).expect("the check runs");
    println!("max |ORT - reference| = {} (manifest tolerance {})", report.max_abs_diff, report.tolerance);
    assert_eq!(report.backend, "onnxruntime-cpu");
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.detections, reference_detections(&bundle).len());
}

#[test]
fn the_decoder_reproduces_the_reference_detections() {
    let (bundle, det) = detector();
    let reference = bundle.manifest.reference.clone().unwrap();
    let output = bundle.read_f32(&reference.output).unwrap();
    // Same numbers in, so the Rust decoder must agree with the Python recipe's almost exactly.
    assert_same_detections(&det, &det.decode(&output), &reference_detections(&bundle), 1e-4, 1e-2);
}

/// The first frame a file camera on `path` delivers: the service's capture path.
fn captured(path: &std::path::Path) -> capture::Frame {
    let source = SourceUri::File { path: path.to_owned(), looped: false, pace: Pace::Fast };
    let mut src = FrameSource::open(&CameraSpec::new(0, "picture", source), &Platform::detect()).expect("starts");
    let mut timeline = Timeline::default();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Some(frame) = src.next_frame(&mut timeline).expect("a frame") {
            return frame;
        }
    }
    panic!("no frame from {}", path.display());
}

/// Odd and even borders, both anchors, both colour orders, two input sizes: a camera's frame
/// gives exactly the tensor `vigil model pack` computes the reference from for the same decoded
/// picture, and the same boxes mapped back to the picture.
#[test]
fn the_service_path_letterboxes_exactly_as_the_bundle_reference_does() {
    use vigil_infer::bundle::{ColorOrder, LetterboxMode, SizeRounding};
    use vigil_infer::pack::{self, Frame, PackRequest};
    capture::init_gstreamer().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sizes = [(1280, 720), (800, 450), (640, 272), (450, 800)];
    let pictures: Vec<_> = sizes.iter().map(|&(w, h)| clip_picture(dir.path(), w, h)).collect();
    let lib = find_ort_library(None).unwrap();
    let mut compared = 0;
    for input in [416u32, 640] {
        let onnx = repo_root().join(format!("tests/fixtures/shapes-int8-{input}.onnx"));
        let conventions = [
            (ColorOrder::Rgb, LetterboxMode::Center, SizeRounding::Round),
            (ColorOrder::Bgr, LetterboxMode::TopLeft, SizeRounding::Floor),
            (ColorOrder::Bgr, LetterboxMode::Center, SizeRounding::Floor),
            (ColorOrder::Rgb, LetterboxMode::TopLeft, SizeRounding::Round),
        ];
        for (n, (color, letterbox, size_rounding)) in conventions.into_iter().enumerate() {
            let first = vigil_capture::still::decode_frame(&pictures[0], 0).unwrap();
            let req = PackRequest {
                onnx: onnx.clone(),
                out: dir.path().join(format!("bundle-{input}-{n}")),
                name: "shapes".into(),
                version: "1.0.0".into(),
                description: String::new(),
                labels: ["circle", "square", "triangle"].map(String::from).to_vec(),
                format: None,
                output: None,
                color,
                letterbox,
                size_rounding,
                pad_value: 114,
                scale: 1.0 / 255.0,
                mean: [0.0; 3],
                std: [1.0; 3],
                score_threshold: 0.5,
                nms_iou: 0.45,
                max_detections: 100,
                budget_ms: 1000,
                tolerance: 0.5,
                backends: vec![vigil_infer::BundleBackend::Onnxruntime],
                expect: None,
            };
            let frame = Frame { width: first.width, height: first.height, rgba: &first.rgba };
            let packed = pack::pack(&req, &frame, &lib).expect("packs");
            let bundle = Bundle::load(&packed.dir).unwrap();
            let pre = vigil_infer::Preprocessor::new(&bundle);
            let mut det = Detector::new(&bundle, Box::new(OrtBackend::new(&bundle, &lib, 1, 1).unwrap())).unwrap();
            for (picture, &(sw, sh)) in pictures.iter().zip(&sizes) {
                let case = format!("{sw}x{sh} into {input} {color:?} {letterbox:?} {size_rounding:?}");
                // The reference: the decoded picture through the pack-time transform.
                let still = vigil_capture::still::decode_frame(picture, 0).unwrap();
                let want = pack::input_tensor(&bundle, &Frame { width: sw, height: sh, rgba: &still.rgba });
                // The service: a file camera's frame through the detector's pre-processing.
                let frame = captured(picture);
                assert_eq!(frame.size(), (sw, sh), "{case}: capture keeps the decoded size");
                let mut got = vec![0.0; pre.len()];
                pre.run(frame.image(), frame.size(), &mut got).unwrap();
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst == 0.0, "{case}: the tensors differ by up to {worst}");
                // Boxes: the service's detections against the reference tensor's, mapped back.
                let lb = pre.model_letterbox((sw, sh));
                let reference: Vec<_> = {
                    let out = det.infer_raw(&want).unwrap().to_vec();
                    det.decode(&out).into_iter().map(|d| lb.to_source(&d.bbox)).collect()
                };
                let service: Vec<_> =
                    det.detect(frame.image(), frame.size()).unwrap().into_iter().map(|d| d.bbox).collect();
                assert_eq!(service.len(), reference.len(), "{case}");
                for (s, r) in service.iter().zip(&reference) {
                    let off = [s.x1 - r.x1, s.y1 - r.y1, s.x2 - r.x2, s.y2 - r.y2].map(f32::abs);
                    assert!(off.iter().all(|&d| d <= 0.5), "{case}: {s:?} against {r:?}");
                }
                compared += reference.len();
            }
        }
    }
    println!("{compared} boxes compared, each within 0.5 source pixels");
    assert!(compared >= 20, "only {compared} boxes compared: the pictures should hold the clip's objects");
}

#[test]
fn model_check_passes_the_shipped_bundle_and_names_a_mismatch() {
    // The demo configuration names the shipped bundle (without --config, vigil reads
    // /etc/vigil/vigil.toml).
    let demo = repo_root().join("appliance/config/demo.toml");
    let demo = demo.to_str().unwrap();
    let (code, out, err) = vigil_cmd(&["model-check", "--config", demo, "--backend", "onnxruntime"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("shapes 1.0.0 on onnxruntime-cpu") && out.trim_end().ends_with("ok"), "{out}");

    // A reference that disagrees: the triangle's score.
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let dets = dir.path().join("reference/detections.json");
    let text = std::fs::read_to_string(&dets).unwrap().replacen("0.99958", "0.5", 1);
    std::fs::write(&dets, text).unwrap();
    let bundle = dir.path().to_str().unwrap();
    let (code, out, _) = vigil_cmd(&["model-check", "--backend", "onnxruntime", "--bundle", bundle], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MISMATCH detection 0 (triangle): score"), "{out}");

    // TensorRT asked for by name where it cannot run: a clear refusal, not a silent CPU run.
    let (code, _, err) = vigil_cmd(&["model-check", "--config", demo, "--backend", "tensorrt"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--backend tensorrt was asked for but is not available here"), "{err}");
}

#[test]
fn a_tampered_model_file_is_refused_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let onnx = dir.path().join("model.int8.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("SHA-256") && err.contains("re-install"), "{err}");
}

#[test]
fn a_manifest_that_disagrees_with_itself_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let manifest = dir.path().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace("layout = \"NCHW\"", "layout = \"NHWC\"").replace("schema = 1", "schema = 7");
    std::fs::write(&manifest, text).unwrap();
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("schema 7") && err.contains("input.layout `NHWC`"), "{err}");
    std::fs::write(&manifest, "schema = 1\n[model]\nname = 3\n").unwrap();
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("manifest.toml is invalid"), "{err}");
}

/// The shipped model with a dynamic batch dimension (tests/fixtures, made by
/// models/recipe/dynamic_batch.py): batches of frames from different cameras give each frame the
/// same answer as running it alone.
#[test]
fn batched_inference_gives_each_frame_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    dynamic_batch_bundle(dir.path());
    let bundle = Bundle::load(dir.path()).expect("the dynamic-batch bundle loads");
    let lib = find_ort_library(None).unwrap();
    let backend = OrtBackend::new(&bundle, &lib, 1, 4).expect("ORT loads the dynamic-batch model");
    let mut det = Detector::new(&bundle, Box::new(backend)).unwrap();
    assert_eq!(det.max_batch(), 4, "a dynamic batch dimension takes inference.max_batch");

    // The reference frame as RGB, and its mirror image.
    let reference = bundle.manifest.reference.clone().unwrap();
    let input = bundle.read_f32(&reference.input).unwrap();
    let (w, h) = bundle.input_size();
    let (w, h) = (w as usize, h as usize);
    let rgb: Vec<u8> = (0..w * h)
        .flat_map(|i| (0..3).map(move |c| i + c * w * h))
        .map(|at| (input[at] * 255.0).round() as u8)
        .collect();
    let mirrored: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).rev().flat_map(move |x| [0, 1, 2].map(move |c| (y, x, c))))
        .map(|(y, x, c)| rgb[(y * w + x) * 3 + c])
        .collect();
    let size = (w as u32, h as u32);
    let alone: Vec<Vec<vigil_infer::Detection>> =
        [&rgb, &mirrored].iter().map(|img| det.detect(vigil_infer::Image::rgb(img, w * 3), size).unwrap()).collect();
    assert_eq!(alone[0].len(), 3, "the reference frame's three objects");
    for (slot, img) in [&rgb, &mirrored, &rgb].iter().enumerate() {
        det.load(slot, vigil_infer::Image::rgb(img, w * 3), size).unwrap();
    }
    det.run(3).expect("a batch of 3");
    for (slot, want) in [&alone[0], &alone[1], &alone[0]].iter().enumerate() {
        let got = det.detections(slot);
        assert_eq!(got.len(), want.len(), "slot {slot}");
        for (g, e) in got.iter().zip(want.iter()) {
            assert_eq!(g.class_id, e.class_id, "slot {slot}");
            assert!(
                (g.score - e.score).abs() < 1e-4 && (g.bbox.x1 - e.bbox.x1).abs() < 0.01,
                "slot {slot}: {g:?} vs {e:?}"
            );
        }
    }
    // The mirror image's boxes are the originals mirrored: the slots were not mixed up.
    let flip = |x: f32| w as f32 - x;
    for d in &alone[0] {
        let m = alone[1].iter().find(|m| m.class_id == d.class_id).expect("same objects, mirrored");
        assert!((m.bbox.x1 - flip(d.bbox.x2)).abs() < 2.0, "{m:?} mirrors {d:?}");
    }
}
