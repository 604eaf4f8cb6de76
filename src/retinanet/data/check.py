"""Dataset validation: every problem found, with the file to fix and the reason, plus
statistics (counts per class, box size and aspect histograms), and `retinanet check-data`.

Three levels of problem:

- ``error``: the entry is unusable and is dropped: a missing, unreadable or truncated
  image; an annotation file that does not parse; a box with a NaN/inf coordinate, zero
  or negative size or lying wholly outside its image; an unknown class; a duplicate
  image id. ``load_dataset(drop_bad=False)`` (what training does) raises DataError when
  there is any; ``drop_bad=True`` drops them and carries on.
- ``fixed``: repaired and reported, never fatal: a box partly outside its image is
  clipped to it.
- ``warning``: worth knowing, nothing changed: a duplicate annotation id, an image
  without a label file, a requested split the dataset does not define.

A problem with a whole annotation file (a COCO json that does not parse) cannot be
dropped piecemeal: the reader raises DataError at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .dataset import DetectionDataset, Record
from .images import SWAPS_SIDES, ImageError, ImageInfo, MissingImageError, image_info

ERROR = "error"
FIXED = "fixed"
WARNING = "warning"
LEVELS = (ERROR, FIXED, WARNING)

# How thoroughly image files are checked (load_dataset's ``check``).
FULL = "full"  # decode every image: finds truncated / corrupt files
HEADER = "header"  # read the header only: finds missing and non-image files, and the true size
NONE = "none"  # trust the annotations' image sizes; only boxes and labels are checked
CHECK_MODES = (FULL, HEADER, NONE)

# Threads for image verification: Pillow releases the GIL while decoding.
VERIFY_THREADS = 4

# Histogram bins. Box size is sqrt(area) in pixels; COCO's small/medium/large split at 32 and 96.
SIZE_EDGES = (0.0, 8.0, 16.0, 32.0, 64.0, 96.0, 128.0, 256.0, 512.0, math.inf)
ASPECT_EDGES = (0.0, 1 / 8, 1 / 4, 1 / 2, 1 / math.sqrt(2), math.sqrt(2), 2.0, 4.0, 8.0, math.inf)  # height / width
COCO_SMALL, COCO_MEDIUM = 32.0**2, 96.0**2
# Boxes sticking out of the image by less than this (pixels) are float rounding (e.g. of
# YOLO's 6-decimal normalised coordinates): clipped without a report.
CLIP_TOLERANCE = 0.01
PLOT_MAX_CLASSES = 40  # more bars than this are unreadable in the class panel


@dataclass(frozen=True)
class Issue:
    level: str
    """'error' (entry dropped), 'fixed' (repaired, e.g. clipped) or 'warning'."""
    kind: str
    """Short category used to group issues, e.g. 'unreadable image', 'degenerate box'."""
    file: str
    """The file to look at (annotation file, or the image when the problem is the image)."""
    reason: str

    def __str__(self) -> str:
        return f"{self.level}: {self.file}: {self.reason}"


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


@dataclass
class DataReport:
    source: str = ""
    split: str = ""
    format: str = ""
    mode: str = FULL
    issues: list[Issue] = field(default_factory=list)
    stats: DatasetStats | None = None
    dropped_images: int = 0
    dropped_boxes: int = 0

    def add(self, level: str, kind: str, file: str | Path, reason: str) -> None:
        assert level in LEVELS, level
        self.issues.append(Issue(level, kind, str(file), reason))

    def error(self, kind: str, file: str | Path, reason: str) -> None:
        self.add(ERROR, kind, file, reason)

    def fixed(self, kind: str, file: str | Path, reason: str) -> None:
        self.add(FIXED, kind, file, reason)

    def warning(self, kind: str, file: str | Path, reason: str) -> None:
        self.add(WARNING, kind, file, reason)

    def of_level(self, level: str) -> list[Issue]:
        return [i for i in self.issues if i.level == level]

    @property
    def errors(self) -> list[Issue]:
        return self.of_level(ERROR)

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self, level: str | None = None) -> Counter:
        """(level, kind) -> number of issues."""
        return Counter((i.level, i.kind) for i in self.issues if level is None or i.level == level)

    @property
    def where(self) -> str:
        return f"{self.source} [{self.split}]" if self.split else self.source

    def summary(self, examples: int = 3) -> str:
        """One line: what is wrong, a few examples, and what to do (the DataError message)."""
        errors = self.errors
        if not errors:
            return f"{self.where}: no errors"
        ranked = sorted(self.counts(ERROR).items(), key=lambda item: (-item[1], item[0][1]))
        kinds = ", ".join(f"{n} {kind}" for (_, kind), n in ranked)
        shown = "; ".join(f"{i.file}: {i.reason}" for i in errors[:examples])
        more = f"; and {len(errors) - examples} more" if len(errors) > examples else ""
        return (
            f"{self.where}: {len(errors)} unusable entr{'y' if len(errors) == 1 else 'ies'} ({kinds}): {shown}{more}. "
            f"Fix them, or drop them with drop_bad=True (--drop-bad); "
            f"`retinanet check-data {self.source}` lists them all"
        )

    def to_text(self, max_per_kind: int | None = None) -> str:
        """The full human-readable report: statistics, histograms, then every issue."""
        lines = [f"dataset {self.where}  format {self.format or '?'}  image check: {self.mode}"]
        if self.stats is not None:
            lines += _stats_text(self.stats)
        if self.dropped_images or self.dropped_boxes:
            lines.append(f"dropped: {self.dropped_images} images, {self.dropped_boxes} boxes")
        lines.append("")
        if not self.issues:
            lines.append("no problems found")
        for level in LEVELS:
            by_kind: dict[str, list[Issue]] = {}
            for i in self.of_level(level):
                by_kind.setdefault(i.kind, []).append(i)
            for kind, items in by_kind.items():
                lines.append(f"{level} - {kind}: {len(items)}")
                shown = items if max_per_kind is None else items[:max_per_kind]
                lines += [f"  {i.file}: {i.reason}" for i in shown]
                if len(shown) < len(items):
                    lines.append(f"  ... and {len(items) - len(shown)} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "source": self.source,
            "split": self.split,
            "format": self.format,
            "mode": self.mode,
            "dropped_images": self.dropped_images,
            "dropped_boxes": self.dropped_boxes,
            "issues": [dataclasses.asdict(i) for i in self.issues],
            "stats": None
            if s is None
            else {
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
            },
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """report.txt (everything), problems.json (machine-readable) and boxes.png (plots)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "report.txt", out / "problems.json"]
        paths[0].write_text(self.to_text() + "\n")
        paths[1].write_text(json.dumps(self.to_dict(), indent=1))
        if self.stats is not None:
            paths.append(plot_stats(self.stats, out / "boxes.png", title=self.where))
        return paths


