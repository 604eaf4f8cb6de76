"""COCO ``instances`` json: reader and writer.

Reading: category ids are remapped to contiguous labels 0..K-1 in order of id (so COCO's
1..90 become 0..79) and kept in ``category_ids``; ``bbox`` [x, y, w, h] becomes xyxy
once, here; ``iscrowd`` boxes are kept with ``ignore=True``; the json's ``area``
(segmentation area) is kept for the evaluation's size buckets. Problems with single
entries are added to the DataReport; a file that is not a COCO json raises DataError.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .check import DataError, DataReport
from .dataset import DetectionDataset, Record
from .images import image_info, place_image, unique_file_names

COCO_PREFIX = "instances_"  # annotations/instances_<split>.json


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def guess_images_dir(json_path: Path, file_names: list[str]) -> Path:
    """The folder COCO's ``file_name`` entries are relative to: for
    ``root/annotations/instances_train2017.json`` try root/train2017, root/images/train2017,
    root/images, root, the json's own folder, then the root's other folders; the first
    holding the listed files wins."""
    root = json_path.parent.parent if json_path.parent.name.lower() == "annotations" else json_path.parent
    split = json_path.stem[len(COCO_PREFIX) :] if json_path.stem.startswith(COCO_PREFIX) else json_path.stem
    candidates = [root / split, root / "images" / split, root / "images", root, json_path.parent]
    # then any other folder under the root (e.g. a val json whose images sit in train2017/)
    candidates += sorted(d for d in root.iterdir() if d.is_dir() and d not in candidates) if root.is_dir() else []
    probe = file_names[:5]
    for c in candidates:
        if probe and all((c / f).is_file() for f in probe):
            return c
    for c in candidates:  # partly present (some images missing): still the best guess
        if any((c / f).is_file() for f in probe):
            return c
    return root / split if (root / split).is_dir() else root


def read_coco(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    report: DataReport | None = None,
) -> DetectionDataset:
    """Read a COCO instances json. ``class_names`` (optional) picks the classes and their
    label order by category name; by default every category, sorted by id."""
    json_path = Path(json_path)
    report = report if report is not None else DataReport(source=str(json_path))
    data = load_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise DataError(f"{json_path}: not a COCO instances file (needs lists 'images' and 'categories')")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: 'annotations' must be a list")

    # Categories -> contiguous labels.
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise DataError(f"{json_path}: categories[{i}] needs an integer 'id' and a string 'name'")
        if c["id"] in cats:
            raise DataError(f"{json_path}: category id {c['id']} is defined twice")
        cats[c["id"]] = c["name"]
    if class_names is None:
        category_ids = sorted(cats)
    else:
        by_name = {n: cid for cid, n in cats.items()}
        absent = [n for n in class_names if n not in by_name]
        if absent:
            raise DataError(
                f"{json_path}: class name(s) {', '.join(map(repr, absent))} are not categories of this file "
                f"(it has {', '.join(cats.values())})"
            )
        category_ids = [by_name[n] for n in class_names]
    names = [cats[c] for c in category_ids]
    label_of = {cid: k for k, cid in enumerate(category_ids)}

    # Images.
    id_count = Counter(im.get("id") for im in data["images"] if isinstance(im, dict))
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            report.error("malformed annotation", json_path, f"images[{i}] needs an integer 'id' and a string 'file_name'")
            continue
        if id_count[im["id"]] > 1:
            report.error(
                "duplicate image id",
                json_path,
                f"images[{i}] ({im['file_name']}): image id {im['id']} is used by {id_count[im['id']]} images; "
                "its annotations cannot be assigned",
            )
            continue
        images[im["id"]] = im
    root_dir = Path(images_dir) if images_dir is not None else guess_images_dir(
        json_path, [im["file_name"] for im in images.values()]
    )

    # Annotations, grouped per image.
    per_image: dict[int, list[tuple[list[float], int, bool, float | None]]] = defaultdict(list)
    ann_ids: Counter = Counter()
    bad_image_ids = {k for k, n in id_count.items() if n > 1}
    for i, a in enumerate(anns):
        where = f"annotations[{i}]" + (f" (id {a.get('id')})" if isinstance(a, dict) and "id" in a else "")
        if not isinstance(a, dict):
            report.error("malformed annotation", json_path, f"{where} is not an object")
            continue
        if "id" in a:
            ann_ids[a["id"]] += 1
            if ann_ids[a["id"]] == 2:
                report.warning("duplicate annotation id", json_path, f"annotation id {a['id']} is used more than once")
        image_id = a.get("image_id")
        if image_id in bad_image_ids:
            continue  # reported with the image
        if image_id not in images:
            report.error("unknown image id", json_path, f"{where}: image_id {image_id!r} is not in 'images'")
            continue
        file_name = images[image_id]["file_name"]
        cid = a.get("category_id")
        if cid not in cats:
            report.error("unknown class", json_path, f"{where} on {file_name}: category_id {cid!r} is not in 'categories'")
            continue
        if cid not in label_of:
            report.error(
                "unknown class", json_path, f"{where} on {file_name}: category {cid} ({cats[cid]}) is not in class_names"
            )
            continue
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            report.error("malformed annotation", json_path, f"{where} on {file_name}: 'bbox' must be 4 numbers, got {bbox!r}")
            continue
        x, y, w, h = (float(v) for v in bbox)
        area = a.get("area")
        area = float(area) if _is_number(area) and math.isfinite(area) else None
        crowd = a.get("iscrowd", 0)
        crowd = crowd.strip() not in ("", "0") if isinstance(crowd, str) else bool(crowd)  # "0" is not a crowd
        per_image[image_id].append(([x, y, x + w, y + h], label_of[cid], crowd, area))

    records = []
    for image_id, im in images.items():
        path = root_dir / im["file_name"]
        w, h = im.get("width"), im.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            try:  # absent from the json: take it from the image header
                info = image_info(path)
                w, h = info.width, info.height
            except ValueError:
                w, h = 0, 0  # validation reports the unreadable image / unknown size
        items = per_image.get(image_id, [])
        boxes = np.array([b for b, _, _, _ in items], np.float64).reshape(-1, 4)
        areas = np.array(
            [a if a is not None else max(b[2] - b[0], 0) * max(b[3] - b[1], 0) for b, _, _, a in items], np.float64
        )
        records.append(
            Record(
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
        )
    return DetectionDataset(records, names, category_ids, root_dir, "coco")


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
    if image_names is None:
        image_names = dict(zip((r.image_path for r in dataset.records), unique_file_names([r.image_path for r in dataset.records])))
    category_ids = dataset.category_ids if dataset.format == "coco" else list(range(1, dataset.num_classes + 1))
    for r in tqdm(dataset.records, desc=f"writing COCO {split}", unit="img", disable=not progress, leave=False):
        place_image(r.image_path, out / split / image_names[r.image_path], copy_images)
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
    path = out / "annotations" / f"{COCO_PREFIX}{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path
