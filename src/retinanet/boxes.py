"""Box coder and the IoU helpers torchvision lacks (batched over images, intersection
over the area of the box covered). Boxes are xyxy in absolute pixels everywhere."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp() of a width/height delta is clamped so a bad prediction cannot overflow to inf
# (same bound as torchvision and Detectron: boxes at most 1000/16 times their anchor).
DELTA_CLAMP = math.log(1000.0 / 16)


def _size_centre(boxes: Tensor, min_size: float | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xyxy (..., 4) -> width, height, centre x, centre y (each (...)); sides clamped to min_size."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    if min_size is not None:
        w, h = w.clamp(min=min_size), h.clamp(min=min_size)
    return w, h, boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h


class BoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) offsets from anchors, each divided by ``weights``."""

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0), clamp: float = DELTA_CLAMP):
        self.weights = weights
        self.clamp = clamp

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """boxes, anchors (..., 4) xyxy -> deltas (..., 4)."""
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = _size_centre(anchors)
        bw, bh, bx, by = _size_centre(boxes, min_size=1e-6)
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """deltas (..., 4), anchors broadcastable (..., 4) -> boxes (..., 4) xyxy."""
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = _size_centre(anchors)
        cx = deltas[..., 0] / wx * aw + ax
        cy = deltas[..., 1] / wy * ah + ay
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * aw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * ah
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def _intersection(a: Tensor, b: Tensor) -> Tensor:
    """a (..., G, 4), b (M, 4) or (..., M, 4) -> intersection areas (..., G, M). One
    coordinate at a time, so every elementwise step runs over M contiguous values
    (vectorised), in place after the first."""
    ax1, ay1, ax2, ay2 = (a[..., :, None, i] for i in range(4))
    bx1, by1, bx2, by2 = (b[..., i].contiguous()[..., None, :] for i in range(4))
    w = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    h = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)
    return w.mul_(h)


def area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


# Elements an elementwise chain over a large tensor handles at a time on a CPU (a megabyte
# of float32 per intermediate): in slices this small its steps run in cache instead of
# making a trip through memory each. Used for the (N, G, M) IoU matrix here (same values,
# several times faster) and the focal loss's negative term (losses.py); BENCHMARKS.md.
CPU_CHUNK = 1 << 18


def _over_anchor_slices(fn, a: Tensor, b: Tensor) -> Tensor:
    """fn(a (..., G, 4), b (..., m, 4)) -> (..., G, m), computed over slices of b's M boxes on a CPU."""
    step = max(1, CPU_CHUNK // max(a.shape[:-1].numel(), 1))
    m = b.shape[-2]
    if a.device.type != "cpu" or step >= m:
        return fn(a, b)
    out = a.new_empty(torch.broadcast_shapes(a.shape[:-1], b.shape[:-2] + (1,)) + (m,))
    for j in range(0, m, step):
        out[..., j : j + step] = fn(a, b[..., j : j + step, :])
    return out


def _iou(a: Tensor, b: Tensor) -> Tensor:
    inter = _intersection(a, b)
    union = (area(a)[..., :, None] + area(b)[..., None, :]).sub_(inter).clamp_(min=1e-9)
    return inter.div_(union)


def _ioa(regions: Tensor, b: Tensor) -> Tensor:
    return _intersection(regions, b).div_(area(b)[..., None, :].clamp(min=1e-9))


def batched_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (N, G, 4) with every box of ``b`` (M, 4) -> (N, G, M); with
    ``b`` (N, M, 4), image n's boxes with its own M boxes.

    torchvision.ops.box_iou handles one image; this does the whole padded batch at once.
    """
    return _over_anchor_slices(_iou, a, b)


def batched_box_ioa(regions: Tensor, b: Tensor) -> Tensor:
    """Fraction of each box of ``b`` (M, 4) covered by each region (N, G, 4) -> (N, G, M)."""
    return _over_anchor_slices(_ioa, regions, b)
