"""Decoding of the `vigil-grid-v1` output, class-aware NMS and matching against ground truth.

grid: [1, 5 + C, G, G] raw values; for the cell (gy, gx) with t = grid[0, :, gy, gx] and
stride s: objectness = sigmoid(t0), cx = (gx + sigmoid(t1)) * s, cy = (gy + sigmoid(t2)) * s,
w = exp(t3) * s, h = exp(t4) * s, p_c = sigmoid(t[5 + c]); score = objectness * max_c p_c,
label = argmax_c p_c. Boxes are in input (320x320) pixels.
"""
from __future__ import annotations

import numpy as np

from scene import LABELS

STRIDE = 8
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.45
MAX_DETECTIONS = 100


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode(grid: np.ndarray, stride: int = STRIDE, score_threshold: float = SCORE_THRESHOLD) -> list:
    t = grid[0].astype(np.float64)
    g_h, g_w = t.shape[1:]
    gy, gx = np.mgrid[0:g_h, 0:g_w]
    obj = sigmoid(t[0])
    probs = sigmoid(t[5:])
    cls = probs.argmax(0)
    score = obj * probs.max(0)
    cx = (gx + sigmoid(t[1])) * stride
    cy = (gy + sigmoid(t[2])) * stride
    w = np.exp(np.clip(t[3], -20, 20)) * stride
    h = np.exp(np.clip(t[4], -20, 20)) * stride
    dets = []
    for y, x in zip(*np.nonzero(score >= score_threshold)):
        dets.append({
            "label": LABELS[int(cls[y, x])],
            "class_id": int(cls[y, x]),
            "score": float(score[y, x]),
            "box": [float(cx[y, x] - w[y, x] / 2), float(cy[y, x] - h[y, x] / 2),
                    float(cx[y, x] + w[y, x] / 2), float(cy[y, x] + h[y, x] / 2)],
        })
    return dets


def iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def nms(dets: list, iou_threshold: float = NMS_IOU, max_detections: int = MAX_DETECTIONS) -> list:
    """Class-aware greedy NMS; ties in score keep the earlier (row-major) cell."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i]["score"])
    keep = []
    for i in order:
        d = dets[i]
        if all(k["class_id"] != d["class_id"] or iou(k["box"], d["box"]) <= iou_threshold for k in keep):
            keep.append(d)
            if len(keep) >= max_detections:
                break
    return keep


def match(dets: list, gts: list, iou_threshold: float = 0.5):
    """Greedy matching by score; a true positive needs the same label and IoU >= threshold.
    Returns (tp, fp, fn)."""
    used = [False] * len(gts)
    tp = 0
    for d in sorted(dets, key=lambda d: -d["score"]):
        best, best_iou = -1, iou_threshold
        for j, g in enumerate(gts):
            if used[j] or g["label"] != d["label"]:
                continue
            v = iou(d["box"], g["box"])
            if v >= best_iou:
                best, best_iou = j, v
        if best >= 0:
            used[best] = True
            tp += 1
    return tp, len(dets) - tp, len(gts) - tp