class DataError(ValueError):
    """A dataset that cannot be used as it is. The message is a one-line summary; the full
    report (when there is one) is ``.report``."""

    def __init__(self, message: str, report: DataReport | None = None):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------- validation


def check_mode(check: bool | str) -> str:
    if check is True:
        return FULL
    if check is False or check is None:
        return NONE
    if check in CHECK_MODES:
        return str(check)
    raise ValueError(f"check must be True, False or one of {', '.join(CHECK_MODES)}; got {check!r}")


def _inspect(path: Path, decode: bool) -> ImageInfo | ImageError:
    try:
        return image_info(path, decode=decode)
    except ImageError as e:
        return e


def inspect_images(paths: list[Path], decode: bool, progress: bool = True) -> dict[Path, ImageInfo | ImageError]:
    """image_info of every path (errors returned, not raised), with a progress bar."""
    unique = list(dict.fromkeys(paths))
    desc = "decoding images" if decode else "reading image headers"
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        results = list(
            tqdm(
                pool.map(lambda p: _inspect(p, decode), unique),
                total=len(unique),
                desc=desc,
                unit="img",
                disable=not progress or not unique,
                leave=False,
            )
        )
    return dict(zip(unique, results))


def _box_name(rec: Record, k: int, names: list[str], box: np.ndarray) -> str:
    label = int(rec.labels[k])
    cls = names[label] if 0 <= label < len(names) else str(label)
    coords = ", ".join(f"{v:.6g}" for v in box.tolist())
    return f"{rec.image_path.name}: box {k} ({cls}) [{coords}]"


