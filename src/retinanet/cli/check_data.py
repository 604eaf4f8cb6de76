"""`retinanet check-data SOURCE`: validate a dataset and print every problem, the class
counts and box size histograms; exit 1 when training would stop on an error."""

from __future__ import annotations

import argparse

from ..data import DataReport, load_dataset
from ..data.report import FULL, HEADER
from ..data.spec import ALL

MAX_ISSUES = 20  # issues printed per kind; --out gets them all


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="dataset folder, COCO json, YOLO data.yaml or dataset spec YAML")
    p.add_argument("--split", default=ALL, help="train, val, test or all (default: all)")
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
    p.add_argument("--max-issues", type=int, default=MAX_ISSUES, help="issues printed per kind (all go to --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
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
