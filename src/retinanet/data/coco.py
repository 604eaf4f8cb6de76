"""COCO ``instances`` json: reader and writer.

Reading: category ids are remapped to contiguous labels 0..K-1 in order of id (so COCO's
1..90 become 0..79) and kept in ``category_ids``; ``bbox`` [x, y, w, h] becomes xyxy
once, here; ``iscrowd`` boxes are kept with ``ignore=True``; the json's ``area``
(segmentation area) is kept for the evaluation's size buckets. Problems with single
entries are added to the DataReport; a file that is not a COCO json raises DataError.
A ``file_name`` must name a file inside the image folder (files.py: confinement).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .dataset import DetectionDataset, Record
from .files import file_inside, header_size, inside_root, output_names, output_path, place_images, report_outside, read_annotation
from .report import DataError, DataReport

COCO_PREFIX = "instances_"  # annotations/instances_<split>.json
_FLOAT_MAX = int(np.finfo(np.float64).max)  # a larger JSON integer has no float value


def _is_number(v: Any) -> bool:
    """An int or float that converts to a float (a JSON integer past 1e308 does not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, float) or abs(v) <= _FLOAT_MAX)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(read_annotation(path))
    except DataError:
        raise
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting deeper than the stack
        raise DataError(f"{path}: not a usable JSON file ({e})") from None


def guess_images_dir(json_path: Path, file_names: list[str]) -> Path:
    """The folder COCO's ``file_name`` entries are relative to: for
    ``root/annotations/instances_train2017.json`` try root/train2017, root/images/train2017,
    root/images, root, the json's own folder, then the root's other folders; the first
    holding the listed files wins. Names leaving a candidate do not count."""
    root = json_path.parent.parent if json_path.parent.name.lower() == "annotations" else json_path.parent
    split = json_path.stem[len(COCO_PREFIX) :] if json_path.stem.startswith(COCO_PREFIX) else json_path.stem
    candidates = [root / split, root / "images" / split, root / "images", root, json_path.parent]
    # then any other folder under the root (e.g. a val json whose images sit in train2017/)
    candidates += sorted(d for d in root.iterdir() if d.is_dir() and d not in candidates) if root.is_dir() else []
    # probe with names that stay inside a folder: an absolute one would match any candidate
    probe = list(islice((f for f in file_names if inside_root(root, f)), 5))
    for c in candidates:
        if probe and all(file_inside(c, f) for f in probe):
            return c
    for c in candidates:  # partly present (some images missing): still the best guess
        if any(file_inside(c, f) for f in probe):
            return c
    return root / split if (root / split).is_dir() else root


_Annotation = tuple[list[float], int, bool, float | None]  # xyxy box, label, crowd, area


@dataclass
class _Catalogue:
    """What an annotation is checked against, and where its problems go."""

    json_path: Path
    images: dict[int, dict]
    """image id -> the json's image entry (usable ones only)"""
    cats: dict[int, str]
    """category id -> name (every category of the file)"""
    label_of: dict[int, int]
    """category id -> contiguous label (the categories read)"""
    report: DataReport


def _categories(data: dict, json_path: Path, class_names: list[str] | None) -> tuple[dict[int, str], list[int]]:
    """(category id -> name, the category id of each label): every category sorted by id,
    or those ``class_names`` names, in that order."""
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise DataError(f"{json_path}: categories[{i}] needs an integer 'id' and a string 'name'")
        if c["id"] in cats:
            raise DataError(f"{json_path}: category id {c['id']} is defined twice")
        cats[c["id"]] = c["name"]
    if class_names is None:
        return cats, sorted(cats)
    by_name = {n: cid for cid, n in cats.items()}
    absent = [n for n in class_names if n not in by_name]
    if absent:
        raise DataError(
            f"{json_path}: class name(s) {', '.join(map(repr, absent))} are not categories of this file "
            f"(it has {', '.join(cats.values())})"
        )
    return cats, [by_name[n] for n in class_names]


