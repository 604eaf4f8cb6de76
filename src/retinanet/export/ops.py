"""Custom torch ops of the exported graph and their ONNX translations.

NMS is a torch custom op (``retinanet::nms``) whose eager implementation follows the ONNX
NonMaxSuppression contract, so the graph runs eagerly and the exporter maps it to that
one ONNX op. ``retinanet::index_div`` (anchors.index_div) lowers to one integer Div.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .. import anchors  # noqa: F401  registers retinanet::index_div, translated below


@torch.library.custom_op("retinanet::nms", mutates_args=())
def onnx_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: Tensor, score_threshold: Tensor) -> Tensor:
    """ONNX NonMaxSuppression, in torch: boxes (N, C, 4) xyxy, scores (N, K, C).

    Returns selected (S, 3) int64 rows [image, class, box]: per image and class the boxes
    with score > score_threshold that survive greedy NMS at iou_threshold, at most
    max_per_class of them, best first.
    """
    rows = []
    for i in range(boxes.shape[0]):
        cls, idx = (scores[i] > score_threshold).nonzero(as_tuple=True)  # (P,), (P,)
        s = scores[i, cls, idx]
        kept = batched_nms(boxes[i, idx].float(), s.float(), cls, float(iou_threshold))  # sorted by score
        cls, idx = cls[kept], idx[kept]
        # At most max_per_class per class: rank of each kept box within its class.
        same = cls[:, None] == cls[None, :]  # (P', P')
        rank = torch.tril(same.long(), diagonal=-1).sum(1)
        sel = rank < max_per_class
        rows.append(torch.stack([torch.full_like(idx[sel], i), cls[sel], idx[sel]], dim=1))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.int64, device=boxes.device)
    return torch.cat(rows).to(torch.int64)


@onnx_nms.register_fake
def _(boxes, scores, max_per_class, iou_threshold, score_threshold):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n, 3), dtype=torch.int64)


def _nms_to_onnx(boxes, scores, max_per_class: int, iou_threshold, score_threshold):
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes, scores, op.Constant(value_ints=[max_per_class]), iou_threshold, score_threshold, center_point_box=0
    )


def _index_div_to_onnx(index, divisor):
    from onnxscript import opset18 as op

    if isinstance(divisor, int):
        divisor = op.Constant(value_int=divisor)
    return op.Div(index, op.CastLike(divisor, index))


def onnx_translations() -> dict[object, Callable]:
    """torch.onnx.export's custom_translation_table for the package's custom ops."""
    return {
        torch.ops.retinanet.nms.default: _nms_to_onnx,
        torch.ops.retinanet.index_div.default: _index_div_to_onnx,
    }
