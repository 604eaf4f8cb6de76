"""Dataset validation: inspect the images, check the boxes, and drop what is unusable.

Every problem goes into a DataReport (see report.py for the three levels) with the
file to fix and the reason; ``validate`` also fills the report's statistics.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .dataset import DetectionDataset, Record
from .images import SWAPS_SIDES, TRUNCATED_ROWS_LIMIT, ImageError, ImageInfo, image_info
from .report import CHECK_MODES, FULL, NONE, DataReport
from .stats import dataset_stats

# Threads for image verification: Pillow releases the GIL while decoding.
VERIFY_THREADS = 4
# Boxes sticking out of the image by less than this (pixels) are float rounding (e.g. of
# YOLO's 6-decimal normalised coordinates): clipped without a report.
CLIP_TOLERANCE = 0.01


def check_mode(check: bool | str) -> str:
    """load_dataset's ``check`` argument -> one of CHECK_MODES."""
    if check is True:
        return FULL
    if check is False or check is None:
        return NONE
    if check in CHECK_MODES:
        return str(check)
    raise ValueError(f"check must be True, False or one of {', '.join(CHECK_MODES)}; got {check!r}")


# ----------------------------------------------------------------------------- images


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


def _size_mismatch(rec: Record, info: ImageInfo) -> str | None:
    """Why the annotation's image size disagrees with the file's, or None when it agrees
    (or the annotation gives none)."""
    declared = (rec.width, rec.height)
    actual = (info.width, info.height)
    if min(declared) <= 0 or declared == actual:
        return None
    if info.orientation in SWAPS_SIDES and declared == (info.stored_width, info.stored_height):
        return (
            f"the annotation gives the stored size {declared[0]}x{declared[1]}, but the image has EXIF "
            f"orientation {info.orientation} and displays as {actual[0]}x{actual[1]}; boxes must refer to "
            "the displayed orientation (re-export the annotations from a tool that applies EXIF, or "
            "remove the orientation tag)"
        )
    return f"the annotation gives size {declared[0]}x{declared[1]} but the image is {actual[0]}x{actual[1]}"


def _image_usable(rec: Record, info: ImageInfo | ImageError | None, report: DataReport) -> bool:
    """Report a missing / unreadable image, a size mismatch, or (``info`` None: images not
    inspected) an unknown size; True when the record's image is usable. A JPEG that lost
    a little of its end is usable and reported as fixed."""
    ann = rec.annotation_path or rec.image_path
    if info is None:
        if rec.width <= 0 or rec.height <= 0:
            report.error("unknown image size", ann, f"{rec.image_path.name}: no image size in the annotation")
            return False
        return True
    if isinstance(info, ImageError):
        report.image_error(rec.image_path, info)
        return False
    why = _size_mismatch(rec, info)
    if why is not None:
        report.error("size mismatch", ann, f"{rec.image_path.name}: {why}")
        return False
    if info.missing_rows is not None:
        report.fixed(
            "truncated image", rec.image_path,
            f"{rec.image_path.name}: the file ends early: {info.missing_rows:.1%} of its rows are missing entirely "
            f"(up to {TRUNCATED_ROWS_LIMIT:.0%} is accepted) and what was not decoded is grey; used",
        )  # fmt: skip
    return True


# ----------------------------------------------------------------------------- boxes


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


# ----------------------------------------------------------------------------- records


class _Seen:
    """Image ids and paths of the records kept so far, to catch duplicates."""

    def __init__(self) -> None:
        self.ids: dict[int, Path] = {}
        self.paths: dict[Path, int] = {}

    def duplicate(self, rec: Record, report: DataReport) -> bool:
        """Report and return True when ``rec`` repeats a kept record's id or image."""
        ann = rec.annotation_path or rec.image_path
        if rec.image_id in self.ids:
            used_by = self.ids[rec.image_id].name
            report.error(
                "duplicate image id", ann, f"{rec.image_path.name}: image id {rec.image_id} is already used by {used_by}"
            )
            return True
        if rec.image_path in self.paths:
            ids = f"{self.paths[rec.image_path]} and {rec.image_id}"
            report.error("duplicate image", ann, f"{rec.image_path.name}: listed again (image ids {ids})")
            return True
        return False

    def add(self, rec: Record) -> None:
        self.ids[rec.image_id] = rec.image_path
        self.paths[rec.image_path] = rec.image_id


def validate(
    dataset: DetectionDataset, report: DataReport, mode: str = FULL, progress: bool = True
) -> DetectionDataset:
    """Check images (per ``mode``) and boxes; return the dataset without the bad entries,
    with ``report`` filled (issues, dropped counts, statistics) and attached as ``.report``."""
    report.mode = mode
    report.format = report.format or dataset.format
    names = dataset.class_names
    infos: dict[Path, ImageInfo | ImageError] = {}
    if mode != NONE:
        infos = inspect_images([r.image_path for r in dataset.records], decode=mode == FULL, progress=progress)
    seen = _Seen()
    records: list[Record] = []
    modes: Counter = Counter()
    rotated = 0
    dropped_boxes = 0
    for rec in dataset.records:
        n_boxes = len(rec.labels)
        info = infos.get(rec.image_path)
        if seen.duplicate(rec, report) or not _image_usable(rec, info, report):
            dropped_boxes += n_boxes
            continue
        if isinstance(info, ImageInfo):
            rec.width, rec.height = info.width, info.height
            modes[info.mode] += 1
            rotated += info.orientation != 1
        seen.add(rec)
        rec = check_boxes(rec, names, report)
        dropped_boxes += n_boxes - len(rec.labels)
        records.append(rec)
    report.dropped_images = report.dropped_reading + len(dataset.records) - len(records)
    report.dropped_boxes = dropped_boxes
    out = DetectionDataset(records, list(names), list(dataset.category_ids), dataset.root, dataset.format)
    report.stats = dataset_stats(out, modes, rotated)
    out.report = report
    return out
