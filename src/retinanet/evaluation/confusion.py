"""The confusion matrix of a detector: ground-truth class against predicted class, with
a background row (false positives) and column (misses)."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from ..boxes import batched_box_ioa
from ..config.evaluation import EvalConfig
from ..data.dataset import Record
from ..postprocess import Detections


def _greedy_pairs(
    iou: np.ndarray, allowed: np.ndarray, thresh: float, gt_free: np.ndarray, det_free: np.ndarray
) -> Iterator[tuple[int, int]]:
    """Pairs (g, d) with IoU >= thresh, best IoU first, each box used once (marks them taken)."""
    g_idx, d_idx = np.nonzero(allowed & (iou >= thresh) & gt_free[:, None] & det_free[None, :])
    order = np.argsort(-iou[g_idx, d_idx], kind="stable")
    for g, d in zip(g_idx[order].tolist(), d_idx[order].tolist()):
        if gt_free[g] and det_free[d]:
            gt_free[g] = det_free[d] = False
            yield g, d


def _count_image(matrix: np.ndarray, rec: Record, det: Detections, conf: float, iou: float) -> None:
    """Add one image's matches, misses and false positives to ``matrix`` (K+1, K+1)."""
    bg = len(matrix) - 1
    keep = det.scores.detach().cpu() >= conf
    d_boxes = det.boxes.detach().cpu().float().reshape(-1, 4)[keep]  # (D, 4)
    d_labels = det.labels.detach().cpu().long()[keep].numpy()  # (D,)
    pos = ~rec.ignore
    g_boxes = torch.from_numpy(rec.boxes[pos]).float()  # (G, 4)
    g_labels = rec.labels[pos]  # (G,)
    ious = box_iou(g_boxes, d_boxes).numpy()  # (G, D)
    gt_free = np.ones(len(g_boxes), bool)
    det_free = np.ones(len(d_boxes), bool)
    same = g_labels[:, None] == d_labels[None, :]  # (G, D)
    for pairs_allowed in (same, np.ones_like(same)):  # same class first: the true positives
        for g, d in _greedy_pairs(ious, pairs_allowed, iou, gt_free, det_free):
            matrix[g_labels[g], d_labels[d]] += 1
    np.add.at(matrix, (g_labels[gt_free], bg), 1)
    unmatched = np.flatnonzero(det_free)
    if rec.ignore.any() and len(unmatched):
        regions = torch.from_numpy(rec.boxes[rec.ignore]).float()  # (I, 4)
        ioa = batched_box_ioa(regions[None], d_boxes[torch.from_numpy(unmatched)])[0]  # (I, U)
        unmatched = unmatched[(ioa < iou).all(dim=0).numpy()]
    np.add.at(matrix, (bg, d_labels[unmatched]), 1)


def confusion_matrix(
    records: Sequence[Record],
    detections: Sequence[Detections],
    num_classes: int,
    conf: float = EvalConfig.plot_conf,
    iou: float = EvalConfig.match_iou,
) -> np.ndarray:
    """(K+1, K+1) counts: rows ground-truth class, columns predicted class, index K background.

    Per image, detections with score >= conf are matched one to one to non-ignored
    ground truth at IoU >= iou, highest IoU first: first within the same class (the true
    positives), then across classes (the confusions). Unmatched ground truth counts in
    column K (missed), unmatched detections in row K (false positives) unless at least
    ``iou`` of the detection lies inside an ignored region (crowd / difficult), where it
    counts nowhere, as in COCOeval.
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for rec, det in zip(records, detections):
        _count_image(matrix, rec, det, conf, iou)
    return matrix
