"""Evaluation plots written to disk: precision-recall curves, precision / recall / F1
against the confidence threshold, confusion matrices, and images with ground truth and
predictions drawn side by side.

A module of plain functions: each takes arrays (numpy / torch) and a path and writes
one PNG. Figures come from figures.py (Agg canvas, user strings drawn literally); boxes are
drawn with draw.py, in the same class colours as predict's images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.nn import functional as F

from ..draw import class_color, draw_boxes, font_path
from ..figures import figure, literal_text, save_figure
from .coco import NO_GROUND_TRUTH

# Classes drawn with their own legend entry; above this the curves are drawn in grey.
MAX_LEGEND_CLASSES = 12
# Cell counts are written into the confusion matrix when it has at most this many rows.
MAX_ANNOTATED_CLASSES = 30
IGNORED_COLOR = (160, 160, 160)  # crowd / difficult regions
GAP_PX = 8  # between the two panels of a side-by-side image
HEADER_PX = 22  # caption strip above each panel


@literal_text
def plot_pr_curves(
    path: str | Path,
    recall: np.ndarray,
    curves: dict[str, np.ndarray],
    class_names: Sequence[str],
) -> Path:
    """One panel per entry of ``curves`` (title -> precision (K, R) over ``recall`` (R,)).

    Rows equal to NO_GROUND_TRUTH (classes absent from the ground truth) are skipped.
    Each panel shows every class (coloured with a legend for up to MAX_LEGEND_CLASSES
    classes, grey above) and the mean over classes in bold, labelled with its area
    under the curve (= COCO AP at that IoU, since pycocotools' precision is already
    interpolated on its 101 recall points).
    """
    recall = np.asarray(recall, dtype=float)
    fig = figure(figsize=(6 * len(curves), 5.5))
    axes = fig.subplots(1, len(curves), squeeze=False)
    for ax, (title, precision) in zip(axes[0], curves.items()):
        precision = np.asarray(precision, dtype=float)  # (K, R)
        if precision.shape != (len(class_names), len(recall)):
            raise ValueError(f"{title}: precision of shape {precision.shape}, expected {(len(class_names), len(recall))}")
        present = np.flatnonzero((precision > NO_GROUND_TRUTH).any(axis=1))
        legend = len(present) <= MAX_LEGEND_CLASSES
        for k in present:
            ap = precision[k].mean()
            if legend:
                ax.plot(recall, precision[k], lw=1.2, color=np.array(class_color(k)) / 255, label=f"{class_names[k]} {ap:.3f}")
            else:
                ax.plot(recall, precision[k], lw=0.6, color="0.7")
        if len(present):
            mean = precision[present].mean(axis=0)  # (R,)
            ax.plot(recall, mean, lw=2.5, color="tab:blue", label=f"all classes {mean.mean():.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


@literal_text
def plot_confidence_curve(
    path: str | Path,
    confidence: np.ndarray,
    per_class: np.ndarray,
    overall: np.ndarray,
    class_names: Sequence[str],
    ylabel: str,
    mark: tuple[float, float, str] | None = None,
) -> Path:
    """``ylabel`` (precision, recall or F1) against the confidence threshold: one line per
    class (``per_class`` (K, C) over ``confidence`` (C,); rows without a finite value are
    skipped; coloured with a legend up to MAX_LEGEND_CLASSES classes, grey above) and the
    all-classes curve ``overall`` (C,) in bold. ``mark``: (threshold, the all-classes value
    there, what chose it), drawn as a dashed line and a point."""
    confidence, per_class = np.asarray(confidence, float), np.asarray(per_class, float)
    if per_class.shape != (len(class_names), len(confidence)):
        raise ValueError(f"{ylabel}: curves of shape {per_class.shape}, expected {(len(class_names), len(confidence))}")
    fig = figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    present = [k for k in range(len(class_names)) if np.isfinite(per_class[k]).any()]
    legend = len(present) <= MAX_LEGEND_CLASSES
    for k in present:
        if legend:
            ax.plot(confidence, per_class[k], lw=1.2, color=np.array(class_color(k)) / 255, label=str(class_names[k]))
        else:
            ax.plot(confidence, per_class[k], lw=0.6, color="0.7")
    ax.plot(confidence, overall, lw=2.5, color="tab:blue", label="all classes")
    if mark is not None:
        t, value, chosen = mark
        ax.axvline(t, color="tab:red", ls="--", lw=1.2, label=f"threshold {t:.3f} ({chosen}): {ylabel} {value:.3f}")
        ax.plot([t], [value], "o", color="tab:red", ms=6)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel=ylabel, title=f"{ylabel} against confidence")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left" if ylabel != "precision" else "lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


@literal_text
def plot_confusion_matrix(
    path: str | Path,
    matrix: np.ndarray,
    class_names: Sequence[str],
    title: str = "confusion matrix",
    drop_empty: bool = True,
) -> Path:
    """matrix (K+1, K+1) of counts: rows ground truth, columns prediction, the last row and
    column 'background' (false positives / missed objects).

    Colours are row-normalised (each true class sums to 1), cells carry the counts for
    small matrices. With drop_empty, classes with no count in their row or column are
    left out so an 80-class matrix of a small dataset stays readable.
    """
    matrix = np.asarray(matrix)
    k1 = len(class_names) + 1
    if matrix.shape != (k1, k1):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {len(class_names)} classes + background")
    names = [*class_names, "background"]
    keep = np.arange(k1)
    if drop_empty:
        used = (matrix.sum(0) + matrix.sum(1)) > 0
        used[-1] = True  # the background row/column is always shown
        keep = np.flatnonzero(used)
    m = matrix[np.ix_(keep, keep)].astype(float)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(keep)
    side = min(5.5 + 0.3 * n, 30)
    fig = figure(figsize=(side, side * 0.85))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = [names[i] for i in keep]
    fontsize = 9 if n <= 40 else 7
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), ticks, fontsize=fontsize)
    ax.set(xlabel="predicted", ylabel="ground truth", title=title)
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=fontsize - 1,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_panel(
    image: Tensor, boxes: Tensor, labels: list[str], colors: list[tuple[int, int, int]], caption: str,
    scores: list[float] | None = None,
) -> Tensor:
    """(3, H, W) uint8 -> (3, HEADER_PX + H, W) uint8 with boxes (with ``scores``, the best on
    top) and a caption strip."""
    image = draw_boxes(image, boxes, labels, colors, scores=scores)
    strip = Image.new("RGB", (image.shape[-1], HEADER_PX), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 3), caption, fill=(0, 0, 0), font=ImageFont.truetype(font_path(), 14))
    header = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return torch.cat([header, image], dim=1)


def draw_side_by_side(
    image: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_ignore: Tensor,
    det_boxes: Tensor,
    det_scores: Tensor,
    det_labels: Tensor,
    class_names: Sequence[str],
    max_side: int = 640,
    score_thresh: float = 0.0,
) -> Tensor:
    """Ground truth (left) and predictions (right) on the same image.

    image (3, H, W) uint8; boxes (G, 4) / (D, 4) xyxy in its pixels; labels 0..K-1.
    Ignored ground truth (crowd / difficult) is drawn grey. The image is shrunk so its
    longer side is at most max_side. Returns (3, HEADER_PX + h, 2 w + GAP_PX) uint8.
    """
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected a (3, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    h, w = image.shape[-2:]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
        image = image.round().clamp(0, 255).to(torch.uint8)
    gt_boxes = gt_boxes.float().reshape(-1, 4) * scale
    det_boxes = det_boxes.float().reshape(-1, 4) * scale
    gt_text = [class_names[i] + (" (ignored)" if ig else "") for i, ig in zip(gt_labels.tolist(), gt_ignore.tolist())]
    gt_colors = [IGNORED_COLOR if ig else class_color(i) for i, ig in zip(gt_labels.tolist(), gt_ignore.tolist())]
    keep = det_scores >= score_thresh
    det_text = [f"{class_names[i]} {s:.2f}" for i, s in zip(det_labels[keep].tolist(), det_scores[keep].tolist())]
    det_colors = [class_color(i) for i in det_labels[keep].tolist()]
    left = _draw_panel(image, gt_boxes, gt_text, gt_colors, f"ground truth ({int((~gt_ignore).sum())})")
    right = _draw_panel(
        image, det_boxes[keep], det_text, det_colors, f"predictions >= {score_thresh:g} ({int(keep.sum())})",
        scores=det_scores[keep].tolist(),
    )
    gap = torch.full((3, left.shape[1], GAP_PX), 255, dtype=torch.uint8)
    return torch.cat([left, gap, right], dim=2)


def save_image(image: Tensor, path: str | Path) -> Path:
    """(3, H, W) uint8 tensor -> PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)  # (3, H, W) -> (H, W, 3)
    return path
