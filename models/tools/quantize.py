"""INT8 QDQ quantisation of an engineer's FP32 ONNX model, calibrated on real frames.

The calibration tensors are what vigil itself feeds the model: `vigil model calibration`
decodes clips (or a device's recordings) and writes each sampled frame pre-processed by the
bundle's own conventions, as raw little-endian float32 NCHW files. Every `--holdout`-th tensor
is kept out of calibration; `vigil model compare` then measures the INT8 model against the FP32
one on exactly those.

    python quantize.py --fp32 model.fp32.onnx --tensors calib/ --out model.int8.onnx \
        [--holdout 5] [--exclude NODE ...] [--method minmax|entropy|percentile]

Settings, and why: QDQ format with symmetric signed 8-bit activations and weights, per-channel
weights (what TensorRT's explicit quantisation builds INT8 engines from); biases stay FP32
(TensorRT's ONNX parser dequantises int8 only, not int32 biases). Nodes whose raw output feeds
an exponential (box-size heads) are better left in FP32 with --exclude.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import InferenceSession
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)


def calibration_files(tensors: Path, holdout: int) -> tuple[list[Path], list[Path]]:
    """(calibration, held back): every `holdout`-th file, in name order, is held back."""
    files = sorted(tensors.glob("*.f32"))
    if not files:
        raise SystemExit(f"{tensors} holds no .f32 tensors; make them with `vigil model calibration`")
    held = [f for i, f in enumerate(files) if holdout > 0 and i % holdout == holdout - 1]
    calib = [f for f in files if f not in held]
    return calib, held


class TensorReader(CalibrationDataReader):
    def __init__(self, files: list[Path], name: str, shape: list[int]):
        self.files, self.name, self.shape, self.pos = files, name, shape, 0
        want = int(np.prod(shape)) * 4
        for f in files:
            if f.stat().st_size != want:
                raise SystemExit(f"{f}: {f.stat().st_size} bytes; the model's input {shape} takes {want}")

    def get_next(self):
        if self.pos >= len(self.files):
            return None
        data = np.fromfile(self.files[self.pos], dtype="<f4").reshape(self.shape)
        self.pos += 1
        return {self.name: data}

    def rewind(self):
        self.pos = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", required=True, type=Path)
    ap.add_argument("--tensors", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--holdout", type=int, default=5, help="keep every Nth tensor out of calibration (0: none)")
    ap.add_argument("--exclude", nargs="*", default=[], help="node names left in FP32")
    ap.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    args = ap.parse_args()

    session = InferenceSession(str(args.fp32), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    if inp.type != "tensor(float)":
        raise SystemExit(f"input `{inp.name}` is {inp.type}; quantise the FP32 export (float32 input)")
    shape = [1 if not isinstance(d, int) or d < 0 else d for d in inp.shape]
    calib, held = calibration_files(args.tensors, args.holdout)
    if len(calib) < 16:
        print(f"warning: only {len(calib)} calibration tensors; a few hundred frames of the real scenes calibrate better")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[args.method]
    quantize_static(
        str(args.fp32), str(args.out), TensorReader(calib, inp.name, shape),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=method,
        nodes_to_exclude=args.exclude,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    ops: dict[str, int] = {}
    for n in onnx.load(str(args.out)).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print(f"wrote {args.out}: calibrated on {len(calib)} tensors, {len(held)} held back; "
          f"QuantizeLinear {ops.get('QuantizeLinear', 0)}, DequantizeLinear {ops.get('DequantizeLinear', 0)}")
    if held:
        print(f"next: vigil model compare --reference FP32_BUNDLE --candidate INT8_BUNDLE --tensors {args.tensors} "
              f"--holdout {args.holdout}")


if __name__ == "__main__":
    main()
