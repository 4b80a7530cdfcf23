//! Acceptance of a model on this device before it may serve (vigil_infer::accept): the shipped
//! bundle passes on ONNX Runtime; a model with wrong outputs, one too slow for a camera's budget,
//! and one that leaves too little memory are each refused with the reason.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use vigil_infer::accept::{accept, memory_available, time_inference, Limits};
use vigil_infer::{find_ort_library, Bundle, Detector, OrtBackend};

fn load(dir: &Path) -> (Bundle, Detector) {
    let bundle = Bundle::load(dir).expect("the bundle loads");
    let lib = find_ort_library(None).expect("ONNX Runtime is installed (make setup)");
    let backend = OrtBackend::new(&bundle, &lib, 1, 1).expect("ORT loads the model");
    let det = Detector::new(&bundle, Box::new(backend)).unwrap();
    (bundle, det)
}

fn limits(budget_ms: u64) -> Limits {
    Limits {
        budgets: vec![("a".into(), Duration::from_millis(budget_ms)), ("b".into(), Duration::from_millis(500))],
        runs: 5,
        min_available: 1 << 20,
    }
}

#[test]
fn the_shipped_bundle_is_accepted_on_onnx_runtime() {
    let (bundle, mut det) = load(&bundle_dir());
    let a = accept(&bundle, &mut det, &limits(1000), time_inference, memory_available).unwrap();
    assert!(a.accepted(), "{:?}", a.problems);
    assert!(a.latency_p50 <= a.latency_p95 && a.latency_p95 > Duration::ZERO);
    assert!(a.available_after.is_some(), "Linux reports MemAvailable");
}

#[test]
fn a_model_too_slow_for_a_cameras_budget_is_refused_naming_the_camera() {
    let (bundle, mut det) = load(&bundle_dir());
    // Scripted timings: 90 ms per inference, against camera a's 100 ms budget (80 ms allowed).
    let slow = |_: &mut Detector, _: &[f32]| Ok(Duration::from_millis(90));
    let a = accept(&bundle, &mut det, &limits(100), slow, || Some(1 << 30)).unwrap();
    assert_eq!(a.problems.len(), 1, "{:?}", a.problems);
    assert!(a.problems[0].contains("too slow for camera `a`") && a.problems[0].contains("90.0 ms"), "{:?}", a.problems);
}

#[test]
fn a_model_whose_outputs_are_wrong_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let refs = dir.path().join("reference");
    // The reference says the model should output zeros everywhere: this model does not.
    let out = refs.join("output.int8model.f32");
    let len = std::fs::metadata(&out).unwrap().len() as usize;
    std::fs::write(&out, vec![0u8; len]).unwrap();
    let (bundle, mut det) = load(dir.path());
    let a = accept(&bundle, &mut det, &limits(1000), time_inference, || Some(1 << 30)).unwrap();
    assert!(!a.accepted());
    assert!(a.problems.iter().any(|p| p.contains("over the manifest's tolerance")), "{:?}", a.problems);
}

#[test]
fn a_model_that_leaves_too_little_memory_is_refused() {
    let (bundle, mut det) = load(&bundle_dir());
    let mut l = limits(1000);
    l.min_available = 256 << 20;
    let a = accept(&bundle, &mut det, &l, time_inference, || Some(10 << 20)).unwrap();
    assert!(a.problems.iter().any(|p| p.contains("10 MiB available") && p.contains("256 MiB")), "{:?}", a.problems);
}
