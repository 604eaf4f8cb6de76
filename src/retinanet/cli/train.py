"""`retinanet train`: fine-tune a MobileNet RetinaNet, evaluate it, show what it predicts.

    retinanet train                                   # built-in synthetic shapes: the demo
    retinanet train --data path/to/dataset --epochs 50  # your data (COCO / VOC / YOLO / spec YAML)
    retinanet train --data data.yaml imgsz=416 batch=16  # Ultralytics' key spellings work too
    retinanet train --config run.yaml model.fpn.channels=96 train.lr=0.02
    retinanet train --resume runs/train/exp           # continue an interrupted run exactly
    retinanet train --resume runs/train/exp epochs=60 # train a finished run longer
    retinanet train --data other/data --weights runs/train/exp/best.pt  # fine-tune a trained detector
    torchrun --nproc_per_node 2 -m retinanet.cli train ...   # several processes (DDP)

Overrides are dotted ``key=value`` pairs into the RunConfig (model.*, data.*, train.*);
``epochs=``, ``batch=``, ``imgsz=``, ``lr=``, ... are short for the keys in
config.io.KEY_ALIASES. Each flag below sets one key (FLAG_KEYS), after the overrides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import RunConfig, apply_overrides
from ..config.io import expand_aliases
from ..train import run_config, train
from .flags import DEVICE_HELP, add_flag

# flag (argparse dest) -> the config key it sets
FLAG_KEYS = {
    "data": "data.source", "epochs": "train.epochs", "batch": "train.batch_size", "imgsz": "model.input_size",
    "device": "train.device", "workers": "data.workers", "weights": "train.weights", "name": "train.name",
}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.02 model.fpn.channels=96 imgsz=384 (retinanet cfg lists every key)")
    p.add_argument("--data", help="dataset folder, annotation file or spec YAML (default: built-in synthetic shapes)")
    p.add_argument("--preset", default="default", help="model preset: default, full, v1, v3, v3_small")
    p.add_argument("--config", help="YAML file with model/data/train sections")
    p.add_argument("--epochs", type=int, help="passes over the training split (train.epochs)")
    add_flag(p, "--batch", aliases=("--batch-size",), type=int, help="images per step (train.batch_size)")
    p.add_argument("--imgsz", help="input size in pixels, or auto (model.input_size)")
    p.add_argument("--device", help=f"{DEVICE_HELP.removesuffix(' (default: auto)')} (train.device, default auto)")
    p.add_argument("--workers", type=int, help="data loading processes (data.workers)")
    p.add_argument("--weights", help="a trained detector (best.pt or last.pt) to fine-tune from (train.weights)")
    p.add_argument("--drop-bad", action="store_true", help="leave out unusable images and boxes instead of stopping (data.drop_bad)")
    p.add_argument("--out", help="the run folder (default: the next free runs/train/exp, exp2, ...)")
    p.add_argument("--name", help="run folder name under train.out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--no-final", action="store_true", help="skip the final evaluation with plots and the prediction demo")


def user_overrides(args: argparse.Namespace) -> list[str]:
    """The command line as config overrides: key aliases expanded, flags last."""
    overrides = expand_aliases(args.overrides)
    overrides += [f"{key}={getattr(args, dest)}" for dest, key in FLAG_KEYS.items() if getattr(args, dest) not in (None, "")]
    if args.drop_bad:
        overrides.append("data.drop_bad=true")
    if args.out:
        out = Path(args.out) if Path(args.out).name not in ("", ".", "..") else Path(args.out).resolve()
        overrides += [f"train.out={out.parent}", f"train.name={out.name}"]
    return overrides


def _check_new(cfg) -> None:
    """A named run folder that already holds a run is not trained over."""
    if cfg.train.name and (Path(cfg.train.out) / cfg.train.name / "last.pt").exists():
        run_dir = Path(cfg.train.out) / cfg.train.name
        raise ValueError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} or choose another --out")


RESUME_KEYS = ("train.epochs", "train.patience")  # all a resumed run may change: train longer, stop otherwise


def _resume_changes(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """--resume's new epochs and patience (None: as saved); any other option is refused."""
    overrides = user_overrides(args)
    given = {item.partition("=")[0] for item in overrides}
    if args.config or not given <= set(RESUME_KEYS):
        raise ValueError("--resume continues a run with its saved config; only epochs= (to train longer) and patience= may change")
    t = apply_overrides(RunConfig(), overrides).train
    return (t.epochs if "train.epochs" in given else None, t.patience if "train.patience" in given else None)


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.resume:
        epochs, patience = _resume_changes(args)
        summary = train(resume=args.resume, progress=progress, final=not args.no_final, epochs=epochs, patience=patience)
    else:
        cfg = run_config(args.preset, args.config, user_overrides(args))
        _check_new(cfg)
        summary = train(cfg, progress=progress, final=not args.no_final)
    if summary.written:
        print(f"\nrun folder: {summary.run_dir}")
        for w in summary.written:
            print(f"  {w}")
    if summary.best_metrics:
        ap = summary.best_metrics
        print(f"best: AP {ap.get('AP', float('nan')):.3f}  AP50 {ap.get('AP50', float('nan')):.3f}  ({summary.run_dir / 'best.pt'})")
    return 0