def _images(data: dict, json_path: Path, report: DataReport) -> tuple[dict[int, dict], set[int]]:
    """(image id -> image entry, ids used by more than one image): malformed entries and
    shared ids are reported and left out."""
    id_count = Counter(im["id"] for im in data["images"] if isinstance(im, dict) and _is_int(im.get("id")))
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            report.error("malformed annotation", json_path, f"images[{i}] needs an integer 'id' and a string 'file_name'")
            report.dropped_reading += 1
            continue
        if id_count[im["id"]] > 1:
            report.error(
                "duplicate image id",
                json_path,
                f"images[{i}] ({im['file_name']}): image id {im['id']} is used by {id_count[im['id']]} images; "
                "its annotations cannot be assigned",
            )
            report.dropped_reading += 1
            continue
        images[im["id"]] = im
    return images, {k for k, n in id_count.items() if n > 1}


def _outside_root(images: dict[int, dict], root_dir: Path, json_path: Path, report: DataReport) -> set[int]:
    """Take the image entries whose ``file_name`` leaves ``root_dir`` out of ``images``
    (reported, never looked at); returns their ids."""
    outside = {i for i, im in images.items() if inside_root(root_dir, im["file_name"]) is None}
    for i in sorted(outside):
        report_outside(report, json_path, f"image id {i}", images.pop(i)["file_name"], root_dir)
    return outside


def _annotation(a: dict, where: str, c: _Catalogue) -> _Annotation | None:
    """One annotation as (xyxy box, label, crowd, area); None (reported) when unusable."""
    images, cats, label_of, json_path, report = c.images, c.cats, c.label_of, c.json_path, c.report
    image_id = a.get("image_id")
    if image_id not in images:
        report.error("unknown image id", json_path, f"{where}: image_id {image_id!r} is not in 'images'")
        return None
    file_name = images[image_id]["file_name"]
    cid = a.get("category_id")
    if cid not in cats:
        report.error("unknown class", json_path, f"{where} on {file_name}: category_id {cid!r} is not in 'categories'")
        return None
    if cid not in label_of:
        report.error("unknown class", json_path, f"{where} on {file_name}: category {cid} ({cats[cid]}) is not in class_names")
        return None
    bbox = a.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        report.error("malformed annotation", json_path, f"{where} on {file_name}: 'bbox' must be 4 numbers, got {bbox!r}")
        return None
    x, y, w, h = (float(v) for v in bbox)
    area = a.get("area")
    area = float(area) if _is_number(area) and math.isfinite(area) else None
    crowd = a.get("iscrowd", 0)
    crowd = crowd.strip() not in ("", "0") if isinstance(crowd, str) else bool(crowd)  # "0" is not a crowd
    return [x, y, x + w, y + h], label_of[cid], crowd, area


def _annotations_per_image(anns: list, bad_image_ids: set[int], c: _Catalogue) -> dict[int, list[_Annotation]]:
    """The usable annotations grouped by image id; the others are reported."""
    json_path, report = c.json_path, c.report
    per_image: dict[int, list[_Annotation]] = defaultdict(list)
    ann_ids: Counter = Counter()
    for i, a in enumerate(anns):
        where = f"annotations[{i}]" + (f" (id {a.get('id')})" if isinstance(a, dict) and "id" in a else "")
        if not isinstance(a, dict):
            report.error("malformed annotation", json_path, f"{where} is not an object")
            continue
        unhashable = [k for k in ("id", "image_id", "category_id") if isinstance(a.get(k), (list, dict))]
        if unhashable:
            why = f"{where}: {', '.join(unhashable)} must be a number, not a list or object"
            report.error("malformed annotation", json_path, why)
            continue
        if "id" in a:
            ann_ids[a["id"]] += 1
            if ann_ids[a["id"]] == 2:
                report.warning("duplicate annotation id", json_path, f"annotation id {a['id']} is used more than once")
        if a.get("image_id") in bad_image_ids:
            continue  # reported with the image
        item = _annotation(a, where, c)
        if item is not None:
            per_image[a["image_id"]].append(item)
    return per_image


