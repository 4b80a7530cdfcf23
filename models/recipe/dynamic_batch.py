"""Makes a copy of an ONNX model whose batch dimension is dynamic (`batch`), for models that are
all convolutions (no reshapes that fix the batch). vigil's tests use the copy of the shapes
INT8 model to check batched inference on ONNX Runtime against single-image runs.

    python dynamic_batch.py ../bundles/shapes-v1/model.int8.onnx ../../tests/fixtures/shapes-int8-dynbatch.onnx
"""

import sys

import onnx


def main(src: str, dst: str) -> None:
    model = onnx.load(src)
    shaping = [n.op_type for n in model.graph.node if n.op_type in ("Reshape", "Flatten", "Gemm")]
    if shaping:
        raise SystemExit(f"{src}: has {shaping}; their shapes would need the batch too")
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    # Intermediate shapes were inferred for batch 1; ONNX Runtime infers them again.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
