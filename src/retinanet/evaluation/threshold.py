"""One confidence threshold for a detector: the score that maximises F1 over all classes.

Detections are matched to ground truth as COCO matches them at one IoU: per image and
class, detections in order of score each take the unmatched ground-truth box they overlap
most, at IoU >= ``iou``. A detection that matches no box but lies on an ignore region of
its class (COCO iscrowd, VOC difficult; overlap measured as the share of the detection
inside the region, as COCO does for crowds) counts neither way, like the region itself.

Then every detection of the dataset is ranked by score: keeping those at or above a score
gives TP true positives among D kept detections, and F1 = 2 TP / (D + G) with G the
ground-truth boxes (2PR / (P + R) written in counts). The threshold is the score with the
highest F1 (the higher score on a tie), placed halfway to the next lower score, so every
kept detection passes whether a runtime compares with > or >=.

Pure numpy: ``f1_threshold`` takes plain arrays; ``threshold_on`` adapts a dataset's
records and a model's detections to it. ``confidence_curves`` gives, from the same matching,
precision, recall and F1 against the confidence threshold, per class and over all classes
(the curves the evaluation plots, the all-classes F1 peaking at the threshold above).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DetArrays = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One image's detections: boxes (D, 4) xyxy, scores (D,), labels (D,)."""
GtArrays = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One image's ground truth: boxes (G, 4) xyxy, labels (G,), ignore flags (G,)."""


@dataclass
class F1Threshold:
    threshold: float | None
    """Keep detections scoring above this; None when no detection matched a box."""
    f1: float
    precision: float
    recall: float
    kept: int
    """Detections at or above the threshold (ignored ones left out)."""
    boxes: int
    """Ground-truth boxes (ignore regions left out)."""
    iou: float


