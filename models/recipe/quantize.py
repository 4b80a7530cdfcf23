"""INT8 QDQ quantisation of the FP32 model with ONNX Runtime's static quantiser:
symmetric signed 8-bit activations and weights, per-channel weights, calibrated on generated
scenes (CALIB_SEED; letterboxed like the deployed pipeline). Biases stay FP32, and so does the
1x1 output convolution (its input is quantised; its raw output feeds exp() in the box decode,
where an int8 step of ~0.15 would cost ~8 % of box size).

    python quantize.py [--fp32 ...model.fp32.onnx] [--out ...model.int8.onnx] [--images 256]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import letterbox  # noqa: E402
import scene  # noqa: E402

MODELS = HERE.parent
BUNDLE = MODELS / "bundles" / "shapes-v1"
CALIB_SEED = 4000
HEAD = "conv7"  # the 1x1 output convolution (see export.py)


class SceneReader(CalibrationDataReader):
    def __init__(self, count: int, seed: int = CALIB_SEED):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(count):
            w, h = scene.SOURCE_SIZES[i % len(scene.SOURCE_SIZES)]
            img, _ = scene.random_scene(rng, w, h)
            lb, _ = letterbox.letterbox(img)
            self.items.append({"images": letterbox.to_tensor(lb)})
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def rewind(self):
        self.pos = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", default=str(BUNDLE / "model.fp32.onnx"))
    ap.add_argument("--out", default=str(BUNDLE / "model.int8.onnx"))
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--quantize-head", action="store_true",
                    help="also quantise the output convolution (default: the 1x1 head stays FP32)")
    args = ap.parse_args()
    reader = SceneReader(args.images)
    quantize_static(
        args.fp32, args.out, reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=[] if args.quantize_head else [HEAD],
        # biases stay FP32: TensorRT's ONNX parser dequantizes int8 only (no int32 bias DQ);
        # ORT still fuses Conv into QLinearConv with float biases
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    m = onnx.load(args.out)
    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes); ops: {ops}")


if __name__ == "__main__":
    main()
