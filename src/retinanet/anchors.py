"""Anchor grids: A = len(scales) * len(ratios) anchors at every position of every level.

Order of the flattened anchors (and of the heads' outputs): level, then row y, then
column x, then anchor a (scale-major over ratios), i.e. index ((y * W + x) * A + a) within
a level. torchvision's AnchorGenerator works on ImageLists and rounds its base anchors;
ours is keyed by feature sizes, exact and cached. ``anchors_at`` computes the anchors of
given indices with the same float operations, which the ONNX export uses for its
candidates (no grid, so the graph's input size can vary).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import AnchorConfig, ModelConfig


@torch.library.custom_op("retinanet::index_div", mutates_args=())
def index_div(index: Tensor, divisor: int) -> Tensor:
    """index // divisor for non-negative int64 indices: there floor and truncating division
    agree, so ONNX export lowers this to one integer Div (export/ops.py), where torch.onnx's
    generic floor division emits a dozen sign-correcting nodes (and ``%`` of a symbolic
    size does not export at all)."""
    return torch.div(index, divisor, rounding_mode="floor")


@index_div.register_fake
def _(index, divisor):
    return torch.empty_like(index)


class AnchorGenerator:
    def __init__(
        self,
        sizes: tuple[float, ...],
        scales: tuple[float, ...],
        ratios: tuple[float, ...],
        strides: tuple[int, ...],
    ):
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} anchor sizes for {len(strides)} pyramid levels")
        if any(r <= 0 for r in ratios) or any(s <= 0 for s in scales) or any(s <= 0 for s in sizes):
            raise ValueError("anchor sizes, scales and ratios must be positive")
        self.sizes, self.scales, self.ratios, self.strides = tuple(sizes), tuple(scales), tuple(ratios), tuple(strides)
        self.num_anchors = len(scales) * len(ratios)
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    def cell_anchors(self, level: int) -> Tensor:
        """(A, 4) anchors centred on (0, 0) for one level, xyxy; ratio = height / width."""
        rows = []
        for s in self.scales:
            for r in self.ratios:
                side = self.sizes[level] * s
                w, h = side / math.sqrt(r), side * math.sqrt(r)
                rows.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(rows, dtype=torch.float32)

    def anchors_at(self, level: int, index: Tensor, width) -> Tensor:
        """Anchors (..., 4) at flat per-level indices ``index`` (...,) = (y * W + x) * A + a on
        a level ``width`` = W cells wide: the grid's own values (same float operations), for
        the few candidates a detector keeps instead of the whole grid. ``width`` may be a
        symbolic size (ONNX export with a rectangular input)."""
        cell = index_div(index, self.num_anchors)
        a = index - cell * self.num_anchors
        stride = self.strides[level]
        row = index_div(cell, width)
        col = cell - row * width
        cx = (col.to(torch.float32) + 0.5) * stride
        cy = (row.to(torch.float32) + 0.5) * stride
        return torch.stack([cx, cy, cx, cy], dim=-1) + self.cell_anchors(level).to(index.device)[a]

    def feature_sizes(self, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature map size of each level. Every downsampling in the network is a stride-2
        conv with 'same' padding, so a map at stride s has ceil(H / s) rows."""
        h, w = image_hw
        return [(-(-h // s), -(-w // s)) for s in self.strides]

    def __call__(self, image_hw: tuple[int, int], device: torch.device | str = "cpu") -> tuple[Tensor, list[int]]:
        """Anchors (sum_l H_l*W_l*A, 4) in input pixels, and the count per level."""
        key = (int(image_hw[0]), int(image_hw[1]), str(device))
        if key not in self._cache:
            per_level = []
            for level, ((fh, fw), stride) in enumerate(zip(self.feature_sizes(key[:2]), self.strides)):
                # Centres at the middle of each cell: (x + 0.5) * stride.
                ys = (torch.arange(fh, dtype=torch.float32) + 0.5) * stride
                xs = (torch.arange(fw, dtype=torch.float32) + 0.5) * stride
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")
                centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (HW, 1, 4)
                per_level.append((centres + self.cell_anchors(level)[None]).reshape(-1, 4))  # (HW*A, 4)
            self._cache[key] = (torch.cat(per_level).to(device), [len(a) for a in per_level])
        return self._cache[key]


def anchors_for(cfg: ModelConfig, anchors: AnchorConfig | None = None) -> AnchorGenerator:
    """The anchor generator of a model config (levels min_level..max_level, stride 2^level),
    with ``anchors`` in place of ``cfg.anchors`` when given (anchor fitting tries candidates)."""
    a = anchors if anchors is not None else cfg.anchors
    levels = range(cfg.fpn.min_level, cfg.fpn.max_level + 1)
    if len(a.sizes) != len(levels):
        raise ValueError(
            f"model.anchors.sizes has {len(a.sizes)} entries for {len(levels)} levels P{cfg.fpn.min_level}..P{cfg.fpn.max_level}"
        )
    return AnchorGenerator(tuple(a.sizes), tuple(a.scales), tuple(a.ratios), tuple(2**lv for lv in levels))

