"""The letterbox of the exported graph, written directly in ONNX.

Antialiased resizing with sizes computed from the input shape does not survive
torch.export, so this small graph is built by hand and joined in front of the network
(writer.py, onnx.compose); with ``exclude_outside=1`` ONNX Runtime's antialiased Resize
matches torch's ``interpolate(antialias=True)`` to 1e-6.

One function per stage; tensors are named in the graph as in the comments.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto
from onnx import helper as oh

from ..config.export import OPSET
from ..preprocess import RECT_STRIDE
from .metadata import INPUT_NAME, LETTERBOX_PREFIX

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _const(name: str, value, dtype: int = F32) -> onnx.NodeProto:
    """A 1-D Constant node of one or several values."""
    vals = value if isinstance(value, (list, tuple)) else [value]
    return oh.make_node("Constant", [], [name], value=oh.make_tensor(name, dtype, [len(vals)], vals))


def _constants(size: int) -> list[onnx.NodeProto]:
    return [
        _const("c_size", float(size)),
        _const("c_size_i", size, I64),
        _const("c_one", 1.0),
        oh.make_node("Constant", [], ["c_inv255"], value=oh.make_tensor("c_inv255", F32, [], [1 / 255])),
        oh.make_node("Constant", [], ["c_zero_u8"], value=oh.make_tensor("c_zero_u8", TensorProto.UINT8, [], [0])),
        _const("c_zero_f", 0.0),
        _const("c_three", 3, I64),
        _const("c_i0", 0, I64),
        _const("c_i1", 1, I64),
        _const("c_i2", 2, I64),
        _const("c_i3", 3, I64),
    ]


def _scale_nodes() -> list[onnx.NodeProto]:
    """images -> n, hf, wf (the input's sides), scale = size / max(H, W), sizes (4,) =
    [N, 3, h_new, w_new] the resized shape."""
    nodes = [
        oh.make_node("Shape", [INPUT_NAME], ["shape"]),  # (4,) N, H, W, 3
        oh.make_node("Slice", ["shape", "c_i0", "c_i1"], ["n"]),
        oh.make_node("Slice", ["shape", "c_i1", "c_i2"], ["h"]),
        oh.make_node("Slice", ["shape", "c_i2", "c_i3"], ["w"]),
        oh.make_node("Cast", ["h"], ["hf"], to=F32),
        oh.make_node("Cast", ["w"], ["wf"], to=F32),
        oh.make_node("Max", ["hf", "wf"], ["longest"]),
        oh.make_node("Div", ["c_size", "longest"], ["scale"]),
    ]
    # round(H * size / max): Round is half-to-even like Python's round().
    for side in ("h", "w"):
        nodes += [
            oh.make_node("Mul", [f"{side}f", "c_size"], [f"{side}_s"]),
            oh.make_node("Div", [f"{side}_s", "longest"], [f"{side}_r"]),
            oh.make_node("Round", [f"{side}_r"], [f"{side}_rr"]),
            oh.make_node("Max", [f"{side}_rr", "c_one"], [f"{side}_new_f"]),
            oh.make_node("Cast", [f"{side}_new_f"], [f"{side}_new"], to=I64),
        ]
    return nodes + [oh.make_node("Concat", ["n", "c_three", "h_new", "w_new"], ["sizes"], axis=0)]


def _resize_nodes() -> list[onnx.NodeProto]:
    """images (N, H, W, 3) uint8 -> (N, 3, H, W) uint8 (a quarter of the bytes of a float
    transpose) -> float in [0, 1] by DequantizeLinear (x * 1/255: one vectorised pass for
    Cast and Div) -> resized to ``sizes`` -> clipped (N, 3, h_new, w_new)."""
    return [
        oh.make_node("Transpose", [INPUT_NAME], ["img_u8_nchw"], perm=[0, 3, 1, 2]),
        oh.make_node("DequantizeLinear", ["img_u8_nchw", "c_inv255", "c_zero_u8"], ["img_01"]),
        oh.make_node(
            "Resize",
            ["img_01", "", "", "sizes"],
            ["resized"],
            mode="linear",
            antialias=1,
            exclude_outside=1,
            coordinate_transformation_mode="half_pixel",
        ),
        oh.make_node("Clip", ["resized", "c_zero_f", "c_one"], ["clipped"]),
    ]


def _padded_side_nodes(rect: bool) -> list[onnx.NodeProto]:
    """h_out, w_out: the padded sides, the square's or (rect) each side rounded up to RECT_STRIDE."""
    if not rect:
        return [oh.make_node("Identity", ["c_size_i"], [f"{side}_out"]) for side in ("h", "w")]
    # padded side = ceil(new / stride) * stride, never above size (a multiple of stride)
    nodes = [_const("c_stride", RECT_STRIDE, I64), _const("c_stride_m1", RECT_STRIDE - 1, I64)]
    for side in ("h", "w"):
        nodes += [
            oh.make_node("Add", [f"{side}_new", "c_stride_m1"], [f"{side}_up"]),
            oh.make_node("Div", [f"{side}_up", "c_stride"], [f"{side}_cells"]),
            oh.make_node("Mul", [f"{side}_cells", "c_stride"], [f"{side}_out"]),
        ]
    return nodes


def _pad_nodes() -> list[onnx.NodeProto]:
    """clipped -> x (N, 3, h_out, w_out), zeros at the bottom and right; limits (4,) = [W, H, W, H]."""
    return [
        oh.make_node("Sub", ["h_out", "h_new"], ["pad_h"]),
        oh.make_node("Sub", ["w_out", "w_new"], ["pad_w"]),
        _const("c_pad_head", [0, 0, 0, 0, 0, 0], I64),
        oh.make_node("Concat", ["c_pad_head", "pad_h", "pad_w"], ["pads"], axis=0),  # begins then ends
        oh.make_node("Pad", ["clipped", "pads", "c_zero_f"], ["x"], mode="constant"),
        oh.make_node("Concat", ["wf", "hf", "wf", "hf"], ["limits"], axis=0),
    ]


def letterbox_graph(size: int, opset: int = OPSET, ir_version: int | None = None, rect: bool = False) -> onnx.ModelProto:
    """images uint8 (N, H, W, 3) -> x (N, 3, S_h, S_w) float in [0, 1], scale (1,), limits (4,).

    Mirrors preprocess.letterbox: scale = size / max(H, W), resize to round(H * scale) x
    round(W * scale) (antialiased bilinear, half-pixel centres, edge weights renormalised
    as torch does), pad bottom/right with zeros: to size x size, or with ``rect`` only up
    to the next multiple of RECT_STRIDE.
    """
    nodes = _constants(size) + _scale_nodes() + _resize_nodes() + _padded_side_nodes(rect) + _pad_nodes()
    graph = oh.make_graph(
        nodes,
        "letterbox",
        [oh.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", "height", "width", 3])],
        [
            oh.make_tensor_value_info("x", F32, ["batch", 3, "padded_height", "padded_width"] if rect else ["batch", 3, size, size]),
            oh.make_tensor_value_info("scale", F32, [1]),
            oh.make_tensor_value_info("limits", F32, [4]),
        ],
    )
    for i, node in enumerate(graph.node):
        node.name = f"{LETTERBOX_PREFIX}{i}_{node.op_type}"
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model
