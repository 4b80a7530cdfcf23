//! Compiles the shim (shim/vigil_trt.cpp) against TensorRT 10 headers, generates Rust bindings
//! from its C header with bindgen, and links TensorRT, or the stub library where TensorRT's
//! libraries are absent (CI).
//!
//! Environment:
//! - `TENSORRT_INCLUDE_DIR`: directory with NvInfer.h (else the JetPack/Debian locations, else
//!   the headers `make trt-headers` fetched into the cargo registry).
//! - `TENSORRT_LIB_DIR`: directory with libnvinfer.so (else the JetPack/Debian locations).
//! - `CUDA_INCLUDE_DIRS`: `:`-separated directories with cuda_runtime_api.h and what it includes
//!   (else /usr/local/cuda/include, else the PyPI CUDA headers `make trt-headers` put in .venv).
//! - `VIGIL_TRT_REQUIRE_REAL=1`: fail instead of linking the stub (release builds for boards).

use std::env;
use std::path::{Path, PathBuf};

const SYSTEM_INCLUDE: &[&str] = &["/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/include"];
const SYSTEM_LIB: &[&str] = &["/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib"];

fn main() {
    for var in ["TENSORRT_INCLUDE_DIR", "TENSORRT_LIB_DIR", "CUDA_INCLUDE_DIRS", "VIGIL_TRT_REQUIRE_REAL"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for file in ["shim/vigil_trt.h", "shim/vigil_trt.cpp", "stub/trt_stub.cpp"] {
        println!("cargo:rerun-if-changed={file}");
    }

    let trt_include = env::var_os("TENSORRT_INCLUDE_DIR")
        .map(PathBuf::from)
        .or_else(|| SYSTEM_INCLUDE.iter().map(PathBuf::from).find(|d| d.join("NvInfer.h").is_file()))
        .or_else(fetched_trt_headers)
        .unwrap_or_else(|| {
            panic!(
                "TensorRT headers (NvInfer.h) not found. On a Jetson install JetPack's libnvinfer-dev; \
                 elsewhere run `make trt-headers` and set TENSORRT_INCLUDE_DIR and CUDA_INCLUDE_DIRS as it prints."
            )
        });
    assert!(trt_include.join("NvInfer.h").is_file(), "TENSORRT_INCLUDE_DIR={} has no NvInfer.h", trt_include.display());
    let cuda_includes: Vec<PathBuf> = match env::var("CUDA_INCLUDE_DIRS") {
        Ok(v) => env::split_paths(&v).collect(),
        Err(_) if Path::new("/usr/local/cuda/include/cuda_runtime_api.h").is_file() => {
            vec![PathBuf::from("/usr/local/cuda/include")]
        }
        Err(_) => fetched_cuda_headers(),
    };
    assert!(
        cuda_includes.iter().any(|d| d.join("cuda_runtime_api.h").is_file()),
        "cuda_runtime_api.h not found in {cuda_includes:?}: set CUDA_INCLUDE_DIRS (see `make trt-headers`)"
    );

    let lib_dir = env::var_os("TENSORRT_LIB_DIR")
        .map(PathBuf::from)
        .or_else(|| SYSTEM_LIB.iter().map(PathBuf::from).find(|d| has_lib(d, "nvinfer")));
    let real = lib_dir.as_deref().is_some_and(|d| has_lib(d, "nvinfer") && has_lib(d, "nvonnxparser"));
    if !real && env::var("VIGIL_TRT_REQUIRE_REAL").is_ok_and(|v| v == "1") {
        panic!("VIGIL_TRT_REQUIRE_REAL=1 but libnvinfer/libnvonnxparser were not found: set TENSORRT_LIB_DIR");
    }

    let mut shim = cc::Build::new();
    shim.cpp(true)
        .std("c++17")
        .file("shim/vigil_trt.cpp")
        .include("shim")
        // TensorRT 10.16 marks the INT8/FP16 builder flags deprecated; 10.3 (JetPack 6) needs them.
        .flag_if_supported("-Wno-deprecated-declarations")
        .define("VT_STUB", if real { "0" } else { "1" });
    // System include directories: warnings inside TensorRT's and CUDA's headers are not ours.
    for dir in std::iter::once(&trt_include).chain(&cuda_includes) {
        shim.flag("-isystem").flag(dir.to_str().expect("include paths are UTF-8"));
    }
    shim.compile("vigil_trt");

    if real {
        let dir = lib_dir.expect("checked above");
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=dylib=nvinfer");
        println!("cargo:rustc-link-lib=dylib=nvonnxparser");
    } else {
        println!(
            "cargo:warning=tensorrt-sys: TensorRT libraries not found; linking the stub (engines cannot be built \
             or run; set TENSORRT_LIB_DIR on a Jetson)"
        );
        cc::Build::new().cpp(true).std("c++17").file("stub/trt_stub.cpp").compile("vigil_trt_stub");
    }
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:include={}", trt_include.display());

    let bindings = bindgen::Builder::default()
        .header("shim/vigil_trt.h")
        .allowlist_function("vt_.*")
        .allowlist_type("vt_.*")
        .allowlist_var("VT_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(true)
        .generate()
        .expect("bindgen could not read shim/vigil_trt.h (is libclang installed? apt install libclang-dev)");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings.write_to_file(out.join("bindings.rs")).expect("bindings written");
}

/// TensorRT headers from the crates.io package trtx-sys, as `make trt-headers` fetches them.
fn fetched_trt_headers() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let registries = std::fs::read_dir(home.join("registry/src")).ok()?;
    registries.filter_map(Result::ok).find_map(|r| {
        let headers = r.path().join("trtx-sys-0.4.0/TensorRT-Headers");
        let mut versions: Vec<PathBuf> = std::fs::read_dir(headers)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("TRT-Enterprise-10.")))
            .filter(|p| p.join("NvInfer.h").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

/// CUDA headers from the PyPI wheels `make trt-headers` installs into the repository's .venv.
fn fetched_cuda_headers() -> Vec<PathBuf> {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("..");
    let Ok(pythons) = std::fs::read_dir(root.join(".venv/lib")) else { return Vec::new() };
    pythons
        .filter_map(Result::ok)
        .map(|p| p.path().join("site-packages/nvidia"))
        .find(|n| n.join("cuda_runtime/include/cuda_runtime_api.h").is_file())
        .map(|n| vec![n.join("cuda_runtime/include"), n.join("cuda_nvcc/include")])
        .unwrap_or_default()
}

fn has_lib(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with(&format!("lib{name}.so")))
    })
}
