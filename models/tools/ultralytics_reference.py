"""The exporter's truth from the real Ultralytics package, fully offline.

Builds an *untrained* YOLOv8n / YOLO11n from the yaml that ships inside the `ultralytics` pip
package (no weights are downloaded), exports it to ONNX with Ultralytics' own exporter, and runs
Ultralytics' own predict pipeline (LetterBox, ONNX Runtime, NMS, scale_boxes) on that ONNX file.
The JSON it writes per picture is what `vigil model pack --expect` reads, so vigil's
pre-/post-processing can be compared with the exporter's on the same model and pictures.

    python ultralytics_reference.py pictures --out-dir OUT/pictures
    python ultralytics_reference.py export --arch yolov8n --imgsz 416 --out OUT/yolov8n-416.onnx \
        --labels OUT/labels.txt
    python ultralytics_reference.py predict --model OUT/yolov8n-416.onnx --out-dir OUT/json-416 \
        [--conf 0.25] [--iou 0.7] [--max-det 300] OUT/pictures/*.png

Needs: pip install ultralytics onnx onnxruntime (torch comes with ultralytics; PyPI's Linux torch
also pulls its CUDA wheels, ~3 GB, even on a CPU-only machine).

Why the model is not left as built. An untrained model is useless as a reference as it is: with
PyTorch's default init the activations vanish through ~70 layers, every anchor gets the same
class logits (all ties) and the head's prior bias log(5/nc/(640/s)^2) ~ -11.5 puts every score
near 1e-5, so nothing passes any sensible threshold. `export` therefore, deterministically:
  1. seeds torch (`--seed`) before building, so the weights are the same on every run;
  2. re-estimates every BatchNorm's running mean/variance (one train-mode pass, cumulative
     average) on three fixed pictures: ultralytics/assets/bus.jpg and zidane.jpg (they ship in
     the package) and frame 0 of models/clips/shapes-eval.mp4, each letterboxed to 640 the
     Ultralytics way, so each layer's activations are normalised and the logits vary with the
     picture's content; this step does not depend on --imgsz, so the 416 and 640 exports carry
     the same weights;
  3. sets the class bias of the head's last conv (model.model[-1].cv3[i][-1].bias) to
     `--class-bias`, so that a modest number of anchors score above 0.25.
The boxes mean nothing; they are deterministic and content-dependent, which is all a
comparison of two pipelines fed the same pixels needs.

Network: YOLO_OFFLINE=1 (skips Ultralytics' DNS online check at import) and YOLO_AUTOINSTALL=0
(no pip install from check_requirements) are set below unless already set; ONNX export is run
with simplify=False so onnxslim is not required.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")

ARCHS = ("yolov8n", "yolo11n")
REPO_CLIP = Path(__file__).resolve().parents[1] / "clips/shapes-eval.mp4"
# With --seed 3 (the default) these give 3-50 boxes at conf 0.25 on each `pictures` picture at
# imgsz 416 and 640 (measured with ultralytics 8.4.190, torch 2.15.0); other seeds gave up to 300.
DEFAULT_CLASS_BIAS = {"yolov8n": -4.0, "yolo11n": -4.5}

# name: (package asset, centre crop as width:height or None, output width, output height)
PICTURES = {
    "zidane-1280x720": ("zidane.jpg", None, 1280, 720),
    "zidane-800x450": ("zidane.jpg", None, 800, 450),
    "bus-450x800": ("bus.jpg", (9, 16), 450, 800),
    "zidane-640x272": ("zidane.jpg", (40, 17), 640, 272),
}


def _assets() -> Path:
    from ultralytics.utils import ASSETS

    return Path(ASSETS)


def _letterboxed_rgb01(bgr, size: int):
    """A BGR picture as Ultralytics' predictor feeds it: LetterBox (centre, pad 114), BGR->RGB, /255."""
    import torch
    from ultralytics.data.augment import LetterBox

    im = LetterBox(size)(image=bgr)[..., ::-1].copy()
    return torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255


def _clip_frame(clip: Path, index: int):
    import cv2

    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    if not ok:
        raise SystemExit(f"cannot read frame {index} of {clip}")
    return frame


def _calibration_pictures(clip: Path) -> list:
    """The BatchNorm calibration set, in a fixed order: bus.jpg, zidane.jpg, frame 0 of the clip."""
    import cv2

    if not clip.is_file():
        raise SystemExit(f"{clip} is missing: it is the third BatchNorm calibration picture (--calib-clip)")
    return [cv2.imread(str(_assets() / "bus.jpg")), cv2.imread(str(_assets() / "zidane.jpg")), _clip_frame(clip, 0)]


def cmd_pictures(args: argparse.Namespace) -> None:
    """Non-square PNG pictures (lossless, so no JPEG decoder can differ) from the package's photos,
    plus frame `--clip-frame` of `--clip` at its own size when that clip exists."""
    import cv2

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, (asset, crop, w, h) in PICTURES.items():
        im = cv2.imread(str(_assets() / asset))
        if crop is not None:
            ih, iw = im.shape[:2]
            cw, ch = crop
            if iw * ch > ih * cw:  # too wide: crop width
                nw = round(ih * cw / ch)
                x0 = (iw - nw) // 2
                im = im[:, x0 : x0 + nw]
            else:
                nh = round(iw * ch / cw)
                y0 = (ih - nh) // 2
                im = im[y0 : y0 + nh]
        if im.shape[:2] != (h, w):
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / f"{name}.png"), im)
        print(f"{out / name}.png {w}x{h}")
    clip = Path(args.clip)
    if clip.is_file():
        frame = _clip_frame(clip, args.clip_frame)
        h, w = frame.shape[:2]
        p = out / f"{clip.stem}-f{args.clip_frame}-{w}x{h}.png"
        cv2.imwrite(str(p), frame)
        print(f"{p} {w}x{h}")


