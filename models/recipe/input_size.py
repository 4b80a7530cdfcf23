"""Makes a copy of a fully convolutional ONNX model (no reshapes) for another input size: the
input's height and width are set, and the output grid follows the model's stride. vigil's tests
use the shapes INT8 model at 384×384 to check that a model update with a new input size re-plans
capture in the running service.

    python input_size.py ../bundles/shapes-v1/model.int8.onnx 384 ../../tests/fixtures/shapes-int8-384.onnx
"""

import sys

import onnx


def main(src: str, size: int, dst: str) -> None:
    model = onnx.load(src)
    shaping = [n.op_type for n in model.graph.node if n.op_type in ("Reshape", "Flatten", "Gemm")]
    if shaping:
        raise SystemExit(f"{src}: has {shaping}; their shapes would need the new size too")
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    old = dims[2].dim_value
    if dims[3].dim_value != old:
        raise SystemExit(f"{src}: the input is not square")
    for output in model.graph.output:
        out = output.type.tensor_type.shape.dim
        stride = old // out[2].dim_value
        if size % stride:
            raise SystemExit(f"{size} is not a multiple of the model's stride {stride}")
        out[2].dim_value = out[3].dim_value = size // stride
    dims[2].dim_value = dims[3].dim_value = size
    # Intermediate shapes were inferred for the old size; ONNX Runtime infers them again.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, dst)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