def _iou(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """(A, B) IoU of xyxy boxes; with ``crowd``, intersection over the area of ``a``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] if crowd else area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_image(det: DetArrays, gt: GtArrays, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One image: each counted detection's score and whether it is a true positive (ignored
    detections are left out of both)."""
    scores, tp, _ = match_image_labels(det, gt, iou)
    return scores, tp


def match_image_labels(det: DetArrays, gt: GtArrays, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``match_image`` with each counted detection's class label as a third array."""
    boxes, scores, labels = (np.asarray(x) for x in det)
    g_boxes, g_labels, g_ignore = (np.asarray(x) for x in gt)
    boxes, g_boxes = boxes.reshape(-1, 4).astype(np.float64), g_boxes.reshape(-1, 4).astype(np.float64)
    g_ignore = g_ignore.astype(bool)
    out_scores, out_tp, out_labels = [], [], []
    for k in np.unique(labels):
        d = np.flatnonzero(labels == k)
        d = d[np.argsort(-scores[d], kind="stable")]
        real = np.flatnonzero((g_labels == k) & ~g_ignore)
        regions = np.flatnonzero((g_labels == k) & g_ignore)
        ious = _iou(boxes[d], g_boxes[real])  # (D_k, G_k)
        inside = _iou(boxes[d], g_boxes[regions], crowd=True).max(axis=1, initial=0.0)  # (D_k,)
        free = np.ones(len(real), bool)
        for i in range(len(d)):
            cand = np.where(free & (ious[i] >= iou), ious[i], -1.0)
            if len(cand) and cand.max() >= 0:
                free[int(cand.argmax())] = False
                out_scores.append(scores[d[i]])
                out_tp.append(True)
                out_labels.append(k)
            elif inside[i] < iou:
                out_scores.append(scores[d[i]])
                out_tp.append(False)
                out_labels.append(k)
    return np.asarray(out_scores, np.float64), np.asarray(out_tp, bool), np.asarray(out_labels, np.int64)


def f1_threshold(
    detections: Sequence[DetArrays], ground_truth: Sequence[GtArrays], iou: float = 0.5, floor: float = 0.0
) -> F1Threshold:
    """The confidence threshold with the best F1 over all classes and images (module doc).
    ``floor``: the lowest score a detection could have (the threshold the detections were
    made with), the lower end of the last gap."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
    scores, tps, boxes = [np.zeros(0)], [np.zeros(0, bool)], 0
    for det, gt in zip(detections, ground_truth):
        s, tp = match_image(det, gt, iou)
        scores.append(s)
        tps.append(tp)
        boxes += int((~np.asarray(gt[2], bool)).sum())
    score, tp = np.concatenate(scores), np.concatenate(tps)
    order = np.argsort(-score, kind="stable")
    score, tp = score[order], tp[order]
    if boxes == 0 or not tp.any():
        return F1Threshold(None, 0.0, 0.0, 0.0, 0, boxes, iou)
    true = np.cumsum(tp)
    kept = np.arange(1, len(score) + 1)
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True))  # last index of each score
    f1 = 2 * true[ends] / (kept[ends] + boxes)
    best = ends[int(np.argmax(f1))]
    below = score[best + 1] if best + 1 < len(score) else floor
    t, n = int(true[best]), int(kept[best])
    return F1Threshold(float((score[best] + below) / 2), 2 * t / (n + boxes), t / n, t / boxes, n, boxes, iou)


def _arrays(records: Sequence, detections: Sequence) -> tuple[list[DetArrays], list[GtArrays]]:
    """A dataset's records and one Detections per record as the arrays of this module."""
    dets = [(d.boxes.detach().cpu().numpy(), d.scores.detach().cpu().numpy(), d.labels.detach().cpu().numpy()) for d in detections]
    return dets, [(r.boxes, r.labels, r.ignore) for r in records]


def threshold_on(records: Sequence, detections: Sequence, iou: float = 0.5, floor: float = 0.0) -> F1Threshold:
    """``f1_threshold`` of a dataset's records (boxes, labels, ignore) and one Detections per
    record (labels in the dataset's 0..K-1, boxes in original pixels)."""
    return f1_threshold(*_arrays(records, detections), iou, floor)


# ----------------------------------------------------------------------------- curves


@dataclass
class ConfidenceCurves:
    """Precision, recall and F1 of the detections kept at each ``confidence`` (kept: score >=
    the confidence), per class (K, C) and over all classes pooled (C,), counted as
    ``f1_threshold`` counts them. NaN where a value is undefined: precision with nothing
    kept, recall and F1 of a class without boxes."""

    confidence: np.ndarray
    """(C,) from 0 to 1."""
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    all_precision: np.ndarray
    all_recall: np.ndarray
    all_f1: np.ndarray
    boxes: np.ndarray
    """(K,) ground-truth boxes per class (ignore regions left out)."""
    iou: float


def _kept_counts(scores: np.ndarray, tp: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) detections with score >= each confidence, and the true positives among them."""
    order = np.argsort(scores, kind="stable")
    s, t = scores[order], tp[order].astype(np.int64)
    first = np.searchsorted(s, confidence, side="left")  # (C,) the first kept, in ascending order
    true_from = np.append(np.cumsum(t[::-1])[::-1], 0)  # true positives at index >= i
    return len(s) - first, true_from[first]


def _rates(kept: np.ndarray, true: np.ndarray, boxes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (each (C,)) from counts at each confidence."""
    precision = np.where(kept > 0, true / np.maximum(kept, 1), np.nan)
    if boxes == 0:
        nan = np.full(len(kept), np.nan)
        return precision, nan, nan
    return precision, true / boxes, 2 * true / (kept + boxes)


def confidence_curves(
    detections: Sequence[DetArrays],
    ground_truth: Sequence[GtArrays],
    num_classes: int,
    iou: float = 0.5,
    points: int = 1001,
    marks: Sequence[float] = (),
) -> ConfidenceCurves:
    """Precision, recall and F1 against the confidence threshold at ``points`` confidences
    from 0 to 1 and at each of ``marks`` (a threshold to read the curves at exactly),
    matched as ``f1_threshold`` matches (module doc)."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
    matched = [match_image_labels(d, g, iou) for d, g in zip(detections, ground_truth)]
    scores = np.concatenate([np.zeros(0), *(m[0] for m in matched)])
    tp = np.concatenate([np.zeros(0, bool), *(m[1] for m in matched)])
    labels = np.concatenate([np.zeros(0, np.int64), *(m[2] for m in matched)])
    real = [np.asarray(g[1])[~np.asarray(g[2], bool)].astype(np.int64) for g in ground_truth]
    boxes = np.bincount(np.concatenate([np.zeros(0, np.int64), *real]), minlength=num_classes)[:num_classes]
    confidence = np.union1d(np.linspace(0.0, 1.0, points), np.asarray(marks, np.float64))
    per_class = [_rates(*_kept_counts(scores[labels == k], tp[labels == k], confidence), int(boxes[k])) for k in range(num_classes)]
    p, r, f = (np.stack([c[i] for c in per_class]) if per_class else np.zeros((0, points)) for i in range(3))
    all_p, all_r, all_f = _rates(*_kept_counts(scores, tp, confidence), int(boxes.sum()))
    return ConfidenceCurves(confidence, p, r, f, all_p, all_r, all_f, boxes, iou)


def curves_on(records: Sequence, detections: Sequence, num_classes: int, iou: float = 0.5, marks: Sequence[float] = ()) -> ConfidenceCurves:
    """``confidence_curves`` of a dataset's records and one Detections per record."""
    return confidence_curves(*_arrays(records, detections), num_classes, iou, marks=marks)