def check_boxes(rec: Record, names: list[str], report: DataReport) -> Record:
    """Drop non-finite, degenerate and wholly-outside boxes (errors) and unknown labels;
    clip boxes that stick out of the image (fixed). Returns the record with the good boxes."""
    file = rec.annotation_path or rec.image_path
    boxes = rec.boxes.astype(np.float64)  # (G, 4) xyxy
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, rec.width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, rec.height)
    with np.errstate(invalid="ignore"):
        unknown = (rec.labels < 0) | (rec.labels >= len(names))
        finite = np.isfinite(boxes).all(1)
        degenerate = finite & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        outside = finite & ~degenerate & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
        moved = finite & (np.abs(clipped - boxes) > CLIP_TOLERANCE).any(1)
    keep = ~unknown & finite & ~degenerate & ~outside
    # Vectorised tests above; the loop below only visits the boxes that have a problem.
    for k in np.flatnonzero(~keep | moved):
        box = boxes[k]
        what = _box_name(rec, k, names, box)
        if unknown[k]:
            report.error("unknown class", file, f"{what}: class index {int(rec.labels[k])} is not in 0..{len(names) - 1}")
        elif not finite[k]:
            report.error("non-finite box", file, f"{what}: coordinate is NaN or infinite")
        elif degenerate[k]:
            w, h = box[2] - box[0], box[3] - box[1]
            report.error("degenerate box", file, f"{what}: width {w:.6g}, height {h:.6g}; both must be > 0")
        elif outside[k]:
            report.error("box outside image", file, f"{what}: lies wholly outside the {rec.width}x{rec.height} image")
        else:
            c = ", ".join(f"{v:.6g}" for v in clipped[k].tolist())
            report.fixed("box clipped", file, f"{what}: extends outside the {rec.width}x{rec.height} image; clipped to [{c}]")
    rec.boxes = clipped[keep].astype(np.float32)
    rec.labels = rec.labels[keep]
    rec.ignore = rec.ignore[keep]
    if rec.areas is not None:
        rec.areas = rec.areas[keep]
    return rec


def validate(
    dataset: DetectionDataset, report: DataReport, mode: str = FULL, progress: bool = True
) -> DetectionDataset:
    """Check images (per ``mode``) and boxes; return the dataset without the bad entries,
    with ``report`` filled (issues, dropped counts, statistics) and attached as ``.report``."""
    report.mode = mode
    report.format = report.format or dataset.format
    names = dataset.class_names
    records: list[Record] = []
    infos: dict[Path, ImageInfo | ImageError] = {}
    if mode != NONE:
        infos = inspect_images([r.image_path for r in dataset.records], decode=mode == FULL, progress=progress)
    seen_ids: dict[int, Path] = {}
    seen_paths: dict[Path, int] = {}
    modes: Counter = Counter()
    rotated = 0
    dropped_boxes = 0
    for rec in dataset.records:
        n_boxes = len(rec.labels)
        ann = rec.annotation_path or rec.image_path
        if rec.image_id in seen_ids:
            report.error(
                "duplicate image id",
                ann,
                f"{rec.image_path.name}: image id {rec.image_id} is already used by {seen_ids[rec.image_id].name}",
            )
            dropped_boxes += n_boxes
            continue
        if rec.image_path in seen_paths:
            report.error(
                "duplicate image",
                ann,
                f"{rec.image_path.name}: listed again (image ids {seen_paths[rec.image_path]} and {rec.image_id})",
            )
            dropped_boxes += n_boxes
            continue
        if mode != NONE:
            info = infos[rec.image_path]
            if isinstance(info, ImageError):
                kind = "missing image" if isinstance(info, MissingImageError) else "unreadable image"
                report.error(kind, rec.image_path, str(info).split(": ", 1)[-1])
                dropped_boxes += n_boxes
                continue
            declared = (rec.width, rec.height)
            actual = (info.width, info.height)
            if min(declared) > 0 and declared != actual:
                if info.orientation in SWAPS_SIDES and declared == (info.stored_width, info.stored_height):
                    why = (
                        f"the annotation gives the stored size {declared[0]}x{declared[1]}, but the image has EXIF "
                        f"orientation {info.orientation} and displays as {actual[0]}x{actual[1]}; boxes must refer to "
                        "the displayed orientation (re-export the annotations from a tool that applies EXIF, or "
                        "remove the orientation tag)"
                    )
                else:
                    why = f"the annotation gives size {declared[0]}x{declared[1]} but the image is {actual[0]}x{actual[1]}"
                report.error("size mismatch", ann, f"{rec.image_path.name}: {why}")
                dropped_boxes += n_boxes
                continue
            rec.width, rec.height = actual
            modes[info.mode] += 1
            rotated += info.orientation != 1
        elif rec.width <= 0 or rec.height <= 0:
            report.error("unknown image size", ann, f"{rec.image_path.name}: no image size in the annotation")
            dropped_boxes += n_boxes
            continue
        seen_ids[rec.image_id] = rec.image_path
        seen_paths[rec.image_path] = rec.image_id
        rec = check_boxes(rec, names, report)
        dropped_boxes += n_boxes - len(rec.labels)
        records.append(rec)
    report.dropped_images = len(dataset.records) - len(records)
    report.dropped_boxes = dropped_boxes
    out = DetectionDataset(records, list(names), list(dataset.category_ids), dataset.root, dataset.format)
    report.stats = dataset_stats(out, modes, rotated)
    out.report = report
    return out


# ----------------------------------------------------------------------------- statistics