def _record(image_id: int, im: dict, items: list[_Annotation], root_dir: Path, json_path: Path) -> Record:
    """One image entry and its annotations as a Record; the size comes from the image
    header when the json does not give it."""
    path = root_dir / im["file_name"]
    w, h = im.get("width"), im.get("height")
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        w, h = header_size(path)  # absent from the json: take it from the image header
    boxes = np.array([b for b, _, _, _ in items], np.float64).reshape(-1, 4)  # (G, 4) xyxy
    box_areas = [max(b[2] - b[0], 0) * max(b[3] - b[1], 0) for b, _, _, _ in items]
    areas = np.array([a if a is not None else ba for (_, _, _, a), ba in zip(items, box_areas)], np.float64)  # (G,)
    return Record(
        image_path=path,
        image_id=image_id,
        width=int(w),
        height=int(h),
        boxes=boxes,
        labels=[lab for _, lab, _, _ in items],
        ignore=[crowd for _, _, crowd, _ in items],
        areas=areas,
        annotation_path=json_path,
    )


def read_coco(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    report: DataReport | None = None,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Read a COCO instances json. ``class_names`` (optional) picks the classes and their
    label order by category name; by default every category, sorted by id. A
    ``file_name`` leaving the image folder is an error (OUTSIDE_ROOT) unless
    ``allow_outside_root``."""
    json_path = Path(json_path)
    report = report if report is not None else DataReport(source=str(json_path))
    data = load_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise DataError(f"{json_path}: not a COCO instances file (needs lists 'images' and 'categories')")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: 'annotations' must be a list")
    cats, category_ids = _categories(data, json_path, class_names)
    label_of = {cid: k for k, cid in enumerate(category_ids)}  # categories -> contiguous labels
    images, bad_image_ids = _images(data, json_path, report)
    root_dir = Path(images_dir) if images_dir is not None else guess_images_dir(
        json_path, [im["file_name"] for im in images.values()]
    )
    if not allow_outside_root:
        bad_image_ids |= _outside_root(images, root_dir, json_path, report)
    catalogue = _Catalogue(json_path, images, cats, label_of, report)
    per_image = _annotations_per_image(anns, bad_image_ids, catalogue)
    records = [_record(i, im, per_image.get(i, []), root_dir, json_path) for i, im in images.items()]
    return DetectionDataset(records, [cats[c] for c in category_ids], category_ids, root_dir, "coco")


def coco_results(
    image_id: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    category_ids: Sequence[int],
    box_decimals: int | None = None,
    score_decimals: int | None = None,
) -> list[dict[str, Any]]:
    """COCO results entries of one image, the one writer of the format:
    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` from boxes (D, 4) xyxy in
    pixels, scores (D,) and the dataset's category id of each detection, optionally rounded."""
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    xywh[:, 2:] -= xywh[:, :2]  # x2, y2 -> w, h
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if box_decimals is not None:
        xywh = np.round(xywh, box_decimals)
    if score_decimals is not None:
        scores = np.round(scores, score_decimals)
    return [
        {"image_id": int(image_id), "category_id": int(c), "bbox": bbox, "score": score}
        for bbox, score, c in zip(xywh.tolist(), scores.tolist(), category_ids)
    ]


def write_coco(
    dataset: DetectionDataset,
    out: str | Path,
    split: str = "train",
    copy_images: bool = False,
    image_names: dict[Path, str] | None = None,
    progress: bool = False,
) -> Path:
    """Write ``out/annotations/instances_<split>.json`` and the images into ``out/<split>/``
    (symlinks unless ``copy_images``). Category ids are the dataset's own when it came
    from COCO, else 1..K (0 is background to many COCO tools). Ignored boxes are written
    with ``iscrowd: 1``. Returns the json path."""
    out = Path(out)
    image_names = image_names if image_names is not None else output_names(dataset)
    category_ids = dataset.category_ids if dataset.format == "coco" else list(range(1, dataset.num_classes + 1))
    place_images(dataset, output_path(out, out / split), f"writing COCO {split}", copy_images, image_names, progress)
    # 3 decimals: far below a pixel, and COCO's own files use 2.
    doc = {
        "info": {"description": f"written by retinanet convert from {dataset.root or ''}"},
        "licenses": [],
        **dataset.to_coco(category_ids, image_names, decimals=3),
    }
    for a in doc["annotations"]:  # a box polygon, for tools that insist on segmentations
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[round(v, 3) for v in (x, y, x + w, y, x + w, y + h, x, y + h)]]
    for c in doc["categories"]:
        c["supercategory"] = ""
    path = output_path(out, out / "annotations" / f"{COCO_PREFIX}{split}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path
