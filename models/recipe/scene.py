"""Synthetic scene generator for the `shapes` detector.

Three classes (circle, square, triangle) of solid, varied colours are drawn over varied
backgrounds (solid, gradient, smooth noise, stripes, checkerboard, blurred blobs).
Every object lies fully inside the frame, objects hardly overlap (intersection over the
smaller box < 0.2, which implies pairwise IoU < 0.2) and each one carries an exact
ground-truth box [x1, y1, x2, y2] in source pixels (continuous coordinates: pixel i spans
[i, i+1)).

Single frames (`random_scene`) feed training; `Clip` animates objects with constant
velocity, bouncing off the frame edges and off each other, for the held-out video.

Everything is driven by a `numpy.random.Generator`, so output is a pure function of the seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LABELS = ["circle", "square", "triangle"]
SOURCE_SIZES = [(640, 480), (640, 360), (480, 480), (800, 600)]
BACKGROUND_KINDS = ["solid", "gradient", "noise", "stripes", "checker", "blobs"]

MIN_BOX = 28.0
MAX_BOX = 108.0
MAX_OVERLAP = 0.2  # intersection / area of the smaller box (>= IoU)


# --------------------------------------------------------------------------- backgrounds

def _rand_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _smooth_field(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Low-frequency random field in [0, 1], shape (h, w)."""
    gw = max(2, cells)
    gh = max(2, int(round(cells * h / w)))
    small = (rng.random((gh, gw)) * 255).astype(np.uint8)
    big = Image.fromarray(small, "L").resize((w, h), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def make_background(rng: np.random.Generator, w: int, h: int, kind: str | None = None) -> np.ndarray:
    """Returns an (h, w, 3) uint8 background."""
    if kind is None:
        kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "solid":
        img = np.broadcast_to(_rand_colour(rng), (h, w, 3)).copy()
    elif kind == "gradient":
        c0, c1 = _rand_colour(rng), _rand_colour(rng)
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        img = c0 + (c1 - c0) * t[..., None]
    elif kind == "noise":
        img = np.stack([_smooth_field(rng, w, h, int(rng.integers(3, 24))) for _ in range(3)], -1)
        lo, hi = _rand_colour(rng), _rand_colour(rng)
        img = lo + (hi - lo) * img
        img = img + rng.normal(0, rng.uniform(2, 14), size=img.shape)
    elif kind == "stripes":
        c0, c1 = _rand_colour(rng), _rand_colour(rng)
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 48)
        t = (xx * math.cos(a) + yy * math.sin(a)) / period
        if rng.random() < 0.5:
            m = (np.floor(t) % 2).astype(np.float32)
        else:
            m = 0.5 + 0.5 * np.sin(2 * math.pi * t)
        img = c0 + (c1 - c0) * m[..., None]
    elif kind == "checker":
        c0, c1 = _rand_colour(rng), _rand_colour(rng)
        cell = rng.uniform(6, 28)
        m = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
        img = c0 + (c1 - c0) * m[..., None]
    elif kind == "blobs":
        base = Image.new("RGB", (w, h), tuple(int(v) for v in _rand_colour(rng)))
        d = ImageDraw.Draw(base)
        for _ in range(int(rng.integers(3, 9))):
            rx, ry = rng.uniform(0.15, 0.45) * w, rng.uniform(0.15, 0.45) * h
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tuple(int(v) for v in _rand_colour(rng)))
        base = base.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(12, 40))))
        img = np.asarray(base, dtype=np.float32)
    else:
        raise ValueError(kind)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- objects

@dataclass
class Obj:
    label: str
    cx: float          # centre of the bounding box
    cy: float
    size: float        # the longer side of the bounding box
    angle: float       # radians (squares, triangles)
    colour: tuple
    vx: float = 0.0
    vy: float = 0.0
    tri: tuple = field(default=(1.0, 0.9))  # triangle (base, height) proportions

    def _unit_polygon(self) -> np.ndarray:
        """Vertices relative to the box centre at size 1 along the longer box side."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        if self.label == "square":
            v = np.array([[-.5, -.5], [.5, -.5], [.5, .5], [-.5, .5]])
        else:
            b, hgt = self.tri
            v = np.array([[0.0, -hgt / 2], [b / 2, hgt / 2], [-b / 2, hgt / 2]])
        v = v @ np.array([[c, s], [-s, c]])
        lo, hi = v.min(0), v.max(0)
        v = v - (lo + hi) / 2
        return v / (hi - lo).max()

    def polygon(self) -> np.ndarray:
        return self._unit_polygon() * self.size + np.array([self.cx, self.cy])

    def box(self) -> list:
        if self.label == "circle":
            r = self.size / 2
            return [self.cx - r, self.cy - r, self.cx + r, self.cy + r]
        p = self.polygon()
        return [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]

    def half_extent(self) -> tuple:
        b = self.box()
        return (b[2] - b[0]) / 2, (b[3] - b[1]) / 2

    def draw(self, d: ImageDraw.ImageDraw) -> None:
        if self.label == "circle":
            r = self.size / 2
            # PIL's ellipse box is inclusive of its last pixel
            d.ellipse([self.cx - r, self.cy - r, self.cx + r - 1, self.cy + r - 1], fill=self.colour)
        else:
            # PIL fills pixel (i, j) when its corner lies inside; shift by -0.5 so that
            # pixel centres are tested, matching continuous coordinates
            d.polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in self.polygon()], fill=self.colour)


def overlap(a: list, b: list) -> float:
    """Intersection over the area of the smaller box."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    amin = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / amin


LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _pick_colour(rng: np.random.Generator, bg_samples: np.ndarray) -> tuple:
    """A colour that stands out against (nearly) all of the background, in RGB and in luma:
    4:2:0 video keeps only luma at full resolution, so a shape that differs from its
    background in chroma alone loses its outline once encoded."""
    bg_luma = bg_samples @ LUMA
    best, best_score = None, -1.0
    for _ in range(64):
        c = rng.integers(0, 256, size=3).astype(np.float32)
        dist = np.sqrt(((bg_samples - c) ** 2).sum(1))
        dluma = np.abs(bg_luma - float(c @ LUMA))
        score = min(float(np.percentile(dist, 3)) / 100.0, float(np.percentile(dluma, 3)) / 40.0)
        if score > best_score:
            best, best_score = c, score
        if score >= 1.0:
            break
    return tuple(int(v) for v in best)


def _new_object(rng: np.random.Generator, w: int, h: int, bg_samples: np.ndarray) -> Obj:
    label = LABELS[int(rng.integers(3))]
    size = float(math.exp(rng.uniform(math.log(MIN_BOX), math.log(MAX_BOX))))
    angle = 0.0 if label == "circle" else float(rng.uniform(-0.35, 0.35))
    tri = (1.0, float(rng.uniform(0.8, 1.05)))
    o = Obj(label, 0.0, 0.0, size, angle, _pick_colour(rng, bg_samples), tri=tri)
    hx, hy = o.half_extent()
    o.cx = float(rng.uniform(hx + 1, w - hx - 1))
    o.cy = float(rng.uniform(hy + 1, h - hy - 1))
    return o


def place_objects(rng: np.random.Generator, w: int, h: int, n: int, bg: np.ndarray) -> list:
    ys = rng.integers(0, h, 512)
    xs = rng.integers(0, w, 512)
    samples = bg[ys, xs].astype(np.float32)
    objs: list[Obj] = []
    tries = 0
    while len(objs) < n and tries < 200:
        tries += 1
        o = _new_object(rng, w, h, samples)
        if all(overlap(o.box(), p.box()) < MAX_OVERLAP * 0.5 for p in objs):
            objs.append(o)
    return objs


def render(bg: np.ndarray, objs: list) -> np.ndarray:
    im = Image.fromarray(bg)
    d = ImageDraw.Draw(im)
    for o in objs:
        o.draw(d)
    return np.asarray(im)


def ground_truth(objs: list) -> list:
    return [{"label": o.label, "box": [round(v, 3) for v in o.box()]} for o in objs]


def random_scene(rng: np.random.Generator, w: int, h: int, n: int | None = None,
                 kind: str | None = None):
    """One still frame: (uint8 HxWx3 RGB image, [{"label", "box"}])."""
    bg = make_background(rng, w, h, kind)
    if n is None:
        n = int(rng.integers(1, 6))
    objs = place_objects(rng, w, h, n, bg)
    return render(bg, objs), ground_truth(objs)


# --------------------------------------------------------------------------- clips

class Clip:
    """Objects moving at constant velocity over a fixed background, bouncing off the frame
    edges and off each other (so the overlap bound holds in every frame)."""

    def __init__(self, rng: np.random.Generator, w: int, h: int, n: int, kind: str | None = None,
                 speed=(1.5, 5.0)):
        self.w, self.h = w, h
        self.bg = make_background(rng, w, h, kind)
        self.objs = place_objects(rng, w, h, n, self.bg)
        for o in self.objs:
            a = rng.uniform(0, 2 * math.pi)
            s = rng.uniform(*speed)
            o.vx, o.vy = s * math.cos(a), s * math.sin(a)

    def frame(self):
        return render(self.bg, self.objs), ground_truth(self.objs)

    def step(self) -> None:
        old = [(o.cx, o.cy) for o in self.objs]
        for o in self.objs:
            hx, hy = o.half_extent()
            o.cx += o.vx
            o.cy += o.vy
            if o.cx - hx < 0 or o.cx + hx > self.w:
                o.vx = -o.vx
                o.cx = min(max(o.cx, hx), self.w - hx)
            if o.cy - hy < 0 or o.cy + hy > self.h:
                o.vy = -o.vy
                o.cy = min(max(o.cy, hy), self.h - hy)
        # collisions: both objects reverse and stay where they were (a valid configuration)
        for _ in range(len(self.objs) + 1):
            hit = False
            for i in range(len(self.objs)):
                for j in range(i + 1, len(self.objs)):
                    a, b = self.objs[i], self.objs[j]
                    if overlap(a.box(), b.box()) >= MAX_OVERLAP * 0.75:
                        hit = True
                        for k, o in ((i, a), (j, b)):
                            if (o.cx, o.cy) != old[k]:
                                o.vx, o.vy = -o.vx, -o.vy
                                o.cx, o.cy = old[k]
            if not hit:
                break

    def frames(self, count: int):
        for t in range(count):
            if t:
                self.step()
            yield self.frame()
