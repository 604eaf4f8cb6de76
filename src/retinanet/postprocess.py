"""Raw outputs -> detections: per-level sigmoid, score threshold and top-k, decoding,
class-aware NMS (torchvision.ops.batched_nms) and boxes mapped to original pixels.

The whole batch is done with one NMS call: images and classes are both folded into the
``idxs`` argument of batched_nms, so boxes of different images never suppress each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import BoxCoder
from .config import PostprocessConfig


@dataclass
class Detections:
    """Detections of one image: boxes (D, 4) xyxy pixels, scores (D,), labels (D,) in 0..K-1."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.scores)


def select_candidates(
    cls_logits: Tensor, level_counts: list[int], topk: int, score_thresh: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k (anchor, class) pairs per level above the threshold.

    cls_logits (N, M, K) -> scores (N, C), anchor index (N, C), class (N, C), keep mask (N, C)
    with C = sum over levels of min(topk, M_l * K).
    """
    n, _, k = cls_logits.shape
    scores, anchor_idx, labels = [], [], []
    start = 0
    for count in level_counts:
        logits = cls_logits[:, start : start + count].reshape(n, -1)  # (N, M_l*K)
        top_logits, flat = logits.topk(min(topk, logits.shape[1]), dim=1)  # (N, k_l); sigmoid is monotonic
        scores.append(torch.sigmoid(top_logits))
        anchor_idx.append(flat // k + start)
        labels.append(flat % k)
        start += count
    scores_t = torch.cat(scores, 1)
    return scores_t, torch.cat(anchor_idx, 1), torch.cat(labels, 1), scores_t > score_thresh


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    level_counts: list[int],
    cfg: PostprocessConfig,
    box_coder: BoxCoder,
    scales: Tensor | None = None,
    orig_sizes: Tensor | None = None,
) -> list[Detections]:
    """cls_logits (N, M, K), box_deltas (N, M, 4), anchors (M, 4).

    scales (N,): input pixels per original pixel (letterbox resize factor); orig_sizes
    (N, 2) as (height, width): boxes are divided by the scale and clipped to the image.
    Without them, boxes stay in input pixels.
    """
    n = cls_logits.shape[0]
    scores, anchor_idx, labels, keep = select_candidates(cls_logits, level_counts, cfg.topk, cfg.score_thresh)
    deltas = torch.gather(box_deltas, 1, anchor_idx[..., None].expand(-1, -1, 4))  # (N, C, 4)
    boxes = box_coder.decode(deltas.float(), anchors[anchor_idx])  # (N, C, 4)

    image_idx = torch.arange(n, device=scores.device)[:, None].expand_as(scores)
    boxes, scores, labels, image_idx = boxes[keep], scores[keep], labels[keep], image_idx[keep]  # (D, ...)
    num_classes = cls_logits.shape[2]
    kept = batched_nms(boxes, scores, image_idx * num_classes + labels, cfg.nms_iou)  # sorted by score
    boxes, scores, labels, image_idx = boxes[kept], scores[kept], labels[kept], image_idx[kept]

    if scales is not None:
        boxes = boxes / scales.to(boxes)[image_idx, None]
    if orig_sizes is not None:
        hw = orig_sizes.to(boxes)[image_idx]  # (D, 2) as (H, W)
        limit = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
    out = []
    for i in range(n):  # split the already-sorted detections by image
        sel = (image_idx == i).nonzero().squeeze(1)[: cfg.max_detections]
        out.append(Detections(boxes[sel], scores[sel], labels[sel]))
    return out
