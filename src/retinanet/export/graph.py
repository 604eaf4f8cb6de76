"""The exported network: letterboxed image -> final detections, as a torch module.

    x (N, 3, H, W) float in [0, 1] (made by the ONNX letterbox, letterbox.py)
      -> network (backbone, FPN, head; each level's batch norm folded into its own conv copy)
      -> per-level top-k of class logits (on a level with many anchors, over the best
         anchors' rows only: best_anchor_candidates), sigmoid, box decoding of those candidates only
         (their anchors computed from their indices: AnchorGenerator.anchors_at)
      -> class-aware NMS (ONNX NonMaxSuppression, one class with shifted boxes), best
         ``max_detections`` per image
      -> boxes divided by the letterbox scale and clipped to the image
    outputs: boxes (N, D, 4) float xyxy image pixels, scores (N, D), labels (N, D) int64
             (PAD_LABEL past the count), num_detections (N,) int64

The same code runs eagerly (tests compare it with RetinaNet.predict) and is exported.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..anchors import index_div
from ..boxes import BoxCoder
from ..config import PostprocessConfig
from ..data.labels import PAD_LABEL
from ..preprocess import RECT_STRIDE
from .ops import onnx_nms


def level_candidates(logits: Tensor, top_k: int, pad: int, row: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``top_k`` best pairs of one level, with a static shape.

    logits (N, P), pair index i * row + j (here anchor * K + class) -> scores (N, top_k),
    i (N, top_k), j (N, top_k).
    With ``pad`` the level may have fewer than top_k pairs (a small rectangular input):
    ``pad`` lowest-float logits are appended and, if picked, come out as score -1 (never a
    detection) at index 0.

    postprocess.select_candidates thresholds first and sorts only crowded levels, which
    needs data-dependent shapes; taking the top-k first and leaving the threshold to NMS's
    score_threshold keeps the same candidates (those above the threshold among each
    level's best topk).
    """
    pairs = logits.shape[1]
    if pad:
        # The lowest float rather than -inf: int8 calibration computes a range for every tensor.
        logits = torch.cat([logits, logits.new_full((logits.shape[0], pad), torch.finfo(logits.dtype).min)], 1)
    top, flat = logits.topk(top_k, dim=1)  # sigmoid is monotonic
    scores = torch.sigmoid(top)
    if pad:
        real = flat < pairs
        scores, flat = torch.where(real, scores, -1.0), torch.where(real, flat, 0)
    i = index_div(flat, row)
    return scores, i, flat - i * row


def best_anchor_candidates(logits: Tensor, top_k: int, row: int) -> tuple[Tensor, Tensor, Tensor]:
    """level_candidates of a level with at least ``top_k`` anchors: the same pairs, up to
    the order of ties, from logits (N, P) of pair index anchor * row + class.

    The best top_k pairs all lie on the top_k anchors whose best class scores highest (an
    anchor outside them has top_k anchors above it, each with a pair above all of its
    own). So a max over the classes ranks the anchors and the final top-k runs over those
    anchors' ``row`` scores only, not over every pair (P3 at 320 x 256 px: 921,600).
    """
    n = logits.shape[0]
    per_anchor = logits.reshape(n, -1, row)  # (N, A, K)
    anchors = per_anchor.amax(dim=2).topk(top_k, dim=1)[1]  # (N, top_k)
    rows = torch.gather(per_anchor, 1, anchors[..., None].expand(-1, -1, row))  # (N, top_k, K)
    top, flat = rows.reshape(n, -1).topk(top_k, dim=1)  # sigmoid is monotonic
    i = index_div(flat, row)
    return torch.sigmoid(top), torch.gather(anchors, 1, i), flat - i * row


def class_aware_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, max_out: int, iou_threshold: Tensor, score_threshold: Tensor
) -> Tensor:
    """ONNX NonMaxSuppression over candidates of several classes: boxes (N, C, 4), scores
    and labels (N, C) -> selected (S, 3) rows [image, 0, candidate].

    One-class NMS with each class's boxes shifted by label * (extent + 1), so classes never
    overlap (torchvision's batched_nms coordinate trick); an (N, K, C) score tensor for
    ONNX's class axis would be K times larger and its NMS scans every class's row. The
    extent is taken over the candidates above the threshold only, those NMS sees (as
    eager's batched_nms does): a huge low-score box would make the shift so large that
    float32 loses the small boxes' IoU. Finite stand-ins rather than inf, because int8
    calibration takes every tensor's range.
    """
    live, big = scores > score_threshold, torch.finfo(boxes.dtype).max  # (N, C)
    # Each box's own extremes first: the masks then select (N, C) values, not (N, C, 4).
    lo = torch.where(live, boxes.amin(2), big).amin(1)[:, None, None]  # (N, 1, 1)
    hi = torch.where(live, boxes.amax(2), -big).amax(1)[:, None, None]
    extent = torch.where(hi >= lo, hi - lo, 0.0)  # 0 when nothing passes (NMS keeps nothing)
    shifted = boxes + labels[..., None].to(boxes.dtype) * (extent + 1)
    return onnx_nms(shifted, scores[:, None, :], max_out, iou_threshold, score_threshold)


def _stem_conv(backbone: nn.Module) -> nn.Conv2d | None:
    """The backbone's first conv, when it is a plain conv over the 3 image channels."""
    stages = getattr(backbone, "stages", None)
    first = next((m for m in stages[0].modules() if isinstance(m, nn.Conv2d)), None) if stages else None
    if first is None or first.in_channels != 3 or first.groups != 1 or first.padding_mode != "zeros":
        return None
    return first


