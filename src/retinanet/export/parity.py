"""Parity of an exported model with eager PyTorch: the same detections on the same images.

Used by `retinanet export --verify` and the tests; it runs both through api.Detector
(which never imports this module).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.ops import box_iou

WORKING_CONF = 0.3  # parity_report also counts the detections at or above this score


def match_detections(a, b, iou_min: float = 0.9, px_tol: float = 0.5) -> tuple[float, float]:
    """Two Results of one image -> (fraction of a's detections that b has with the same
    label, at IoU >= iou_min or with every coordinate within px_tol pixels, largest
    coordinate difference among those pairs in pixels). The pixel rule covers boxes
    clipped to zero area at an image edge, whose IoU with anything is 0. Greedy, closest
    first; an empty ``a`` counts as fully matched when ``b`` is empty too."""
    if len(a) == 0:
        return (1.0 if len(b) == 0 else 0.0), 0.0
    if len(b) == 0:
        return 0.0, float("inf")
    ba, bb = torch.from_numpy(a.boxes).float(), torch.from_numpy(b.boxes).float()
    diff = (ba[:, None, :] - bb[None, :, :]).abs().amax(dim=2)  # (Da, Db)
    ok = (box_iou(ba, bb) >= iou_min) | (diff <= px_tol)
    ok &= torch.from_numpy(a.labels)[:, None] == torch.from_numpy(b.labels)[None, :]
    diff = diff.masked_fill(~ok, float("inf"))
    matched, worst = 0, 0.0
    for i in range(len(a)):
        j = int(diff[i].argmin())
        if torch.isfinite(diff[i, j]):
            matched += 1
            worst = max(worst, float(diff[i, j]))
            diff[:, j] = float("inf")  # each detection of b matches once
    return matched / len(a), worst


def parity_report(model: nn.Module, onnx_path: str | Path, images: list, conf: float | None = None) -> dict[str, float]:
    """Eager PyTorch vs an exported model (.onnx in ONNX Runtime, .xml in OpenVINO, .tflite in LiteRT) on the
    same images: the fraction of eager detections the export reproduces (all of them, and those scoring at least WORKING_CONF, the
    ones a user acts on) and the largest box coordinate difference among matches, in pixels."""
    import copy

    from ..api import Detector

    ort_det = Detector(onnx_path, conf=conf)
    rect = ort_det.backend.meta.get("rect", "false") == "true"
    if bool(model.cfg.rect) != rect:  # eager letterboxes as the export does (a square-only one: the full square)
        model = copy.deepcopy(model)
        model.cfg.rect = rect
    eager = Detector(model, conf=conf)
    ra, rb = eager.predict(list(images)), ort_det.predict(list(images))
    matched = matched_working = count = count_working = 0
    worst = 0.0
    for a, b in zip(ra, rb):
        f, w = match_detections(a, b)
        matched += f * len(a)
        count += len(a)
        worst = max(worst, w) if len(a) else worst
        strong = a.scores >= WORKING_CONF
        if strong.any():
            sub = type(a)(a.boxes[strong], a.scores[strong], a.labels[strong], [], a.image_size)
            fs, _ = match_detections(sub, b)
            matched_working += fs * int(strong.sum())
            count_working += int(strong.sum())
    return {
        "images": len(ra),
        "detections": count,
        "matched": matched / count if count else 1.0,
        "detections_working": count_working,
        "matched_working": matched_working / count_working if count_working else 1.0,
        "max_box_diff": worst,
    }
