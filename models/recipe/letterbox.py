"""Letterbox preprocessing, matching GStreamer `videoscale add-borders=true` into a square
320x320 RGB frame: scale to fit keeping the aspect ratio, centre, pad with black (0, 0, 0).

Tensor: NCHW float32, RGB, value = pixel / 255.
Mapping back to source pixels: source = (input - pad_offset) / scale.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

INPUT_SIZE = 320


def params(w: int, h: int, size: int = INPUT_SIZE):
    """(scale, new_w, new_h, pad_x, pad_y) for a w x h source."""
    scale = min(size / w, size / h)
    nw = min(size, int(round(w * scale)))
    nh = min(size, int(round(h * scale)))
    return scale, nw, nh, (size - nw) // 2, (size - nh) // 2


def _bilinear_2tap(img: np.ndarray, nw: int, nh: int) -> np.ndarray:
    """Plain 2-tap bilinear (no antialiasing), like videoscale's default method."""
    h, w = img.shape[:2]
    xs = np.clip((np.arange(nw) + 0.5) * (w / nw) - 0.5, 0, w - 1)
    ys = np.clip((np.arange(nh) + 0.5) * (h / nh) - 0.5, 0, h - 1)
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (xs - x0)[None, :, None]
    fy = (ys - y0)[:, None, None]
    f = img.astype(np.float32)
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bot = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bot * fy), 0, 255).astype(np.uint8)


RESAMPLERS = ["bilinear", "bilinear2tap", "box", "nearest", "bicubic"]


def letterbox(img: np.ndarray, size: int = INPUT_SIZE, method: str = "bilinear"):
    """uint8 HxWx3 RGB -> (uint8 size x size x 3, (scale, pad_x, pad_y)).

    The reference method is PIL's bilinear; the others exist for training augmentation
    (a deployed pipeline may scale with a different filter)."""
    h, w = img.shape[:2]
    scale, nw, nh, px, py = params(w, h, size)
    if method == "bilinear2tap":
        small = _bilinear_2tap(img, nw, nh)
    else:
        filt = {"bilinear": Image.BILINEAR, "box": Image.BOX, "nearest": Image.NEAREST,
                "bicubic": Image.BICUBIC}[method]
        small = np.asarray(Image.fromarray(img).resize((nw, nh), filt))
    out = np.zeros((size, size, 3), np.uint8)
    out[py:py + nh, px:px + nw] = small
    return out, (scale, px, py)


def to_tensor(lb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 [1, 3, H, W], value / 255."""
    return (lb.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None].copy()


def box_to_input(box, scale: float, px: int, py: int) -> list:
    return [box[0] * scale + px, box[1] * scale + py, box[2] * scale + px, box[3] * scale + py]


def box_to_source(box, scale: float, px: int, py: int) -> list:
    return [(box[0] - px) / scale, (box[1] - py) / scale, (box[2] - px) / scale, (box[3] - py) / scale]
