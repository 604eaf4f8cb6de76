"""`retinanet train`: fine-tune a MobileNet RetinaNet, evaluate it, show what it predicts.

    retinanet train                                   # built-in synthetic shapes: the demo
    retinanet train --data path/to/dataset epochs=50  # your data (COCO / VOC / YOLO / spec YAML)
    retinanet train --config run.yaml model.fpn.channels=96 train.lr=0.02
    retinanet train --resume runs/train/exp           # continue an interrupted run exactly
    torchrun --nproc_per_node 2 -m retinanet.cli train ...   # several processes (DDP)

Overrides are dotted ``key=value`` pairs into the RunConfig (model.*, data.*, train.*);
``epochs=``, ``batch=``, ``lr=`` are short for train.epochs / train.batch_size / train.lr.
"""

from __future__ import annotations

import argparse

from ..train import run_config, train

SHORTCUTS = {"epochs": "train.epochs", "batch": "train.batch_size", "lr": "train.lr", "data": "data.source"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.02 model.input_size=384")
    p.add_argument("--data", help="dataset folder, annotation file or spec YAML (default: built-in synthetic shapes)")
    p.add_argument("--preset", default="default", help="model preset: default, full, v1, v3, v3_small")
    p.add_argument("--config", help="YAML file with model/data/train sections")
    p.add_argument("--epochs", type=int, help="shortcut for train.epochs")
    p.add_argument("--name", help="run folder name under train.out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--no-final", action="store_true", help="skip the final evaluation with plots and the prediction demo")


def user_overrides(args: argparse.Namespace) -> list[str]:
    """The command line as config overrides: shortcuts expanded, flags last."""
    overrides = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        overrides.append(f"{SHORTCUTS.get(key, key)}{sep}{value}")
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.name:
        overrides.append(f"train.name={args.name}")
    return overrides


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.resume:
        if args.overrides or args.config or args.data:
            raise ValueError("--resume continues a run with its saved config; drop the other options")
        summary = train(resume=args.resume, progress=progress, final=not args.no_final)
    else:
        summary = train(run_config(args.preset, args.config, user_overrides(args)), progress=progress, final=not args.no_final)
    if summary.written:
        print(f"\nrun folder: {summary.run_dir}")
        for w in summary.written:
            print(f"  {w}")
    if summary.best_metrics:
        ap = summary.best_metrics
        print(f"best: AP {ap.get('AP', float('nan')):.3f}  AP50 {ap.get('AP50', float('nan')):.3f}  ({summary.run_dir / 'best.pt'})")
    return 0
