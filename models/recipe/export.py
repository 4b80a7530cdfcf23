"""Builds the FP32 ONNX graph (opset 17) of the `shapes` detector from the trained weights
with onnx.helper: input `images` [1, 3, 320, 320] -> output `grid` [1, 8, 40, 40].

    python export.py [--weights models/work/weights.npz] [--out models/bundles/shapes-v1/model.fp32.onnx]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import net  # noqa: E402

MODELS = HERE.parent
BUNDLE = MODELS / "bundles" / "shapes-v1"


def build(weights: dict) -> onnx.ModelProto:
    nodes, inits = [], []
    x = "images"
    last = len(net.ARCH) - 1
    for i, (ci, co, k, s, d, relu) in enumerate(net.ARCH):
        w = np.ascontiguousarray(weights[f"w{i}"].transpose(3, 2, 0, 1), np.float32)  # HWIO -> OIHW
        b = np.ascontiguousarray(weights[f"b{i}"], np.float32)
        assert w.shape == (co, ci, k, k), (i, w.shape)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        pad = net.padding(k, d)
        y = "grid" if i == last else f"conv{i}"
        nodes.append(helper.make_node(
            "Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [y], name=f"conv{i}",
            kernel_shape=[k, k], strides=[s, s], dilations=[d, d], pads=[pad, pad, pad, pad], group=1))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"], name=f"relu{i}"))
            y = f"relu{i}"
        x = y
    g = net.GRID
    graph = helper.make_graph(
        nodes, "shapes",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, net.INPUT_SIZE, net.INPUT_SIZE])],
        [helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 5 + net.NUM_CLASSES, g, g])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="vigil-models-recipe", producer_version="1.0.0")
    model.ir_version = 8  # readable by ONNX Runtime >= 1.10 and TensorRT 8.6+/10.x parsers
    model.doc_string = ("vigil shapes detector v1: classes circle, square, triangle; "
                        "output vigil-grid-v1 (stride 8)")
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=str(MODELS / "work" / "weights.npz"))
    ap.add_argument("--out", default=str(BUNDLE / "model.fp32.onnx"))
    args = ap.parse_args()
    weights = dict(np.load(args.weights))
    model = build(weights)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    print(f"wrote {out} ({out.stat().st_size} bytes, {net.param_count()} parameters)")


if __name__ == "__main__":
    main()
