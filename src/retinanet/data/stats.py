"""Dataset statistics: counts per class, image sizes, box size and aspect histograms,
as numbers (``DatasetStats``), text and a four-panel plot. ``validate`` fills them in a
DataReport; they describe the dataset that training would use (after dropping)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DetectionDataset
from ..figures import figure, literal_text, save_figure

# Histogram bins. Box size is sqrt(area) in pixels; COCO's small/medium/large split at 32 and 96.
SIZE_EDGES = (0.0, 8.0, 16.0, 32.0, 64.0, 96.0, 128.0, 256.0, 512.0, math.inf)
ASPECT_EDGES = (0.0, 1 / 8, 1 / 4, 1 / 2, 1 / math.sqrt(2), math.sqrt(2), 2.0, 4.0, 8.0, math.inf)  # height / width
COCO_SMALL, COCO_MEDIUM = 32.0**2, 96.0**2
PLOT_MAX_CLASSES = 40  # more bars than this are unreadable in the class panel
HISTOGRAM_WIDTH = 40  # characters of the longest text bar


@dataclass
class DatasetStats:
    images: int = 0
    boxes: int = 0
    """Boxes to detect (not ignored)."""
    ignored: int = 0
    """Crowd / difficult boxes."""
    class_names: list[str] = field(default_factory=list)
    boxes_per_class: list[int] = field(default_factory=list)
    images_per_class: list[int] = field(default_factory=list)
    images_without_boxes: int = 0
    image_modes: dict[str, int] = field(default_factory=dict)
    """PIL mode of the stored pixels (all become RGB when read); empty when images were not opened."""
    exif_rotated: int = 0
    image_width: tuple[int, int, int] = (0, 0, 0)
    """min, median, max"""
    image_height: tuple[int, int, int] = (0, 0, 0)
    size_counts: list[int] = field(default_factory=list)
    """Boxes per SIZE_EDGES bin of sqrt(area) in pixels."""
    aspect_counts: list[int] = field(default_factory=list)
    """Boxes per ASPECT_EDGES bin of height / width."""
    coco_buckets: tuple[int, int, int] = (0, 0, 0)
    """Boxes with area < 32^2, < 96^2, larger (COCO's small / medium / large)."""
    box_wh: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    """(B, 2) width and height of every non-ignored box in pixels."""

    @property
    def classes_used(self) -> int:
        return sum(1 for n in self.boxes_per_class if n > 0)


def _spread(v: np.ndarray) -> tuple[int, int, int]:
    return int(v.min()), int(np.median(v)), int(v.max())


def dataset_stats(dataset: DetectionDataset, modes: Counter | None = None, exif_rotated: int = 0) -> DatasetStats:
    """Statistics of ``dataset``'s non-ignored boxes; ``modes`` (PIL mode -> images) and
    ``exif_rotated`` come from the image check, which is the only step that opens images."""
    k = dataset.num_classes
    boxes_per_class = np.zeros(k, np.int64)
    images_per_class = np.zeros(k, np.int64)
    wh: list[np.ndarray] = []
    areas: list[np.ndarray] = []
    empty = 0
    ignored = 0
    for r in dataset.records:
        keep = ~r.ignore
        labels = r.labels[keep]
        ignored += int(r.ignore.sum())
        if len(labels) == 0:
            empty += 1
        np.add.at(boxes_per_class, labels, 1)
        images_per_class[np.unique(labels)] += 1
        b = r.boxes[keep].astype(np.float64)  # (G, 4) xyxy
        wh.append(np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1))  # (G, 2)
        areas.append(r.areas[keep] if r.areas is not None else wh[-1][:, 0] * wh[-1][:, 1])
    box_wh = np.concatenate(wh) if wh else np.zeros((0, 2))  # (B, 2)
    area = np.concatenate(areas) if areas else np.zeros(0)  # (B,)
    side = np.sqrt(box_wh[:, 0] * box_wh[:, 1])
    aspect = box_wh[:, 1] / np.maximum(box_wh[:, 0], 1e-9)
    widths = np.array([r.width for r in dataset.records]) if dataset.records else np.zeros(1, int)
    heights = np.array([r.height for r in dataset.records]) if dataset.records else np.zeros(1, int)
    return DatasetStats(
        images=len(dataset.records),
        boxes=int(boxes_per_class.sum()),
        ignored=ignored,
        class_names=list(dataset.class_names),
        boxes_per_class=boxes_per_class.tolist(),
        images_per_class=images_per_class.tolist(),
        images_without_boxes=empty,
        image_modes=dict(sorted((modes or Counter()).items())),
        exif_rotated=exif_rotated,
        image_width=_spread(widths),
        image_height=_spread(heights),
        size_counts=np.histogram(side, SIZE_EDGES)[0].tolist(),
        aspect_counts=np.histogram(aspect, ASPECT_EDGES)[0].tolist(),
        coco_buckets=(
            int((area < COCO_SMALL).sum()),
            int(((area >= COCO_SMALL) & (area < COCO_MEDIUM)).sum()),
            int((area >= COCO_MEDIUM).sum()),
        ),
        box_wh=box_wh.astype(np.float32),
    )


