#!/usr/bin/env bash
# Stages what the .deb takes from outside the source tree: ONNX Runtime's library, under a name
# without the Python version in its path. amd64 (the default): from the pip wheel in .venv
# (`make setup`); arm64 (the JetPack variant): from the aarch64 wheel `make cross-setup` unpacks.
set -euo pipefail
arch=${1:-amd64}
case $arch in
  amd64) lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.[0-9]* 2>/dev/null | head -1)
         hint="make setup" ;;
  arm64) lib=$(ls target/cross/ort/libonnxruntime.so.[0-9]* 2>/dev/null | head -1)
         hint="make cross-setup" ;;
  *) echo "stage-deb: architecture amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
[[ -n $lib ]] || { echo "stage-deb: no $arch ONNX Runtime library ($hint)" >&2; exit 1; }
rm -rf target/deb-stage && mkdir -p target/deb-stage
cp "$lib" target/deb-stage/
