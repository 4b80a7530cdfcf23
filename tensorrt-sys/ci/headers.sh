#!/usr/bin/env bash
# Fetches TensorRT 10 and CUDA headers from package registries, for compiling tensorrt-sys where
# JetPack is not installed (CI, developer machines):
# - TensorRT: the Apache-2.0 headers carried by the crates.io package trtx-sys (TensorRT 10.16);
# - CUDA 12.6 (JetPack 6.1/6.2's version): PyPI nvidia-cuda-runtime-cu12 and nvidia-cuda-nvcc-cu12;
# - NVRTC 12.6 (PyPI nvidia-cuda-nvrtc-cu12), which compiles the pre-processing kernels without a GPU.
# Idempotent. Prints the environment that tensorrt-sys/build.rs reads, as `export` lines.
set -euo pipefail
cd "$(dirname "$0")/../.."
TRTX_VERSION=0.4.0
CUDA_RUNTIME=12.6.77
CUDA_NVCC=12.6.85

work=target/trt-headers
mkdir -p "$work/src"
if [ ! -f "$work/Cargo.toml" ]; then
  cat >"$work/Cargo.toml" <<TOML
[package]
name = "vigil-trt-headers"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
trtx-sys = "=$TRTX_VERSION"
[workspace]
TOML
  touch "$work/src/lib.rs"
fi
cargo fetch -q --manifest-path "$work/Cargo.toml" >&2
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
trt=$(ls -d "$registry"/*/trtx-sys-$TRTX_VERSION/TensorRT-Headers/TRT-Enterprise-10.* 2>/dev/null | head -n1)
[ -f "$trt/NvInfer.h" ] || { echo "trt-headers: NvInfer.h not found under trtx-sys $TRTX_VERSION" >&2; exit 1; }

[ -x .venv/bin/pip ] || python3 -m venv .venv
site=$(ls -d .venv/lib/python3*/site-packages)
if [ ! -f "$site/nvidia/cuda_runtime/include/cuda_runtime_api.h" ] || [ ! -d "$site/nvidia/cuda_nvcc/include/crt" ] \
   || ! ls "$site"/nvidia/cuda_nvrtc/lib/libnvrtc.so.* >/dev/null 2>&1; then
  echo "trt-headers: installing CUDA $CUDA_RUNTIME headers into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check --no-deps \
    "nvidia-cuda-runtime-cu12==$CUDA_RUNTIME" "nvidia-cuda-nvcc-cu12==$CUDA_NVCC" "nvidia-cuda-nvrtc-cu12==$CUDA_RUNTIME" >&2
fi
root=$(pwd)
echo "export TENSORRT_INCLUDE_DIR=$trt"
echo "export CUDA_INCLUDE_DIRS=$root/$site/nvidia/cuda_runtime/include:$root/$site/nvidia/cuda_nvcc/include"