def stats_dict(s: DatasetStats) -> dict[str, Any]:
    """JSON-ready statistics (problems.json); infinite bin edges become null."""
    return {
        "images": s.images,
        "boxes": s.boxes,
        "ignored": s.ignored,
        "images_without_boxes": s.images_without_boxes,
        "classes": {n: c for n, c in zip(s.class_names, s.boxes_per_class)},
        "image_modes": s.image_modes,
        "exif_rotated": s.exif_rotated,
        "size_edges": [e if math.isfinite(e) else None for e in SIZE_EDGES],
        "size_counts": s.size_counts,
        "aspect_edges": [e if math.isfinite(e) else None for e in ASPECT_EDGES],
        "aspect_counts": s.aspect_counts,
        "coco_small_medium_large": list(s.coco_buckets),
    }


# ----------------------------------------------------------------------------- text


def _edge(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    if 0 < v < 1:
        return f"1/{1 / v:.3g}"
    return f"{v:.3g}"


def histogram_text(title: str, edges: tuple[float, ...], counts: list[int], width: int = HISTOGRAM_WIDTH) -> list[str]:
    """A title line, then one line per bin: its edges, its count and a bar of '#'."""
    lines = [title]
    peak = max(counts) if counts and max(counts) > 0 else 1
    for lo, hi, n in zip(edges[:-1], edges[1:], counts):
        bar = "#" * round(width * n / peak)
        lines.append(f"  {_edge(lo):>6s} - {_edge(hi):<6s} {n:7d}  {bar}")
    return lines


def stats_text(s: DatasetStats) -> list[str]:
    """The statistics as report lines: totals, per-class counts, size buckets, histograms."""
    lines = [
        f"images {s.images}   boxes {s.boxes} (+{s.ignored} ignored crowd/difficult)   "
        f"images without boxes {s.images_without_boxes}",
        f"classes {len(s.class_names)} defined, {s.classes_used} used",
        f"image width min/median/max {s.image_width[0]}/{s.image_width[1]}/{s.image_width[2]}   "
        f"height {s.image_height[0]}/{s.image_height[1]}/{s.image_height[2]}",
    ]
    if s.image_modes:
        modes = ", ".join(f"{m} {n}" for m, n in s.image_modes.items())
        lines.append(f"image modes {modes} (all read as RGB)   EXIF-rotated {s.exif_rotated}")
    lines.append("boxes per class (images):")
    for name, n, m in sorted(zip(s.class_names, s.boxes_per_class, s.images_per_class), key=lambda t: -t[1]):
        lines.append(f"  {name:>20s} {n:7d} ({m})")
    small, medium, large = s.coco_buckets
    lines.append(f"COCO size buckets: small {small}, medium {medium}, large {large}")
    lines += histogram_text("box size sqrt(w*h) in pixels:", SIZE_EDGES, s.size_counts)
    lines += histogram_text("box aspect height/width:", ASPECT_EDGES, s.aspect_counts)
    return lines


# ----------------------------------------------------------------------------- plot


@literal_text
def plot_stats(s: DatasetStats, path: str | Path, title: str = "") -> Path:
    """Four panels: boxes per class, box size and aspect histograms, width vs height."""
    fig = figure(figsize=(12, 9), layout="constrained")
    ax = fig.subplots(2, 2)
    order = sorted(range(len(s.class_names)), key=lambda i: -s.boxes_per_class[i])[:PLOT_MAX_CLASSES]
    ax[0, 0].barh([s.class_names[i] for i in order][::-1], [s.boxes_per_class[i] for i in order][::-1])
    top = f", top {PLOT_MAX_CLASSES}" if len(s.class_names) > PLOT_MAX_CLASSES else ""
    ax[0, 0].set_title(f"boxes per class ({s.classes_used} of {len(s.class_names)} used{top})")
    ax[0, 0].tick_params(axis="y", labelsize=6)
    wh = s.box_wh[(s.box_wh > 0).all(1)] if len(s.box_wh) else s.box_wh  # (B, 2); log axes need > 0
    if len(wh):
        side = np.sqrt(wh[:, 0] * wh[:, 1])
        ax[0, 1].hist(side, bins=np.geomspace(max(side.min(), 0.5), side.max() * 1.01 + 1e-6, 30))
        ax[0, 1].set_xscale("log")
        aspect = wh[:, 1] / wh[:, 0]
        ax[1, 0].hist(aspect, bins=np.geomspace(aspect.min(), aspect.max() * 1.01, 30))
        ax[1, 0].set_xscale("log")
        ax[1, 1].scatter(wh[:, 0], wh[:, 1], s=4, alpha=0.4)
        ax[1, 1].set_xscale("log")
        ax[1, 1].set_yscale("log")
    ax[0, 1].set_title("box size sqrt(w*h), pixels")
    ax[1, 0].set_title("box aspect height / width")
    ax[1, 1].set_title("box width vs height, pixels")
    ax[1, 1].set_xlabel("width")
    ax[1, 1].set_ylabel("height")
    fig.suptitle(f"{title}: {s.images} images, {s.boxes} boxes")
    return save_figure(fig, path, dpi=100)
