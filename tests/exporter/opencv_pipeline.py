"""An exporter's own detection pipeline for the shapes model, written the way model authors
write theirs (YOLOX's and Ultralytics' demos): OpenCV reads the picture (BGR), `cv2.resize`
(bilinear) scales it, `cv2.copyMakeBorder` pads it, ONNX Runtime runs the model, and the boxes
are mapped back to the picture's pixels. It shares no code with vigil's pre-processing, so its
detections are the truth `vigil model pack --expect` is checked against in tests/pack.rs.

Usage: opencv_pipeline.py MODEL.onnx PICTURE OUT.json [--color rgb|bgr] [--letterbox
center|top-left] [--rounding round|floor] [--pad N] [--scale S] [--threshold T] [--tensor OUT.f32]

Writes a JSON array of {"label", "class_id", "score", "box": [x1, y1, x2, y2]}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models" / "recipe"))
import decode  # noqa: E402  (the shapes model's grid decoding and class-aware NMS)


def letterbox(bgr: np.ndarray, size: int, a: argparse.Namespace):
    h, w = bgr.shape[:2]
    r = min(size / w, size / h)
    if a.rounding == "floor":
        nw, nh = int(w * r), int(h * r)
    else:
        nw, nh = int(round(w * r)), int(round(h * r))
    scaled = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = size - nw, size - nh
    if a.letterbox == "top-left":
        top, left = 0, 0
    else:
        # Ultralytics' split of an odd border: the extra pixel goes to the bottom and right.
        top, left = int(round(dh / 2 - 0.1)), int(round(dw / 2 - 0.1))
    pad = (a.pad, a.pad, a.pad)
    out = cv2.copyMakeBorder(scaled, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=pad)
    return out, r, left, top


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("picture")
    p.add_argument("out")
    p.add_argument("--color", choices=["rgb", "bgr"], default="rgb")
    p.add_argument("--letterbox", choices=["center", "top-left"], default="center")
    p.add_argument("--rounding", choices=["round", "floor"], default="round")
    p.add_argument("--pad", type=int, default=0)
    p.add_argument("--scale", type=float, default=1 / 255)
    p.add_argument("--threshold", type=float, default=decode.SCORE_THRESHOLD)
    p.add_argument("--tensor", help="also write the model's input tensor here (raw f32 NCHW)")
    a = p.parse_args()

    so = ort.SessionOptions()
    # Exact INT8 products on x86 CPUs without VNNI, as vigil runs them (without it, AVX2's
    # VPMADDUBSW saturates and INT8 outputs drift; docs/performance.md).
    so.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    size = inp.shape[2]
    bgr = cv2.imread(a.picture, cv2.IMREAD_COLOR)
    if bgr is None:
        sys.exit(f"cannot read {a.picture}")
    img, r, left, top = letterbox(bgr, size, a)
    if a.color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    x = (img.astype(np.float32) * np.float32(a.scale)).transpose(2, 0, 1)[None]
    if a.tensor:
        np.ascontiguousarray(x).tofile(a.tensor)
    grid = session.run(None, {inp.name: np.ascontiguousarray(x)})[0]
    dets = decode.nms(decode.decode(grid, stride=size // grid.shape[2], score_threshold=a.threshold))
    h, w = bgr.shape[:2]
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        d["box"] = [min(max((x1 - left) / r, 0.0), w), min(max((y1 - top) / r, 0.0), h),
                    min(max((x2 - left) / r, 0.0), w), min(max((y2 - top) / r, 0.0), h)]
    Path(a.out).write_text(json.dumps(dets, indent=1))
    print(f"{len(dets)} detection(s) on {a.picture} ({w}x{h})")


if __name__ == "__main__":
    main()
