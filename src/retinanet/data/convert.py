"""`retinanet convert SOURCE --to coco|voc|yolo OUT`: rewrite a dataset in another format.

Every split of the source is converted (or only ``--split``); a source without splits is
written as split ``train``. The source is loaded with the same checks as training, so
what is written is what training would read. Images are symlinked (absolute targets)
unless ``--copy-images``. Output layouts:

    coco  OUT/annotations/instances_<split>.json, OUT/<split>/<image>, OUT/dataset.yaml
    voc   OUT/Annotations/<stem>.xml, OUT/JPEGImages/<image>, OUT/ImageSets/Main/<split>.txt,
          OUT/dataset.yaml (keeps the class order, which VOC files cannot)
    yolo  OUT/images/<split>/<image>, OUT/labels/<split>/<stem>.txt, OUT/data.yaml

YOLO has no ignore flag: crowd / difficult boxes are left out (and counted).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from .check import DataError
from .coco import COCO_PREFIX, write_coco
from .dataset import DetectionDataset
from .images import unique_file_names
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
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: folder is not empty; choose a new one or pass --overwrite to write into it")
    spec = resolve_source(source)
    if out.resolve() == spec.root.resolve():
        raise ValueError(f"{out}: is the source dataset's own folder; write the conversion elsewhere")

    splits = [split] if split else available_splits(source)
    datasets: dict[str, DetectionDataset] = {}
    for s in splits:
        name = DEFAULT_SPLIT_NAME if s == ALL else s
        datasets[name] = load_dataset(source, s, check=check, drop_bad=drop_bad, progress=progress)
    first = next(iter(datasets.values()))
    for name, ds in datasets.items():
        if ds.class_names != first.class_names:
            raise DataError(f"{source}: split {name!r} has different classes from the others; convert splits one by one")

    # One output name per source image across all splits, so a shared image is one file.
    paths = list(dict.fromkeys(r.image_path for ds in datasets.values() for r in ds.records))
    image_names = dict(zip(paths, unique_file_names(paths)))
    result = ConvertResult(out, to)
    out.mkdir(parents=True, exist_ok=True)
    spec_splits: dict[str, dict[str, str]] = {}
    for name, ds in datasets.items():
        if to == "coco":
            write_coco(ds, out, name, copy_images, image_names, progress)
            spec_splits[name] = {"images": name, "annotations": f"annotations/{COCO_PREFIX}{name}.json"}
            written = ds.num_boxes(include_ignored=True)
        elif to == "voc":
            write_voc(ds, out, name, copy_images, image_names, progress)
            spec_splits[name] = {
                "images": "JPEGImages",
                "annotations": "Annotations",
                "list": f"ImageSets/Main/{name}.txt",
            }
            written = ds.num_boxes(include_ignored=True)
        else:
            left_out = write_yolo(ds, out, name, copy_images, image_names, progress)
            result.left_out_ignored += left_out
            written = ds.num_boxes(include_ignored=True) - left_out
        result.splits[name] = (len(ds), written)
    if to == "yolo":
        result.spec_file = write_data_yaml(out, list(datasets), first.class_names)
    else:
        result.spec_file = write_spec(out / SPEC_FILE, to, first.class_names, spec_splits)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="dataset folder, COCO json, YOLO data.yaml or dataset spec YAML")
    p.add_argument("out", help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--to", required=True, choices=FORMATS, help="target format")
    p.add_argument("--split", help="convert only this split (default: every split of the source)")
    p.add_argument("--copy-images", action="store_true", help="copy images instead of symlinking them")
    p.add_argument("--drop-bad", action="store_true", help="leave out unusable entries instead of stopping")
    p.add_argument("--header-only", action="store_true", help="check image headers only, do not decode every image")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    result = convert(
        args.source,
        args.to,
        args.out,
        split=args.split,
        copy_images=args.copy_images,
        check="header" if args.header_only else True,
        drop_bad=args.drop_bad,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    for name, (n_images, n_boxes) in result.splits.items():
        print(f"{name}: {n_images} images, {n_boxes} boxes")
    if result.left_out_ignored:
        print(f"left out {result.left_out_ignored} crowd/difficult boxes: YOLO labels have no ignore flag")
    print(f"wrote {result.format} dataset to {result.out} (spec: {result.spec_file})")
    return 0
