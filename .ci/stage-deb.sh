#!/usr/bin/env bash
# Stages what the .deb takes from outside the source tree: ONNX Runtime's library from the pip
# wheel in .venv (`make setup`), under a name without the Python version in its path.
set -euo pipefail
lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.[0-9]* 2>/dev/null | head -1)
[[ -n $lib ]] || { echo "stage-deb: no ONNX Runtime in .venv (make setup)" >&2; exit 1; }
rm -rf target/deb-stage && mkdir -p target/deb-stage
cp "$lib" target/deb-stage/
