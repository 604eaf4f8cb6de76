"""Rewrite a dataset in another format (what `retinanet convert` runs).

Every split of the source is converted (or only ``split``); a source without splits is
written as split ``train``. The source is loaded with the same checks as training, so
what is written is what training would read. Images are symlinked (absolute targets)
unless ``copy_images``. Output layouts:

    coco  OUT/annotations/instances_<split>.json, OUT/<split>/<image>, OUT/dataset.yaml
    voc   OUT/Annotations/<stem>.xml, OUT/JPEGImages/<image>, OUT/ImageSets/Main/<split>.txt,
          OUT/dataset.yaml (keeps the class order, which VOC files cannot)
    yolo  OUT/images/<split>/<image>, OUT/labels/<split>/<stem>.txt, OUT/data.yaml

YOLO has no ignore flag: crowd / difficult boxes are left out (and counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .coco import COCO_PREFIX, write_coco
from .dataset import DetectionDataset
from .images import unique_file_names
from .report import DataError
from .spec import ALL, FORMATS, SPEC_FILE, available_splits, load_dataset, resolve_source, write_spec
from .voc import write_voc
from .yolo import write_data_yaml, write_yolo

DEFAULT_SPLIT_NAME = "train"  # what a source without splits is written as


@dataclass
class ConvertResult:
    out: Path
    format: str
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)
    """split -> (images, boxes written)"""
    left_out_ignored: int = 0
    """Crowd / difficult boxes not written (YOLO cannot express them)."""
    spec_file: Path | None = None


def _check_target(source: str | Path, to: str, out: Path, overwrite: bool) -> None:
    """Refuse an unknown format, a non-folder or non-empty ``out`` (without ``overwrite``)
    and writing into the source's own folder."""
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}; choose one of {', '.join(FORMATS)}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: folder is not empty; choose a new one or pass --overwrite to write into it")
    if out.resolve() == resolve_source(source).root.resolve():
        raise ValueError(f"{out}: is the source dataset's own folder; write the conversion elsewhere")


def _load_splits(
    source: str | Path, split: str | None, check: bool | str, drop_bad: bool, progress: bool
) -> dict[str, DetectionDataset]:
    """Output split name -> checked dataset, for ``split`` or every split of the source;
    all must have the same classes."""
    datasets: dict[str, DetectionDataset] = {}
    for s in [split] if split else available_splits(source):
        name = DEFAULT_SPLIT_NAME if s == ALL else s
        datasets[name] = load_dataset(source, s, check=check, drop_bad=drop_bad, progress=progress)
    first = next(iter(datasets.values()))
    for name, ds in datasets.items():
        if ds.class_names != first.class_names:
            raise DataError(f"{source}: split {name!r} has different classes from the others; convert splits one by one")
    return datasets


def _write_split(
    ds: DetectionDataset, to: str, out: Path, name: str, copy_images: bool, image_names: dict[Path, str], progress: bool
) -> tuple[int, dict[str, str] | None]:
    """Write one split; returns the ignored boxes left out and the split's dataset spec
    entry (None for YOLO, whose data.yaml names image folders only)."""
    if to == "coco":
        write_coco(ds, out, name, copy_images, image_names, progress)
        return 0, {"images": name, "annotations": f"annotations/{COCO_PREFIX}{name}.json"}
    if to == "voc":
        write_voc(ds, out, name, copy_images, image_names, progress)
        return 0, {"images": "JPEGImages", "annotations": "Annotations", "list": f"ImageSets/Main/{name}.txt"}
    return write_yolo(ds, out, name, copy_images, image_names, progress), None


def convert(
    source: str | Path,
    to: str,
    out: str | Path,
    split: str | None = None,
    copy_images: bool = False,
    check: bool | str = True,
    drop_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertResult:
    """Convert ``source`` (anything ``load_dataset`` reads) to format ``to`` in folder ``out``."""
    out = Path(out)
    _check_target(source, to, out, overwrite)
    datasets = _load_splits(source, split, check, drop_bad, progress)
    # One output name per source image across all splits, so a shared image is one file.
    paths = list(dict.fromkeys(r.image_path for ds in datasets.values() for r in ds.records))
    image_names = dict(zip(paths, unique_file_names(paths)))
    result = ConvertResult(out, to)
    out.mkdir(parents=True, exist_ok=True)
    spec_splits: dict[str, dict[str, str]] = {}
    for name, ds in datasets.items():
        left_out, entry = _write_split(ds, to, out, name, copy_images, image_names, progress)
        if entry is not None:
            spec_splits[name] = entry
        result.left_out_ignored += left_out
        result.splits[name] = (len(ds), ds.num_boxes(include_ignored=True) - left_out)
    class_names = next(iter(datasets.values())).class_names
    if to == "yolo":
        result.spec_file = write_data_yaml(out, list(datasets), class_names)
    else:
        result.spec_file = write_spec(out / SPEC_FILE, to, class_names, spec_splits)
    return result
