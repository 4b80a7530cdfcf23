"""Trains the `shapes` detector (JAX on CPU) on procedurally generated scenes.

Every batch is generated from its own seed (TRAIN_SEED, step), so a run is a pure function
of the seeds and the step count. A single worker process generates batches ahead of the
optimiser, in order. Convolutions train with batch norm, folded into the conv weights at
the end. Weights go to models/work/weights.npz (w{i} HWIO, b{i}; JAX layout).

    python train.py [--steps N] [--batch B]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import io
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import decode  # noqa: E402
import letterbox  # noqa: E402
import net  # noqa: E402
import scene  # noqa: E402

WORK = HERE.parent / "work"
TRAIN_SEED = 1000       # batches: default_rng([TRAIN_SEED, step])
VAL_SEED = 2000         # validation scenes
INIT_SEED = 3000        # weight initialisation (jax.random.PRNGKey)
G = net.GRID
S = net.STRIDE


# --------------------------------------------------------------------------- data

def _source_size(rng):
    if rng.random() < 0.8:
        return scene.SOURCE_SIZES[int(rng.integers(len(scene.SOURCE_SIZES)))]
    return int(rng.integers(320, 961)), int(rng.integers(240, 721))


def _augment(rng, img: np.ndarray) -> np.ndarray:
    """Degradations seen after a video codec / camera: blur, noise, JPEG (4:2:0 chroma)."""
    im = None
    if rng.random() < 0.2:
        im = Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.2))))
        img = np.asarray(im)
    if rng.random() < 0.3:
        img = np.clip(img + rng.normal(0, rng.uniform(1, 6), img.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(25, 95)))
        img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return img


NEIGHBOUR_MARGIN = 0.3  # centre within this fraction of a cell from a border: see _targets


def _targets(gts, scale, px, py):
    """Per-cell targets. obj: 1 = the cell holding an object's centre (positive), 0 = background,
    -1 = a neighbour cell across a nearby border (centre within NEIGHBOUR_MARGIN of a cell):
    its objectness is not penalised (it sees the same object), and it learns the box with the
    centre clamped into its own cell, so it can only produce a near-duplicate that NMS removes."""
    obj = np.zeros((G, G), np.float32)
    box = np.zeros((G, G, 4), np.float32)
    cls = np.zeros((G, G), np.int32)
    area = np.zeros((G, G), np.float32)
    items = []
    for g in gts:
        b = letterbox.box_to_input(g["box"], scale, px, py)
        cx, cy = (b[0] + b[2]) / 2 / S, (b[1] + b[3]) / 2 / S
        w, h = b[2] - b[0], b[3] - b[1]
        gx, gy = min(G - 1, int(cx)), min(G - 1, int(cy))
        items.append((cx, cy, w, h, gx, gy, scene.LABELS.index(g["label"])))
    for cx, cy, w, h, gx, gy, c in items:
        if obj[gy, gx] and area[gy, gx] >= w * h:  # two centres in one cell: keep the larger
            continue
        obj[gy, gx] = 1
        area[gy, gx] = w * h
        box[gy, gx] = [cx - gx, cy - gy, math.log(w / S), math.log(h / S)]
        cls[gy, gx] = c
    for cx, cy, w, h, gx, gy, c in items:
        fx, fy = cx - gx, cy - gy
        dxs = [0] + ([-1] if fx < NEIGHBOUR_MARGIN else [1] if fx > 1 - NEIGHBOUR_MARGIN else [])
        dys = [0] + ([-1] if fy < NEIGHBOUR_MARGIN else [1] if fy > 1 - NEIGHBOUR_MARGIN else [])
        for dy in dys:
            for dx in dxs:
                nx, ny = gx + dx, gy + dy
                if (dx == 0 and dy == 0) or not (0 <= nx < G and 0 <= ny < G) or obj[ny, nx] != 0:
                    continue
                obj[ny, nx] = -1
                box[ny, nx] = [min(0.98, max(0.02, cx - nx)), min(0.98, max(0.02, cy - ny)),
                               math.log(w / S), math.log(h / S)]
                cls[ny, nx] = c
    return obj, box, cls


def make_sample(rng, augment=True, w=None, h=None):
    if w is None:
        w, h = _source_size(rng)
    img, gts = scene.random_scene(rng, w, h)
    if augment:
        img = _augment(rng, img)
        r = rng.random()
        method = ("bilinear" if r < 0.4 else "bilinear2tap" if r < 0.7 else
                  "box" if r < 0.8 else "nearest" if r < 0.9 else "bicubic")
    else:
        method = "bilinear"
    lb, (scale, px, py) = letterbox.letterbox(img, method=method)
    return lb, gts, (scale, px, py)


def make_batch(step: int, batch: int):
    rng = np.random.default_rng([TRAIN_SEED, step])
    xs, objs, boxes, clss = [], [], [], []
    for _ in range(batch):
        lb, gts, lbp = make_sample(rng)
        o, b, c = _targets(gts, *lbp)
        xs.append(lb), objs.append(o), boxes.append(b), clss.append(c)
    return np.stack(xs), np.stack(objs), np.stack(boxes), np.stack(clss)


def _worker(q, start, steps, batch):
    for step in range(start, steps):
        q.put((step, make_batch(step, batch)))


def make_val(n=96):
    rng = np.random.default_rng(VAL_SEED)
    out = []
    for i in range(n):
        w, h = scene.SOURCE_SIZES[i % len(scene.SOURCE_SIZES)]
        img, gts = scene.random_scene(rng, w, h)
        img = _augment(rng, img)
        lb, lbp = letterbox.letterbox(img)
        out.append((lb, [{"label": g["label"], "box": letterbox.box_to_input(g["box"], *lbp)} for g in gts]))
    return out


# --------------------------------------------------------------------------- model

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default=str(WORK / "weights.npz"))
    args = ap.parse_args()

    # start the data worker before JAX spins up its threads (fork safety)
    ctx = mp.get_context("fork")
    q = ctx.Queue(maxsize=6)
    worker = ctx.Process(target=_worker, args=(q, 0, args.steps, args.batch), daemon=True)
    worker.start()

    import jax
    import jax.numpy as jnp
    import optax

    BN_EPS = 1e-5
    BN_MOMENTUM = 0.97

    def init(key):
        ps, bs = [], []
        for ci, co, k, _, _, relu in net.ARCH:
            key, sk = jax.random.split(key)
            std = math.sqrt(2.0 / (k * k * ci)) if relu else 0.01
            w = jax.random.normal(sk, (k, k, ci, co), jnp.float32) * std
            if relu:  # conv + batch norm + ReLU; the norm folds into the conv at the end
                ps.append({"w": w, "gamma": jnp.ones((co,)), "beta": jnp.zeros((co,))})
                bs.append({"mean": jnp.zeros((co,)), "var": jnp.ones((co,))})
            else:     # head: conv + bias, objectness prior ~2 %
                ps.append({"w": w, "b": jnp.zeros((co,), jnp.float32).at[0].set(-4.0)})
                bs.append({})
        return ps, bs

    def conv(x, w, s, d, k):
        pad = net.padding(k, d)
        return jax.lax.conv_general_dilated(
            x, w, (s, s), ((pad, pad), (pad, pad)), rhs_dilation=(d, d),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def forward_train(ps, bs, x):
        new_bs = []
        for p, b, (_, _, k, s, d, relu) in zip(ps, bs, net.ARCH):
            x = conv(x, p["w"], s, d, k)
            if relu:
                m = x.mean((0, 1, 2))
                v = x.var((0, 1, 2))
                x = jax.nn.relu((x - m) * jax.lax.rsqrt(v + BN_EPS) * p["gamma"] + p["beta"])
                new_bs.append({"mean": BN_MOMENTUM * b["mean"] + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(m),
                               "var": BN_MOMENTUM * b["var"] + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(v)})
            else:
                x = x + p["b"]
                new_bs.append({})
        return x, new_bs

    def fold(ps, bs):
        """Batch norm folded into each conv: [(w HWIO, b)] as the exported graph computes it."""
        out = []
        for p, b, (_, _, _, _, _, relu) in zip(ps, bs, net.ARCH):
            if relu:
                f = p["gamma"] * jax.lax.rsqrt(b["var"] + BN_EPS)
                out.append((p["w"] * f, p["beta"] - b["mean"] * f))
            else:
                out.append((p["w"], p["b"]))
        return out

    def forward(folded, x):
        for (w, b), (_, _, k, s, d, relu) in zip(folded, net.ARCH):
            x = conv(x, w, s, d, k) + b
            if relu:
                x = jax.nn.relu(x)
        return x

    def bce(logit, target):
        return jnp.maximum(logit, 0) - logit * target + jnp.log1p(jnp.exp(-jnp.abs(logit)))

    def loss_fn(ps, bs, x, obj, box, cls):
        t, new_bs = forward_train(ps, bs, x)
        pos = (obj > 0).astype(jnp.float32)
        neg = (obj == 0).astype(jnp.float32)
        reg = pos + 0.5 * (obj < 0)   # regression/class weight: positives, and neighbours at half
        npos = jnp.maximum(pos.sum(), 1.0)
        l_obj = (bce(t[..., 0], pos) * (pos + neg)).sum() / npos
        l_xy = ((bce(t[..., 1], box[..., 0]) + bce(t[..., 2], box[..., 1])) * reg).sum() / npos
        dwh = jnp.abs(t[..., 3:5] - box[..., 2:4])
        l_wh = (jnp.where(dwh < 0.1, 5 * dwh ** 2, dwh - 0.05).sum(-1) * reg).sum() / npos
        onehot = jax.nn.one_hot(cls, net.NUM_CLASSES)
        l_cls = (bce(t[..., 5:], onehot).sum(-1) * reg).sum() / npos
        total = l_obj + l_xy + 2.0 * l_wh + l_cls
        return total, ((l_obj, l_xy, l_wh, l_cls), new_bs)

    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10), args.steps, args.lr * 0.02)
    opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(sched, weight_decay=1e-4))

    @jax.jit
    def train_step(ps, bs, st, x, obj, box, cls):
        x = x.astype(jnp.float32) / 255.0
        (l, (parts, bs)), g = jax.value_and_grad(loss_fn, has_aux=True)(ps, bs, x, obj, box, cls)
        upd, st = opt.update(g, st, ps)
        return optax.apply_updates(ps, upd), bs, st, l, parts

    @jax.jit
    def predict(folded, x):
        return forward(folded, x.astype(jnp.float32) / 255.0)

    def validate(ps, bs, val):
        ps = fold(ps, bs)
        tp = fp = fn = 0
        for i in range(0, len(val), 16):
            chunk = val[i:i + 16]
            out = np.asarray(predict(ps, jnp.asarray(np.stack([c[0] for c in chunk]))))
            for o, (_, gts) in zip(out, chunk):
                dets = decode.nms(decode.decode(o.transpose(2, 0, 1)[None]))
                a, b, c = decode.match(dets, gts)
                tp, fp, fn = tp + a, fp + b, fn + c
        return tp / max(1, tp + fp), tp / max(1, tp + fn)

    print(f"params: {net.param_count()}  steps: {args.steps}  batch: {args.batch}", flush=True)
    val = make_val()
    ps, bs = init(jax.random.PRNGKey(INIT_SEED))
    st = opt.init(ps)

    t0 = time.time()
    acc = np.zeros(5)
    for step in range(args.steps):
        got, (x, obj, box, cls) = q.get()
        assert got == step
        ps, bs, st, l, parts = train_step(ps, bs, st, x, obj, box, cls)
        acc += np.array([float(l)] + [float(p) for p in parts])
        if (step + 1) % 50 == 0:
            a = acc / 50
            acc[:] = 0
            el = time.time() - t0
            print(f"step {step + 1:5d}/{args.steps} loss {a[0]:.3f} (obj {a[1]:.3f} xy {a[2]:.3f} "
                  f"wh {a[3]:.3f} cls {a[4]:.3f})  {el:.0f}s, eta {el / (step + 1) * (args.steps - step - 1):.0f}s",
                  flush=True)
        if (step + 1) % 500 == 0 or step + 1 == args.steps:
            p, r = validate(ps, bs, val)
            print(f"  val precision {p:.4f} recall {r:.4f}", flush=True)
    worker.join()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (w, b) in enumerate(fold(ps, bs)):
        arrays[f"w{i}"] = np.asarray(w, np.float32)
        arrays[f"b{i}"] = np.asarray(b, np.float32)
    np.savez(out, **arrays)
    print(f"saved {out} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
