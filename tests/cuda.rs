//! CUDA pre-processing (feature `cuda`) and TensorRT (feature `tensorrt`). On every machine: the
//! kernels compile with NVRTC, and CUDA code reports a missing device as an error instead of
//! panicking. On a machine with a CUDA GPU: the kernels match the CPU reference
//! (`transform::reference`) pixel by pixel, for RGBA and NV12 sources, letterboxed, into f32, f16
//! and s8; and a TensorRT engine built from the bundle matches the bundle's references.
//!
//! The GPU tests are `#[ignore]`d, so that a machine without a GPU shows them as ignored (never as
//! passed). `VIGIL_REQUIRE_GPU=1 make unit` runs them (`--include-ignored`), and there a missing
//! GPU fails them.
//!
//! Tolerances: f32 within 1e-5 (the same float operations in the same order; rounding of the
//! division may differ by an ulp), f16 within one f16 ulp, s8 within one step.

use std::path::Path;

use vigil_infer::cuda::{available, compile_kernels, CudaPreprocessor};
use vigil_infer::transform::{quantize_i8, reference, InputType, Pixels, Transform};

/// Loads NVRTC from the repository's .venv (PyPI nvidia-cuda-nvrtc-cu12, installed by
/// `make trt-headers`) unless the system has it; cudarc then finds it by its soname.
fn load_nvrtc() {
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    let Ok(pythons) = std::fs::read_dir(&site) else { return };
    for python in pythons.filter_map(Result::ok) {
        let lib = python.path().join("site-packages/nvidia/cuda_nvrtc/lib");
        for name in ["libnvrtc-builtins.so.12.6", "libnvrtc.so.12"] {
            let path = std::ffi::CString::new(lib.join(name).to_string_lossy().as_bytes()).unwrap();
            // SAFETY: dlopen of a shared library by path; the handle is kept for the process.
            unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        }
    }
}

#[test]
fn the_kernels_compile_with_nvrtc() {
    load_nvrtc();
    // Orin (sm_87) and the H100s of the lab (sm_90).
    for arch in ["compute_87", "compute_90"] {
        let ptx = compile_kernels(Some(arch)).expect("NVRTC compiles the kernels (make trt-headers installs it)");
        let src = ptx.to_src();
        assert!(src.contains(".entry vigil_preprocess"), "{arch}: no kernel entry in the PTX");
        assert!(src.contains("cvt.rn.f16.f32"), "{arch}: the f16 conversion is there");
    }
}

#[test]
fn without_a_device_cuda_says_so_instead_of_panicking() {
    match available() {
        Ok(()) => assert!(cudarc::driver::CudaContext::new(0).is_ok(), "available() said yes, so device 0 opens"),
        Err(why) => assert!(why.starts_with("no CUDA device"), "{why}"),
    }
}

/// The GPU tests run only when asked for (`--include-ignored`): then a missing GPU is a failure.
fn require_gpu(why_not: Result<(), String>) {
    if let Err(why) = why_not {
        panic!("this test needs a CUDA GPU and was asked to run (VIGIL_REQUIRE_GPU=1 or --ignored): {why}");
    }
}

fn xorshift(seed: u32) -> impl FnMut() -> u8 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x >> 24) as u8
    }
}

fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

#[test]
#[ignore = "needs a CUDA GPU: VIGIL_REQUIRE_GPU=1 make unit runs it"]
fn kernels_match_the_cpu_reference_pixel_by_pixel() {
    load_nvrtc();
    require_gpu(available());
    let ctx = cudarc::driver::CudaContext::new(0).expect("device 0");
    let mut pre = CudaPreprocessor::new(ctx.default_stream()).expect("kernels load");
    let stream = pre.stream().clone();
    let mut rand = xorshift(0x1234_5678);
    // Landscape, portrait, odd sizes, and same size.
    for &(sw, sh, dw, dh) in
        &[(1280u32, 720u32, 320u32, 320u32), (480, 640, 320, 320), (333, 177, 160, 96), (64, 64, 64, 64)]
    {
        let t = Transform::new((sw, sh), (dw, dh), 1.0 / 255.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 114);
        let rgba: Vec<u8> = (0..sw * sh * 4).map(|_| rand()).collect();
        let y: Vec<u8> = (0..sw * sh).map(|_| rand()).collect();
        let uv: Vec<u8> = (0..sw.div_ceil(2) * sh.div_ceil(2) * 2).map(|_| rand()).collect();
        let sources = [
            Pixels::Rgba { data: &rgba, stride: sw as usize * 4 },
            Pixels::Nv12 { y: &y, y_stride: sw as usize, uv: &uv, uv_stride: sw.div_ceil(2) as usize * 2 },
        ];
        for src in &sources {
            let mut want = vec![0.0f32; t.len()];
            reference(src, &t, &mut want);
            for kind in [InputType::F32, InputType::F16, InputType::I8 { scale: 0.02 }] {
                let mut out = stream.alloc_zeros::<u8>(CudaPreprocessor::output_bytes(&t, kind)).unwrap();
                pre.run(src, &t, kind, &mut out.slice_mut(..)).expect("kernel runs");
                let got = stream.clone_dtoh(&out).unwrap();
                let what = format!(
                    "{sw}x{sh}→{dw}x{dh} {} {kind:?}",
                    if matches!(src, Pixels::Nv12 { .. }) { "NV12" } else { "RGBA" }
                );
                match kind {
                    InputType::F32 => {
                        let got: Vec<f32> =
                            got.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
                        assert!(worst <= 1e-5, "{what}: max |Δ| {worst}");
                    }
                    InputType::F16 => {
                        for (i, (b, w)) in got.chunks_exact(2).zip(&want).enumerate() {
                            let g = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                            let ulp =
                                f16_to_f32(half::f16::from_f32(*w).to_bits() + 1) - half::f16::from_f32(*w).to_f32();
                            assert!((g - w).abs() <= ulp.abs().max(1e-3), "{what}: value {i}: {g} vs {w}");
                        }
                    }
                    InputType::I8 { scale } => {
                        let want = quantize_i8(&want, scale);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (i16::from(*g as i8) - i16::from(*w)).abs() <= 1,
                                "{what}: value {i}: {} vs {w}",
                                *g as i8
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(feature = "tensorrt")]
#[test]
#[ignore = "needs a CUDA GPU and TensorRT: VIGIL_REQUIRE_GPU=1 make unit runs it"]
fn a_tensorrt_engine_built_from_the_bundle_matches_its_references() {
    use vigil_infer::tensorrt::{EngineOptions, TrtBackend};
    use vigil_infer::{check, Bundle, Detector};

    load_nvrtc();
    require_gpu(vigil_infer::tensorrt::available());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bundle = Bundle::load(&root.join("models/bundles/shapes-v1")).expect("the shipped bundle loads");
    let cache = tempfile::tempdir().unwrap();
    let options =
        EngineOptions { cache_dir: cache.path().to_path_buf(), workspace_bytes: 1 << 30, dla_core: None, max_batch: 1 };
    let backend = TrtBackend::new(&bundle, &options).expect("TensorRT builds the engine from the bundle's ONNX");
    let mut detector = Detector::new(&bundle, Box::new(backend)).expect("the engine fits the bundle");
    let result = check::check_model(&bundle, &mut detector).expect("the check runs");
    assert!(result.passed(), "engine against the bundle's references: {:?}", result.problems);
}
