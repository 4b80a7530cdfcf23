"""Makes a copy of an ONNX model that takes and gives float16 tensors, as half-precision exports
do (Ultralytics `half=True`): a Cast to float32 after the input and a Cast to float16 before the
output; the layers in between are unchanged. vigil's tests use the copy of the shapes FP32 model
to check that a bundle with `dtype = "f16"` runs on ONNX Runtime and detects what the FP32
model detects.

    python half_io.py ../bundles/shapes-v1/model.fp32.onnx ../../tests/fixtures/shapes-fp32-half-io.onnx
"""

import sys

import onnx
from onnx import TensorProto, helper


def main(src: str, dst: str) -> None:
    model = onnx.load(src)
    graph = model.graph
    (inp,), (out,) = graph.input, graph.output
    inner_in, inner_out = inp.name + "_f32", out.name + "_f32"
    # The original graph reads and writes the renamed float32 tensors.
    for node in graph.node:
        node.input[:] = [inner_in if n == inp.name else n for n in node.input]
        node.output[:] = [inner_out if n == out.name else n for n in node.output]
    graph.node.insert(0, helper.make_node("Cast", [inp.name], [inner_in], to=TensorProto.FLOAT, name="in_to_f32"))
    graph.node.append(helper.make_node("Cast", [inner_out], [out.name], to=TensorProto.FLOAT16, name="out_to_f16"))
    inp.type.tensor_type.elem_type = TensorProto.FLOAT16
    out.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