def build_model(arch: str, nc: int, seed: int, class_bias: float, calib_clip: Path):
    """The untrained, deterministic YOLO object (see the module docstring for the three steps)."""
    import torch
    from torch import nn
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import ROOT, YAML

    torch.manual_seed(seed)
    yolo = YOLO(f"{arch}.yaml", task="detect")  # the yaml ships in the package: nothing is fetched
    if nc != yolo.model.yaml["nc"]:
        args = yolo.model.args
        torch.manual_seed(seed)
        yolo.model = DetectionModel({**yolo.model.yaml, "nc": nc}, nc=nc, verbose=False)
        yolo.model.args = args
    if nc == 80:
        names = YAML.load(ROOT / "cfg/datasets/coco.yaml")["names"]
    else:
        names = {i: f"class{i}" for i in range(nc)}
    yolo.model.names = dict(names)

    model = yolo.model
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    calib = torch.cat([_letterboxed_rgb01(im, 640) for im in _calibration_pictures(calib_clip)])
    model.train()
    with torch.no_grad():
        model(calib)
    model.eval()
    for seq in model.model[-1].cv3:
        seq[-1].bias.data.fill_(class_bias)
    return yolo


def cmd_export(args: argparse.Namespace) -> None:
    bias = args.class_bias if args.class_bias is not None else DEFAULT_CLASS_BIAS[args.arch]
    yolo = build_model(args.arch, args.nc, args.seed, bias, Path(args.calib_clip))
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:  # the exporter writes <yaml stem>.onnx in the cwd
        os.chdir(tmp)
        try:
            f = yolo.export(format="onnx", imgsz=args.imgsz, opset=args.opset, dynamic=False,
                            simplify=args.simplify, batch=1, nms=False, device="cpu")
        finally:
            os.chdir(cwd)
        shutil.move(str(Path(tmp) / f), out)
    names = yolo.model.names
    labels = [names[i] for i in range(len(names))]
    if args.labels:
        Path(args.labels).write_text("\n".join(labels) + "\n")
    import onnx

    import hashlib

    m = onnx.load(str(out))
    graph_sha = hashlib.sha256(m.graph.SerializeToString()).hexdigest()
    io = lambda vs: [(v.name, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]) for v in vs]
    print(f"wrote {out}: opset {m.opset_import[0].version}, inputs {io(m.graph.input)}, "
          f"outputs {io(m.graph.output)}; {len(labels)} labels" + (f" -> {args.labels}" if args.labels else ""))
    # The file's bytes differ per run only by the export date in its metadata; the graph does not.
    print(f"graph sha256 (metadata excluded): {graph_sha}")


def cmd_predict(args: argparse.Namespace) -> None:
    from ultralytics import YOLO

    model = YOLO(args.model, task="detect")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for pic in args.pictures:
        r = model.predict(pic, conf=args.conf, iou=args.iou, max_det=args.max_det, device="cpu",
                          agnostic_nms=args.agnostic, save=False, verbose=False)[0]
        xyxy = r.boxes.xyxy.cpu().numpy().tolist()
        conf = r.boxes.conf.cpu().numpy().tolist()
        cls = r.boxes.cls.cpu().numpy().astype(int).tolist()
        dets, dropped = [], 0
        for b, s, c in zip(xyxy, conf, cls):
            if not (b[2] > b[0] and b[3] > b[1]):  # clipped to nothing: the box lies in the padding
                dropped += 1
                continue
            dets.append({"label": r.names[c], "class_id": c, "score": s, "box": b})
        f = out / (Path(pic).stem + ".json")
        f.write_text(json.dumps(dets, indent=1) + "\n")
        h, w = r.orig_shape
        note = f" ({dropped} empty after clipping left out)" if dropped else ""
        print(f"{pic} {w}x{h}: {len(dets)} boxes{note}, {len({d['class_id'] for d in dets})} classes -> {f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("pictures", help="write the non-square test pictures (PNG)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--clip", default=str(REPO_CLIP))
    p.add_argument("--clip-frame", type=int, default=0)
    p.set_defaults(func=cmd_pictures)

    p = sub.add_parser("export", help="build the untrained model deterministically and export ONNX")
    p.add_argument("--arch", choices=ARCHS, default="yolov8n")
    p.add_argument("--imgsz", type=int, default=640, help="fixed square input size")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--labels", help="labels file to write, one per line in output order")
    p.add_argument("--nc", type=int, default=80, help="classes (80: COCO names, else class0..)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--class-bias", type=float, default=None,
                   help="bias of every class logit in the head's last conv (default: yolov8n -4.0, yolo11n -4.5)")
    p.add_argument("--calib-clip", default=str(REPO_CLIP),
                   help="clip whose frame 0 is the third BatchNorm calibration picture")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--simplify", action="store_true", help="run onnxslim (must be installed)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="Ultralytics predict on an ONNX file; one --expect JSON per picture")
    p.add_argument("--model", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS (default: per class)")
    p.add_argument("pictures", nargs="+")
    p.set_defaults(func=cmd_predict)

    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