def dataset_stats(dataset: DetectionDataset, modes: Counter | None = None, exif_rotated: int = 0) -> DatasetStats:
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
        b = r.boxes[keep].astype(np.float64)
        wh.append(np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1))
        areas.append(r.areas[keep] if r.areas is not None else wh[-1][:, 0] * wh[-1][:, 1])
    box_wh = np.concatenate(wh) if wh else np.zeros((0, 2))
    area = np.concatenate(areas) if areas else np.zeros(0)
    side = np.sqrt(box_wh[:, 0] * box_wh[:, 1])
    aspect = box_wh[:, 1] / np.maximum(box_wh[:, 0], 1e-9)
    widths = np.array([r.width for r in dataset.records]) if dataset.records else np.zeros(1, int)
    heights = np.array([r.height for r in dataset.records]) if dataset.records else np.zeros(1, int)

    def spread(v: np.ndarray) -> tuple[int, int, int]:
        return int(v.min()), int(np.median(v)), int(v.max())

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
        image_width=spread(widths),
        image_height=spread(heights),
        size_counts=np.histogram(side, SIZE_EDGES)[0].tolist(),
        aspect_counts=np.histogram(aspect, ASPECT_EDGES)[0].tolist(),
        coco_buckets=(
            int((area < COCO_SMALL).sum()),
            int(((area >= COCO_SMALL) & (area < COCO_MEDIUM)).sum()),
            int((area >= COCO_MEDIUM).sum()),
        ),
        box_wh=box_wh.astype(np.float32),
    )


def _edge(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    if 0 < v < 1:
        return f"1/{1 / v:.3g}"
    return f"{v:.3g}"


def _histogram_text(title: str, edges: tuple[float, ...], counts: list[int], width: int = 40) -> list[str]:
    lines = [title]
    peak = max(counts) if counts and max(counts) > 0 else 1
    for lo, hi, n in zip(edges[:-1], edges[1:], counts):
        bar = "#" * round(width * n / peak)
        lines.append(f"  {_edge(lo):>6s} - {_edge(hi):<6s} {n:7d}  {bar}")
    return lines


def _stats_text(s: DatasetStats) -> list[str]:
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
    lines += _histogram_text("box size sqrt(w*h) in pixels:", SIZE_EDGES, s.size_counts)
    lines += _histogram_text("box aspect height/width:", ASPECT_EDGES, s.aspect_counts)
    return lines


def plot_stats(s: DatasetStats, path: str | Path, title: str = "") -> Path:
    """Four panels: boxes per class, box size and aspect histograms, width vs height."""
    # The object-oriented API with the Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 9), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2)
    order = sorted(range(len(s.class_names)), key=lambda i: -s.boxes_per_class[i])[:PLOT_MAX_CLASSES]
    ax[0, 0].barh([s.class_names[i] for i in order][::-1], [s.boxes_per_class[i] for i in order][::-1])
    top = f", top {PLOT_MAX_CLASSES}" if len(s.class_names) > PLOT_MAX_CLASSES else ""
    ax[0, 0].set_title(f"boxes per class ({s.classes_used} of {len(s.class_names)} used{top})")
    ax[0, 0].tick_params(axis="y", labelsize=6)
    wh = s.box_wh[(s.box_wh > 0).all(1)] if len(s.box_wh) else s.box_wh
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
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="dataset folder, COCO json, YOLO data.yaml or dataset spec YAML")
    p.add_argument("--split", default="all", help="train, val, test or all (default: all)")
    p.add_argument("--out", help="folder for report.txt, problems.json and boxes.png (default: print only)")
    p.add_argument(
        "--drop-bad",
        action="store_true",
        help="report what training with drop_bad=True would use; exit 0 even when entries must be dropped",
    )
    p.add_argument(
        "--header-only",
        action="store_true",
        help="read image headers instead of decoding every image (fast; misses truncated files)",
    )
    p.add_argument("--max-issues", type=int, default=20, help="issues printed per kind (all go to --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .spec import load_dataset  # spec imports this module: import here, not at the top

    ds = load_dataset(
        args.source,
        split=args.split,
        check=HEADER if args.header_only else FULL,
        drop_bad=True,  # collect every problem; the exit code below says whether that was needed
        progress=not args.quiet,
    )
    report: DataReport = ds.report
    print(report.to_text(max_per_kind=args.max_issues))
    if args.out:
        for path in report.write(args.out):
            print(f"wrote {path}")
    n_err = len(report.errors)
    if n_err and not args.drop_bad:
        print(
            f"{n_err} error(s): training would stop here; fix them or use drop_bad=True / --drop-bad "
            f"({report.dropped_images} images and {report.dropped_boxes} boxes would be dropped)"
        )
        return 1
    print("OK" if not n_err else f"OK with --drop-bad: {report.dropped_images} images, {report.dropped_boxes} boxes dropped")
    return 0
