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

Nothing is written, unlinked or replaced outside OUT: a split name must be a plain folder
name (letters, digits, '_', '-', '.'), every target is checked to lie inside OUT, and an
OUT holding any of the source's files (images, annotations, spec) is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .coco import COCO_PREFIX, write_coco
from .dataset import DetectionDataset
from .files import lies_inside, output_path
from .images import unique_file_names
from .report import DataError
from .spec import ALL, FORMATS, SPEC_FILE, available_splits, load_dataset, resolve_source, write_spec
from .voc import write_voc
from .yolo import write_data_yaml, write_yolo

DEFAULT_SPLIT_NAME = "train"  # what a source without splits is written as
SPLIT_NAME = re.compile(r"\w[\w.-]*")  # a split name usable as one folder / file name part


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


def _output_split_name(source: str | Path, split: str) -> str:
    """The name split ``split`` is written under: a plain folder name, or DataError (it
    becomes part of output paths, and '../x' would lead them out of the output folder)."""
    name = DEFAULT_SPLIT_NAME if split == ALL else split
    if not SPLIT_NAME.fullmatch(name):
        raise DataError(
            f"{source}: split name {name!r} cannot name an output folder; rename it to letters, digits, '_', '-', '.'"
        )
    return name


def _load_splits(
    source: str | Path, split: str | None, check: bool | str, drop_bad: bool, progress: bool, allow_outside_root: bool
) -> dict[str, DetectionDataset]:
    """Output split name -> checked dataset, for ``split`` or every split of the source;
    all must have the same classes."""
    datasets: dict[str, DetectionDataset] = {}
    names = {s: _output_split_name(source, s) for s in ([split] if split else available_splits(source))}
    for s, name in names.items():
        datasets[name] = load_dataset(
            source, s, check=check, drop_bad=drop_bad, progress=progress, allow_outside_root=allow_outside_root
        )
    first = next(iter(datasets.values()))
    for name, ds in datasets.items():
        if ds.class_names != first.class_names:
            raise DataError(f"{source}: split {name!r} has different classes from the others; convert splits one by one")
    return datasets


def _check_sources_outside(source: str | Path, datasets: dict[str, DetectionDataset], out: Path) -> None:
    """Refuse an ``out`` that holds a file of the source (an image, annotation or spec, as
    named or with its links resolved): writing there would replace it."""
    if not out.is_dir() or not any(out.iterdir()):
        return  # an empty folder holds no source file
    files = [resolve_source(source).file] + [
        p for ds in datasets.values() for r in ds.records for p in (r.image_path, r.annotation_path)
    ]
    for p in dict.fromkeys(f for f in files if f is not None):
        if lies_inside(p, out) or lies_inside(p.resolve(), out):
            raise DataError(
                f"{out}: holds the source file {p}; writing there would replace it, choose another output folder"
            )


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
    allow_outside_root: bool = False,
) -> ConvertResult:
    """Convert ``source`` (anything ``load_dataset`` reads) to format ``to`` in folder ``out``."""
    out = Path(out)
    _check_target(source, to, out, overwrite)
    datasets = _load_splits(source, split, check, drop_bad, progress, allow_outside_root)
    _check_sources_outside(source, datasets, out)
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
        result.spec_file = write_spec(output_path(out, out / SPEC_FILE), to, class_names, spec_splits)
    return result
