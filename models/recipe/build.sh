#!/usr/bin/env bash
# Rebuilds models/bundles/shapes-v1 and models/clips from nothing (CPU only, ~30 min on 2 cores).
# Needs python3 (3.11) and gst-launch-1.0 with x264enc, avdec_h264, qtdemux, mp4mux
# (Debian: gstreamer1.0-tools gstreamer1.0-plugins-{base,good,bad,ugly} gstreamer1.0-libav).
set -euo pipefail
cd "$(dirname "$0")/.."          # models/
VENV=.venv-train
export OMP_NUM_THREADS=1
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
export PYTHONHASHSEED=0
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -r requirements-train.txt
fi
PY="$VENV/bin/python"
mkdir -p work
"$PY" recipe/make_clip.py                    # clips/shapes-eval.mp4 + .gt.json (held-out, seed 5000)
"$PY" recipe/train.py --steps 1800 --batch 32 --lr 2e-3 | tee work/train.log   # work/weights.npz
"$PY" recipe/export.py                       # bundles/shapes-v1/model.fp32.onnx
"$PY" recipe/quantize.py                     # bundles/shapes-v1/model.int8.onnx
"$PY" recipe/evaluate.py --min 0.95 | tee work/eval.log   # precision/recall on the decoded clip
"$PY" recipe/reference.py | tee work/reference.log        # reference/* + manifest.toml