class DetectionGraph(nn.Module):
    """Letterboxed image -> final detections, with fixed-size padded outputs.

    forward(x (N, 3, H, W) float in [0, 1] as the letterbox makes it: with ``rect`` H and W
    multiples of 32, the longer one equal to ``input_size`` (the static top-k sizes assume
    it: the smallest input is 32 x input_size); else both ``input_size``), scale (1,),
    limits (4,) = [W, H, W, H],
    score_threshold (1,), iou_threshold (1,)) -> boxes (N, D, 4), scores (N, D),
    labels (N, D), num_detections (N,). The same code runs eagerly and is exported.

    Only the candidates are decoded: each level's top-k pairs pick their deltas and their
    anchors (computed from the index, AnchorGenerator.anchors_at), so no anchor grid and
    no concatenation of the full class map is ever built, and nothing depends on the
    input's size except through the feature maps' widths.
    """

    def __init__(self, model: nn.Module, input_size: int, post: PostprocessConfig, fold_bn: bool = True, rect: bool = False):
        super().__init__()
        model = copy.deepcopy(model).eval().cpu()  # the caller's model keeps its weights, device and mode
        if fold_bn:
            model.fuse(channels_last=False)
        self.backbone, self.fpn, self.head = model.backbone, model.fpn, model.head
        self.num_classes = model.num_classes
        self.box_coder = BoxCoder(model.box_coder.weights, model.box_coder.clamp)
        self.anchor_generator = gen = model.anchor_generator
        # Static top-k sizes: a level keeps min(topk, pairs of the largest input); with a
        # rectangular input the smallest one (RECT_STRIDE x input_size) may have fewer,
        # and is padded up to that.
        k = model.num_classes
        largest = gen((input_size, input_size))[1]
        smallest = gen((RECT_STRIDE, input_size))[1] if rect else largest
        self.level_k = [min(post.topk, c * k) for c in largest]
        self.level_pad = [max(0, top - c * k) for top, c in zip(self.level_k, smallest)]
        self.level_narrow = [c >= top for top, c in zip(self.level_k, smallest)]  # best_anchor_candidates applies
        # Output rows D: max_detections, unless fewer candidates exist at all (tiny inputs).
        self.rows = min(post.max_detections, sum(self.level_k))
        self.register_buffer("mean", model.mean.clone(), persistent=False)
        # The division by std folded into the stem conv: conv(W, (x - m) / s) = conv(W / s,
        # x - m) exactly, as the conv's zero padding stays zero. One pass over the image
        # fewer (ONNX Runtime's int8 graph runs it channels-last, at 0.3 ms).
        self.std_folded = False
        stem = _stem_conv(self.backbone)
        if fold_bn and stem is not None:
            with torch.no_grad():
                stem.weight.div_(model.std.reshape(1, -1, 1, 1))
            self.std_folded = True
        else:
            self.register_buffer("std", model.std.clone(), persistent=False)

    def forward(
        self, x: Tensor, scale: Tensor, limits: Tensor, score_threshold: Tensor, iou_threshold: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = x.shape[0]
        x = x - self.mean
        feats = self.fpn(self.backbone(x if self.std_folded else x / self.std))
        level_scores, level_labels, level_deltas, level_anchors = [], [], [], []
        for level, (f, (cls_map, box_map)) in enumerate(zip(feats, self.head.level_maps(feats))):
            # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A*K): pair index anchor * K + class
            logits = cls_map.permute(0, 2, 3, 1).reshape(n, -1)
            if self.level_narrow[level]:
                scores, anchor, labels = best_anchor_candidates(logits, self.level_k[level], self.num_classes)
            else:
                scores, anchor, labels = level_candidates(logits, self.level_k[level], self.level_pad[level], self.num_classes)
            deltas = box_map.permute(0, 2, 3, 1).reshape(n, -1, 4)  # (N, A*4, H, W) -> (N, H*W*A, 4)
            level_deltas.append(torch.gather(deltas, 1, anchor[..., None].expand(-1, -1, 4)))  # (N, k_l, 4)
            level_anchors.append(self.anchor_generator.anchors_at(level, anchor, f.shape[3]))  # (N, k_l, 4)
            level_scores.append(scores)
            level_labels.append(labels)
        scores, labels = torch.cat(level_scores, 1), torch.cat(level_labels, 1)  # (N, C)
        boxes = self.box_coder.decode(torch.cat(level_deltas, 1), torch.cat(level_anchors, 1))  # (N, C, 4)

        d = self.rows
        selected = class_aware_nms(boxes, scores, labels, d, iou_threshold, score_threshold)  # (S, 3) [image, 0, box]

        # Best d survivors per image, without trusting the NMS output order: mark the
        # survivors in a dense (N, C) score map (others -1) and take its top d.
        kept = torch.full_like(scores, -1.0)
        kept = kept.index_put((selected[:, 0], selected[:, 2]), scores[selected[:, 0], selected[:, 2]])
        top_scores, top_idx = kept.topk(d, dim=1)  # (N, D), best first
        valid = top_scores >= 0  # (N, D)
        out_boxes = torch.gather(boxes, 1, top_idx[..., None].expand(-1, -1, 4)) / scale  # (N, D, 4)
        out_boxes = torch.minimum(out_boxes.clamp(min=0), limits) * valid[..., None]
        out_scores = top_scores * valid
        out_labels = torch.where(valid, torch.gather(labels, 1, top_idx), PAD_LABEL)
        return out_boxes, out_scores, out_labels, valid.sum(1)
