"""Object crops: a detection dataset turned into a classification folder (one JPEG per
object, ImageNet layout), so a user can pretrain on the objects of their own domain."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from tqdm import tqdm

from ..config import CropConfig, to_dict
from ..data import load_dataset
from ..data.dataset import DetectionDataset
from ..data.images import open_image

CROPS_MANIFEST = "crops.json"

# (box area, record index, box index) of one object chosen for a crop
Choice = tuple[float, int, int]


def _folder_name(class_name: str) -> str:
    """A class name as a folder name: path separators and odd characters become '_'."""
    name = re.sub(r"[^\w\-. +]+", "_", class_name).strip(" .")
    return name or "_"


def _wanted_labels(dataset: DetectionDataset, classes: list[str] | None) -> set[int]:
    if classes is None:
        return set(range(dataset.num_classes))
    unknown = sorted(set(classes) - set(dataset.class_names))
    if unknown:
        raise ValueError(f"classes {', '.join(unknown)} are not in the dataset (it has {', '.join(dataset.class_names)})")
    return {dataset.class_names.index(c) for c in classes}


def _choose_boxes(dataset: DetectionDataset, cfg: CropConfig, wanted: set[int]) -> dict[int, list[Choice]]:
    """label -> the boxes to crop, from the annotations only (no image is decoded): not
    ignored, at least min_size, classes with min_per_class of them, the largest first
    when max_per_class caps them."""
    chosen: dict[int, list[Choice]] = {}
    for ri, rec in enumerate(dataset.records):
        wh = rec.boxes[:, 2:] - rec.boxes[:, :2]  # (G, 2)
        for bi, label in enumerate(rec.labels.tolist()):
            if label in wanted and not rec.ignore[bi] and wh[bi].min() >= cfg.min_size:
                chosen.setdefault(label, []).append((float(wh[bi, 0] * wh[bi, 1]), ri, bi))
    kept: dict[int, list[Choice]] = {}
    for label, items in chosen.items():
        if len(items) < cfg.min_per_class:
            continue
        if cfg.max_per_class > 0:
            items = sorted(items, key=lambda t: -t[0])[: cfg.max_per_class]
        kept[label] = items
    if len(kept) < 2:
        raise ValueError(
            f"{dataset.root or 'dataset'}: only {len(kept)} class(es) have {cfg.min_per_class}+ boxes of at least "
            f"{cfg.min_size} px; a classifier needs 2 (lower min_size / min_per_class)"
        )
    return kept


def _write_crops(
    dataset: DetectionDataset, kept: dict[int, list[Choice]], folders: dict[int, str], out_dir: Path, cfg: CropConfig,
    progress: bool,
) -> dict[str, int]:  # fmt: skip
    """Decode each image once and save its chosen boxes, with margin, as JPEGs."""
    by_record: dict[int, list[tuple[int, int]]] = {}  # record index -> [(box index, label)]
    for label, items in kept.items():
        for _, ri, bi in items:
            by_record.setdefault(ri, []).append((bi, label))
    counts = {dataset.class_names[label]: 0 for label in sorted(kept)}
    for label in kept:
        (out_dir / folders[label]).mkdir(parents=True, exist_ok=True)
    for ri in tqdm(sorted(by_record), desc="crops", unit="image", disable=not progress):
        rec = dataset.records[ri]
        img = open_image(rec.image_path)
        for bi, label in by_record[ri]:
            x1, y1, x2, y2 = rec.boxes[bi].tolist()
            mx, my = cfg.margin * (x2 - x1), cfg.margin * (y2 - y1)
            box = (
                max(0, math.floor(x1 - mx)),
                max(0, math.floor(y1 - my)),
                min(img.width, math.ceil(x2 + mx)),
                min(img.height, math.ceil(y2 + my)),
            )
            img.crop(box).save(out_dir / folders[label] / f"{rec.image_id}_{bi}.jpg", quality=cfg.quality)
            counts[dataset.class_names[label]] += 1
    return counts


def make_crops(
    dataset: DetectionDataset,
    out_dir: str | Path,
    cfg: CropConfig | None = None,
    classes: list[str] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write one JPEG per object of ``dataset`` into ``out_dir/<class name>/`` (ImageNet layout)
    and a ``crops.json`` manifest; return the number of crops per class.

    Ignored boxes (COCO crowd, VOC difficult) and boxes smaller than ``cfg.min_size`` are
    skipped; ``classes`` restricts the output to those class names.
    """
    cfg = cfg or CropConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: crop folder exists and is not empty; choose a new folder or delete it")
    kept = _choose_boxes(dataset, cfg, _wanted_labels(dataset, classes))
    folders = {label: _folder_name(dataset.class_names[label]) for label in kept}
    if len(set(folders.values())) != len(folders):
        raise ValueError(f"class names {sorted(folders.values())} collide once made into folder names")
    counts = _write_crops(dataset, kept, folders, out_dir, cfg, progress)
    manifest = {
        "source": str(dataset.root) if dataset.root else None,
        "format": dataset.format,
        "settings": to_dict(cfg),
        "counts": counts,
        "folders": {dataset.class_names[k]: v for k, v in sorted(folders.items())},
    }
    (out_dir / CROPS_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return counts


def detection_crops(
    source: str | Path, split: str, crops_dir: str | Path, cfg: CropConfig | None = None, classes: list[str] | None = None
) -> dict[str, int] | None:
    """The crop folder of ``source``'s ``split`` in ``crops_dir``: made by ``make_crops``
    (returns its counts), or reused as it is when ``crops_dir`` already holds a
    ``crops.json`` (returns None)."""
    if (Path(crops_dir) / CROPS_MANIFEST).is_file():
        return None
    return make_crops(load_dataset(source, split), crops_dir, cfg, classes=classes)
