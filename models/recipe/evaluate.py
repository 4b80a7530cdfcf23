"""Evaluates the bundle on the held-out clip, as the appliance sees it: the MP4 is decoded with
GStreamer to raw RGB, each frame is letterboxed to 320x320, ONNX Runtime (1 thread) runs the
model, the grid is decoded (score >= 0.5, class-aware NMS at 0.45) and boxes are mapped back
to source pixels. A detection is correct when its label matches and IoU >= 0.5.

    python evaluate.py [--min 0.95]   (exit status 1 when INT8 precision or recall < --min)
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import decode  # noqa: E402
import letterbox  # noqa: E402

MODELS = HERE.parent
BUNDLE = MODELS / "bundles" / "shapes-v1"
CLIPS = MODELS / "clips"
WORK = MODELS / "work"


def gst() -> str:
    g = shutil.which("gst-launch-1.0")
    if g is None:
        raise SystemExit("gst-launch-1.0 not found")
    return g


def decode_clip(mp4: Path, w: int, h: int) -> np.ndarray:
    raw = WORK / (mp4.stem + ".decoded.rgb")
    subprocess.run([gst(), "-q", "filesrc", f"location={mp4}", "!", "qtdemux", "!", "h264parse", "!",
                    "avdec_h264", "!", "videoconvert", "!", "video/x-raw,format=RGB", "!",
                    "filesink", f"location={raw}"], check=True)
    return np.fromfile(raw, np.uint8).reshape(-1, h, w, 3)


def decoded_pts(mp4: Path) -> list:
    """Presentation timestamps (ns) of the decoded frames, as GStreamer reports them."""
    out = subprocess.run([gst(), "-v", "-m", "filesrc", f"location={mp4}", "!", "qtdemux", "!",
                          "h264parse", "!", "avdec_h264", "!", "identity", "silent=false", "!",
                          "fakesink", "sync=false"], check=True, capture_output=True, text=True).stdout
    pts = []
    for m in re.finditer(r"identity0.*?chain.*?pts: (\d+):(\d+):(\d+)\.(\d+)", out):
        hh, mm, ss, ns = (int(v) for v in m.groups())
        pts.append(((hh * 60 + mm) * 60 + ss) * 1_000_000_000 + ns)
    return pts


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    # Exact U8xU8 on x86 without VNNI, as the appliance runs it (docs/performance.md).
    so.add_session_config_entry("session.x64quantprecision", "1")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def evaluate(sess, tensors, lbps, gt_frames):
    tp = fp = fn = 0
    times = []
    for _ in range(3):  # warm-up
        sess.run(["grid"], {"images": tensors[0]})
    for x, lbp, fr in zip(tensors, lbps, gt_frames):
        t0 = time.perf_counter()
        grid = sess.run(["grid"], {"images": x})[0]
        times.append(time.perf_counter() - t0)
        dets = decode.nms(decode.decode(grid))
        for d in dets:
            d["box"] = letterbox.box_to_source(d["box"], *lbp)
        a, b, c = decode.match(dets, fr["objects"])
        tp, fp, fn = tp + a, fp + b, fn + c
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn), "ms_mean": 1000 * float(np.mean(times)),
            "ms_p50": 1000 * float(np.median(times))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(BUNDLE))
    ap.add_argument("--clip", default=str(CLIPS / "shapes-eval.mp4"))
    ap.add_argument("--min", type=float, default=0.95)
    args = ap.parse_args()
    mp4 = Path(args.clip)
    gt = json.loads(mp4.with_name(mp4.stem + ".gt.json").read_text())
    frames = decode_clip(mp4, gt["width"], gt["height"])
    assert len(frames) == len(gt["frames"]), (len(frames), len(gt["frames"]))
    pts = decoded_pts(mp4)
    expected = [f["pts_ns"] for f in gt["frames"]]
    assert len(pts) == len(expected), (len(pts), len(expected))
    print(f"decoded {len(frames)} frames; first PTS {pts[0]} ns; max |PTS - gt pts_ns| = "
          f"{max(abs(a - b) for a, b in zip(pts, expected))} ns")
    tensors, lbps = [], []
    for f in frames:
        lb, lbp = letterbox.letterbox(f)
        tensors.append(letterbox.to_tensor(lb))
        lbps.append(lbp)
    bundle = Path(args.bundle)
    results = {}
    for name in ("model.int8.onnx", "model.fp32.onnx"):
        r = evaluate(session(bundle / name), tensors, lbps, gt["frames"])
        results[name] = r
        print(f"{name}: precision {r['precision']:.4f} recall {r['recall']:.4f} "
              f"(tp {r['tp']} fp {r['fp']} fn {r['fn']}); ORT 1 thread {r['ms_mean']:.2f} ms/frame mean, "
              f"{r['ms_p50']:.2f} ms median")
    (WORK / "eval.json").write_text(json.dumps(results, indent=1))
    r = results["model.int8.onnx"]
    if r["precision"] < args.min or r["recall"] < args.min:
        print(f"FAIL: int8 precision/recall below {args.min}")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
