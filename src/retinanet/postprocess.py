"""Raw outputs -> detections: per-level sigmoid, score threshold and top-k, decoding,
NMS (torchvision.ops.batched_nms) and boxes mapped to original pixels.

The whole batch is done with one NMS call: images and classes are both folded into the
``idxs`` argument of batched_nms, so boxes of different images never suppress each other.
NMS is per class (the paper); with ``cfg.agnostic`` only the image goes into ``idxs``, so
a box also suppresses overlapping boxes of the other classes.
"""

from __future__ import annotations

import math
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
    """(anchor, class) pairs above the threshold, at most ``topk`` per level and image.

    cls_logits (N, M, K) -> flat candidates: image index (C,), anchor index (C,), class (C,), score (C,).
    Thresholding comes first (on logits: sigmoid is monotonic), and the top-k sort runs
    only on a level where some image has more than ``topk`` candidates, as torchvision
    does; a sort over all M_l * K scores of P3 would otherwise dominate the latency.
    """
    n, _, k = cls_logits.shape
    p = min(max(score_thresh, 1e-12), 1 - 1e-7)
    logit_thresh = math.log(p / (1 - p))
    images, anchors, labels, scores = [], [], [], []
    start = 0
    for count in level_counts:
        logits = cls_logits[:, start : start + count].reshape(n, -1)  # (N, M_l*K)
        above = logits > logit_thresh
        if int(above.sum(dim=1).max()) > topk:
            top, flat = logits.topk(topk, dim=1)  # (N, topk)
            keep = top > logit_thresh
            img = torch.arange(n, device=logits.device)[:, None].expand_as(flat)[keep]
            flat, top = flat[keep], top[keep]
        else:
            img, flat = above.nonzero(as_tuple=True)
            top = logits[img, flat]
        images.append(img)
        anchors.append(flat // k + start)
        labels.append(flat % k)
        scores.append(torch.sigmoid(top))
        start += count
    return torch.cat(images), torch.cat(anchors), torch.cat(labels), torch.cat(scores)


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
    image_idx, anchor_idx, labels, scores = select_candidates(cls_logits, level_counts, cfg.topk, cfg.score_thresh)
    boxes = box_coder.decode(box_deltas[image_idx, anchor_idx].float(), anchors[anchor_idx])  # (C, 4)
    num_classes = cls_logits.shape[2]
    groups = image_idx if cfg.agnostic else image_idx * num_classes + labels
    kept = batched_nms(boxes, scores, groups, cfg.nms_iou)  # sorted by score
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


def postprocess_raw(
    cls_logits, box_deltas, anchors, meta: dict[str, str], scale: float, orig_hw: tuple[int, int], cfg: PostprocessConfig | None = None
) -> Detections:
    """One image's outputs of a network-only export (export/raw.py; numpy arrays or tensors:
    cls_logits (M, K) or (1, M, K), box_deltas (M, 4) or (1, M, 4), anchors (M, 4)) -> its
    detections in original pixels, decoded and suppressed exactly as the eager model does.
    ``meta``: the graph's metadata_props (level_counts, box_coder, thresholds); ``scale``:
    input pixels per original pixel (input size / longer side); ``orig_hw``: the image's
    (H, W); ``cfg``: thresholds other than the exported defaults."""
    import json

    if cfg is None:
        cfg = PostprocessConfig(score_thresh=float(meta["score_thresh"]), nms_iou=float(meta["nms_iou"]),
                                max_detections=int(meta["max_detections"]), topk=int(meta["topk"]),
                                agnostic=meta.get("agnostic", "false") == "true")  # fmt: skip
    coder = json.loads(meta["box_coder"])
    logits = torch.as_tensor(cls_logits).float().reshape(1, -1, cls_logits.shape[-1])  # (1, M, K)
    deltas = torch.as_tensor(box_deltas).float().reshape(1, -1, 4)  # (1, M, 4)
    (det,) = postprocess(
        logits, deltas, torch.as_tensor(anchors).float(), json.loads(meta["level_counts"]), cfg,
        BoxCoder(tuple(coder["weights"]), coder["clamp"]), torch.tensor([scale]), torch.tensor([orig_hw]),
    )  # fmt: skip
    return det
