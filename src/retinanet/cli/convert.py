"""`retinanet convert SOURCE OUT --to coco|voc|yolo`: rewrite a dataset in another format
(see retinanet.data.convert for the output layouts)."""

from __future__ import annotations

import argparse

from ..data.convert import convert
from ..data.report import FULL, HEADER
from ..data.spec import FORMATS


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
        check=HEADER if args.header_only else FULL,
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
