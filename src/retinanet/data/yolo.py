"""YOLO txt labels (Ultralytics / darknet layout): reader and writer.

One ``.txt`` per image, one object per line: ``class cx cy w h``, centre and size
normalised by the image's width and height (displayed orientation, as Ultralytics
reads images). A line with more values, ``class x1 y1 x2 y2 x3 y3 ...``, is a
segmentation polygon; its bounding box is used. The label file of
``.../images/<rel>.jpg`` is ``.../labels/<rel>.txt`` (the last ``images`` folder of the
path replaced by ``labels``), or ``<image>.txt`` beside the image (darknet). An image
without a label file has no objects. Image sizes are read from the file headers.

A line of a list file is relative to the list file's folder and must stay inside the
dataset root (the spec's ``root`` / ``path``) or that folder (files.py: confinement).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from .dataset import DetectionDataset, Record
from .files import lies_inside, output_path, place_images, report_outside, read_annotation
from .images import IMAGE_SUFFIXES, ImageError, image_info
from .report import DataError, DataReport

BOX_FIELDS = 5  # class cx cy w h
MIN_POLYGON_FIELDS = 7  # class + at least 3 points
# Normalised coordinates a little outside 0..1 are rounding (clipped later); far outside
# means pixel coordinates were written by mistake.
NORMALISED_SLACK = 0.01
CLASS_FILES = ("classes.txt", "obj.names", "classes.names")
DECIMALS = 6  # written coordinates: 1e-6 of the image side, far below a pixel
# Without class names the classes are 0..largest index; a larger index is an unknown class
# (a garbled line), not a reason to name 10^12 classes (V3Det, a very large vocabulary, has 13k).
MAX_UNNAMED_CLASSES = 100_000


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def list_file_images(
    list_file: Path, root: Path | None = None, report: DataReport | None = None, allow_outside_root: bool = False
) -> list[Path]:
    """The images a list file names, one per line, relative to the list file's folder. A
    line leaving both ``root`` (the dataset root) and that folder is reported in
    ``report`` and left out, unless ``allow_outside_root``."""
    report = report if report is not None else DataReport(source=str(list_file))
    folders = [list_file.parent] + ([root] if root is not None else [])
    images = []
    for n, line in enumerate(read_annotation(list_file).decode("utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = list_file.parent / line  # an absolute line stays as it is
        if allow_outside_root or any(lies_inside(path, f) for f in folders):
            images.append(path)
        else:
            report_outside(report, list_file, f"line {n}", line, folders[-1])
    return images


def list_images(
    sources: list[str | Path],
    root: Path | None = None,
    report: DataReport | None = None,
    allow_outside_root: bool = False,
) -> list[tuple[Path, Path | None]]:
    """(image, folder it was found under) for image folders (searched recursively),
    list files (see list_file_images) and single images. Sorted within each source,
    duplicates removed."""
    found: dict[Path, Path | None] = {}
    for src in sources:
        src = Path(src)
        if src.is_dir():
            for p in sorted(q for q in src.rglob("*") if q.is_file() and is_image(q)):
                found.setdefault(p, src)
        elif src.is_file() and src.suffix.lower() == ".txt":
            for p in list_file_images(src, root, report, allow_outside_root):
                found.setdefault(p, None)
        elif src.is_file() and is_image(src):
            found.setdefault(src, None)
        else:
            raise FileNotFoundError(f"{src}: image folder or list file not found")
    return list(found.items())


def label_path(image: Path, base: Path | None = None, labels_dir: Path | None = None) -> Path:
    """Where the label file of ``image`` is (it may not exist)."""
    if labels_dir is not None and base is not None:
        return labels_dir / image.relative_to(base).with_suffix(".txt")
    parts = image.parts
    idx = max((i for i, part in enumerate(parts[:-1]) if part == "images"), default=None)
    if idx is not None:
        candidate = Path(*parts[:idx], "labels", *parts[idx + 1 :]).with_suffix(".txt")
        if candidate.is_file() or not image.with_suffix(".txt").is_file():
            return candidate
    return image.with_suffix(".txt")


def read_class_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def find_class_file(folders: list[Path]) -> Path | None:
    for folder in folders:
        for name in CLASS_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def parse_label_file(path: Path, report: DataReport) -> list[tuple[int, list[float]]] | None:
    """(class, [cx, cy, w, h]) per good line; bad lines are reported and skipped. None when
    the file as a whole is unreadable (the image is then dropped rather than taken as empty)."""
    try:
        text = read_annotation(path).decode("utf-8")
    except UnicodeDecodeError:
        report.error("malformed annotation", path, "not a text file")
        return None
    except DataError as e:
        report.error("malformed annotation", path, str(e).removeprefix(f"{path}: "))
        return None
    except OSError as e:
        report.error("malformed annotation", path, f"cannot read ({e})")
        return None
    rows: list[tuple[int, list[float]]] = []
    seen: set[tuple] = set()
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != BOX_FIELDS and (len(tokens) < MIN_POLYGON_FIELDS or len(tokens) % 2 == 0):
            report.error(
                "malformed annotation",
                path,
                f"line {n}: expected 5 values (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), "
                f"got {len(tokens)}: {line.strip()[:60]!r}",
            )
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            report.error("malformed annotation", path, f"line {n}: not a number in {line.strip()[:60]!r}")
            continue
        cls = values[0]
        if not cls.is_integer():
            report.error("unknown class", path, f"line {n}: class {tokens[0]!r} is not an integer")
            continue
        coords = values[1:]
        if len(tokens) == BOX_FIELDS:
            box = coords
        else:  # polygon -> its bounding box, as centre/size
            xs, ys = coords[0::2], coords[1::2]
            box = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        finite = all(np.isfinite(coords))
        if finite and any(v < -NORMALISED_SLACK or v > 1 + NORMALISED_SLACK for v in coords):
            report.error(
                "malformed annotation",
                path,
                f"line {n}: coordinates must be normalised to 0..1 by the image size, got {line.strip()[:60]!r}",
            )
            continue
        key = (int(cls), *box)
        if finite and key in seen:
            report.fixed("duplicate box", path, f"line {n}: same box as an earlier line; dropped")
            continue
        seen.add(key)
        rows.append((int(cls), box))
    return rows


def _read_labels(images: list, labels_dir: Path | None, report: DataReport, progress: bool) -> tuple[list, int]:
    """(image, width, height, label path, rows) per usable image, and how many images have no
    label file. An unreadable image or label file is reported and left out."""
    parsed, missing_labels = [], 0
    for image, base in tqdm(images, desc="reading YOLO labels", unit="img", disable=not progress, leave=False):
        try:
            info = image_info(image)  # header only: the size turns normalised boxes into pixels
        except ImageError as e:
            report.image_error(image, e)
            report.dropped_reading += 1
            continue
        lp = label_path(image, base, labels_dir)
        if lp.is_file():
            rows = parse_label_file(lp, report)
            if rows is None:  # reported by parse_label_file
                report.dropped_reading += 1
                continue
        else:
            rows = []
            missing_labels += 1
            report.warning("no label file", image, f"no {lp}; taken as an image without objects")
        parsed.append((image, info.width, info.height, lp, rows))
    return parsed, missing_labels


def read_yolo(
    sources: list[str | Path],
    class_names: list[str] | None = None,
    labels_dir: str | Path | None = None,
    report: DataReport | None = None,
    progress: bool = True,
    root: str | Path | None = None,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Read the images of ``sources`` (folders, list files) and their label files.
    Without ``class_names`` the classes are named by index ('0', '1', ...). A list file
    line leaving the dataset ``root`` and the list's folder is an error (OUTSIDE_ROOT)
    unless ``allow_outside_root``."""
    report = report if report is not None else DataReport(source=str(sources[0]) if sources else "")
    images = list_images(sources, Path(root) if root else None, report, allow_outside_root)
    if not images:
        raise DataError(f"{', '.join(map(str, sources))}: no images ({', '.join(IMAGE_SUFFIXES)})")
    parsed, missing_labels = _read_labels(images, Path(labels_dir) if labels_dir is not None else None, report, progress)
    if parsed and missing_labels == len(parsed):
        report.warning(
            "no label file", sources[0], f"none of the {len(parsed)} images has a label file (looked for {parsed[0][3]})"
        )

    max_class = max((c for *_, rows in parsed for c, _ in rows if c < MAX_UNNAMED_CLASSES), default=-1)
    if class_names is None:
        class_names = [str(i) for i in range(max_class + 1)]
        if class_names:
            report.warning("no class names", sources[0], f"no class names given; classes are named 0..{max_class}")
    nc = len(class_names)
    records = []
    for image_id, (image, w, h, lp, rows) in enumerate(parsed):
        boxes, labels = [], []
        for cls, (cx, cy, bw, bh) in rows:
            if not 0 <= cls < nc:
                report.error("unknown class", lp, f"class {cls} is not in 0..{nc - 1} ({nc} class names)")
                continue
            boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            labels.append(cls)
        records.append(
            Record(image, image_id, w, h, np.array(boxes, np.float64).reshape(-1, 4), labels, annotation_path=lp)
        )
    return DetectionDataset(records, list(class_names), None, Path(root) if root else None, "yolo")


