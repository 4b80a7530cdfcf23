"""Reference input/outputs for the appliance's conformance tests.

input.f32              frame 0 of the held-out clip (the generator's raw RGB frame, not the decoded
                       video), letterboxed to 320x320: float32 LE, [1, 3, 320, 320]
output.int8model.f32   ORT output `grid` of model.int8.onnx on that input: float32 LE, [1, 8, 40, 40]
output.fp32model.f32   same for model.fp32.onnx
detections.json        decoded INT8 detections (score >= threshold, class-aware NMS) in 320x320
                       input pixels

Also prints the INT8-vs-FP32 difference and how much the INT8 output moves between ORT
configurations (threads, graph optimisation levels), which sets the manifest tolerance.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import decode  # noqa: E402
import letterbox  # noqa: E402
import make_clip  # noqa: E402

MODELS = HERE.parent
BUNDLE = MODELS / "bundles" / "shapes-v1"
REF = BUNDLE / "reference"


def run(path: Path, x: np.ndarray, threads: int = 1,
        level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Exact U8xU8 on x86 without VNNI, as the appliance runs it (docs/performance.md).
    so.add_session_config_entry("session.x64quantprecision", "1")
    so.graph_optimization_level = level
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["grid"], {"images": x})[0]


def main():
    REF.mkdir(parents=True, exist_ok=True)
    _, frame0, gts = next(make_clip.clip_frames())
    lb, lbp = letterbox.letterbox(frame0)
    x = letterbox.to_tensor(lb)
    assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32
    x.astype("<f4").tofile(REF / "input.f32")

    out8 = run(BUNDLE / "model.int8.onnx", x)
    out32 = run(BUNDLE / "model.fp32.onnx", x)
    out8.astype("<f4").tofile(REF / "output.int8model.f32")
    out32.astype("<f4").tofile(REF / "output.fp32model.f32")

    dets = decode.nms(decode.decode(out8))
    for d in dets:
        d["score"] = round(d["score"], 5)
        d["box"] = [round(v, 3) for v in d["box"]]
    (REF / "detections.json").write_text(json.dumps(dets, indent=1) + "\n")

    print(f"input {x.shape}, letterbox scale {lbp[0]:.4f} pad ({lbp[1]}, {lbp[2]})")
    print(f"output {out8.shape}; int8 vs fp32 max abs diff {np.abs(out8 - out32).max():.4f}, "
          f"mean {np.abs(out8 - out32).mean():.4f}")
    worst = 0.0
    for threads in (1, 2, 4):
        for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                      ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
            d = float(np.abs(run(BUNDLE / "model.int8.onnx", x, threads, level) - out8).max())
            worst = max(worst, d)
            print(f"  int8 threads={threads} opt={level.name}: max abs diff vs reference {d:.5f}")
    print(f"int8 output, worst max abs diff across ORT configurations: {worst:.5f}")
    print("detections (input pixels):")
    for d in dets:
        print("  ", d)
    print("ground truth (input pixels):")
    for g in gts:
        print("  ", g["label"], [round(v, 2) for v in letterbox.box_to_input(g["box"], *lbp)])
    sha = hashlib.sha256((BUNDLE / "model.int8.onnx").read_bytes()).hexdigest()
    print(f"sha256(model.int8.onnx) = {sha}")
    # tolerance: twice the worst deviation seen, never below 0.05 (ORT builds, tract's
    # fake-quant execution and TensorRT round differently than this ORT build)
    tolerance = max(0.05, round(2 * worst + 0.005, 2))
    (BUNDLE / "manifest.toml").write_text(MANIFEST.format(sha=sha, tol=tolerance))
    print(f"wrote {BUNDLE / 'manifest.toml'} (tolerance {tolerance})")


MANIFEST = """schema = 1
[model]
name = "shapes"
version = "1.0.0"
description = "Tiny synthetic-shapes detector (circle, square, triangle); 8-layer stride-8 CNN, 144k parameters, trained on generated scenes"
onnx = "model.int8.onnx"          # the QDQ INT8 model: what ORT runs and TensorRT builds from
onnx_fp32 = "model.fp32.onnx"
sha256 = "{sha}"
backends = ["onnxruntime", "tensorrt"]
[input]
name = "images"
shape = [1, 3, 320, 320]
layout = "NCHW"
color = "RGB"
dtype = "f32"
scale = 0.00392156862745098
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
letterbox = "center"
pad_value = 0
[output]
name = "grid"
format = "vigil-grid-v1"
shape = [1, 8, 40, 40]
[postprocess]
labels = ["circle", "square", "triangle"]
score_threshold = 0.5
nms_iou = 0.45
max_detections = 100
[budget]
latency_ms = 100
[reference]
input = "reference/input.f32"
output_int8 = "reference/output.int8model.f32"
output_fp32 = "reference/output.fp32model.f32"
detections = "reference/detections.json"
tolerance = {tol}   # max abs diff allowed on the int8 output (see README: measured deviation x2, floor 0.05)
"""


if __name__ == "__main__":
    main()
