"""Architecture of the `shapes` detector, shared by train.py (JAX) and export.py (ONNX).

A plain stack of 3x3 convolutions with ReLU (stride 8 overall; two dilated convolutions at
the end widen the receptive field to ~135 input pixels), then a 1x1 convolution head with
5 + C raw outputs per cell (vigil-grid-v1).
"""
NUM_CLASSES = 3
STRIDE = 8
INPUT_SIZE = 320
GRID = INPUT_SIZE // STRIDE

# (in_channels, out_channels, kernel, stride, dilation, relu)
ARCH = [
    (3, 16, 3, 2, 1, True),     # 160x160
    (16, 32, 3, 2, 1, True),    # 80x80
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, 2, 1, True),    # 40x40
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 2, True),
    (64, 64, 3, 1, 4, True),
    (64, 5 + NUM_CLASSES, 1, 1, 1, False),  # head: raw grid
]


def padding(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) // 2


def param_count() -> int:
    return sum(ci * co * k * k + co for ci, co, k, _, _, _ in ARCH)