SCORE_DECIMALS = 5  # of the optional score column (predict --save-conf)


def yolo_line(label: int, box: Sequence[float], width: int, height: int, score: float | None = None) -> str:
    """One YOLO txt line: ``label cx cy w h`` of an xyxy pixel box, normalised by the image
    size, with the score appended when one is given: the one writer of the format."""
    x1, y1, x2, y2 = box
    values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
    line = f"{label} " + " ".join(f"{v:.{DECIMALS}f}" for v in values)
    return line if score is None else f"{line} {score:.{SCORE_DECIMALS}f}"


def yolo_lines(record: Record) -> list[str]:
    """Label lines for the non-ignored boxes (YOLO has no ignore flag)."""
    return [
        yolo_line(label, box, record.width, record.height)
        for box, label, ign in zip(record.boxes.tolist(), record.labels.tolist(), record.ignore.tolist())
        if not ign
    ]


def write_yolo(
    dataset: DetectionDataset,
    out: str | Path,
    split: str = "train",
    copy_images: bool = False,
    image_names: dict[Path, str] | None = None,
    progress: bool = False,
) -> int:
    """Write ``out/images/<split>/<image>`` (symlinks unless ``copy_images``) and
    ``out/labels/<split>/<stem>.txt`` (empty for images without objects). Returns the
    number of ignored (crowd / difficult) boxes left out, since YOLO cannot express them."""
    out = Path(out)
    images, labels = output_path(out, out / "images" / split), output_path(out, out / "labels" / split)
    names = place_images(dataset, images, f"writing YOLO {split}", copy_images, image_names, progress)
    labels.mkdir(parents=True, exist_ok=True)
    left_out = 0
    for r, name in zip(dataset.records, names):
        lines = yolo_lines(r)
        left_out += int(r.ignore.sum())
        output_path(out, labels / f"{Path(name).stem}.txt").write_text("".join(line + "\n" for line in lines))
    return left_out


def write_data_yaml(out: str | Path, splits: list[str], class_names: list[str]) -> Path:
    """An Ultralytics-style data.yaml. ``path`` is absolute because Ultralytics resolves a
    relative one against its own datasets folder, not the yaml's."""
    out = Path(out)
    doc: dict = {"path": str(out.resolve())}
    for s in splits:
        doc[s] = f"images/{s}"
    doc["names"] = dict(enumerate(class_names))
    path = output_path(out, out / "data.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path
