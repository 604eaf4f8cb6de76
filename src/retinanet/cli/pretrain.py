"""`retinanet pretrain`: train a MobileNet backbone as an image classifier, on a folder
of class subfolders or on the object crops of a detection dataset."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from ..config import CropConfig, PretrainConfig
from ..config.model import BACKBONE_NAMES
from ..config.pretrain import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, OPTIMIZERS, REFERENCE_BATCH
from .flags import DEVICE_HELP, add_classes, add_flag, class_list

CONFIG_ARGS = tuple(f.name for f in fields(PretrainConfig))


def add_arguments(p: argparse.ArgumentParser) -> None:
    D = PretrainConfig
    p.add_argument("data_dir", nargs="?", help="folder of class subfolders, or with train/ and val/ subfolders of that form")
    p.add_argument("--backbone", default=None, help=f"{' | '.join(BACKBONE_NAMES)} (default: {D.backbone})")
    p.add_argument("--width", type=float, default=None, help=f"width multiplier of MobileNetV1 (default: {D.width})")
    p.add_argument("--weights", default=None, help=f"imagenet | none | PATH to start from (default: {D.weights})")
    p.add_argument("--epochs", type=int, default=None, help=f"default: {D.epochs}")
    add_flag(p, "--batch", aliases=("--batch-size",), dest="batch_size", metavar="N", type=int, default=None, help=f"images per step (default: {D.batch_size})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"default: {D.optimizer}")
    p.add_argument("--lr", type=float, default=None, help=(
        f"peak learning rate; default for batch {REFERENCE_BATCH} (scaled linearly with --batch): "
        + ", ".join(f"{o} {d['pretrained']:g} / {d['scratch']:g}" for o, d in DEFAULT_LR.items())
        + " (from weights / from scratch)"))
    p.add_argument("--weight-decay", type=float, default=None, help=f"default: {DEFAULT_WEIGHT_DECAY['sgd']} sgd, {DEFAULT_WEIGHT_DECAY['adamw']} adamw")
    p.add_argument("--warmup-epochs", type=float, default=None, help=f"default: {D.warmup_epochs}")
    p.add_argument("--label-smoothing", type=float, default=None, help=f"default: {D.label_smoothing}")
    p.add_argument("--clip-grad", type=float, default=None, help=f"max gradient norm, 0 = off (default: {D.clip_grad})")
    add_flag(p, "--imgsz", aliases=("--img-size",), dest="img_size", metavar="SIZE", type=int, default=None, help=f"input size (default: {D.img_size})")
    p.add_argument("--val-split", type=float, default=None, help=f"held-out fraction when DATA_DIR has no val/ (default: {D.val_split})")
    p.add_argument("--workers", type=int, default=None, help=f"data loading processes (default: {D.workers})")
    p.add_argument("--seed", type=int, default=None, help=f"default: {D.seed}")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--out", default=None, help="output folder (default: runs/pretrain/BACKBONE, numbered if taken)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue the run in --out (its last.pth) or from PATH; only --epochs/--workers/--device may change")  # fmt: skip
    g = p.add_argument_group("crops from a detection dataset")
    C = CropConfig
    g.add_argument("--from-detection", metavar="SOURCE", help="detection dataset (COCO json, VOC or YOLO folder) whose object crops are the classes")
    g.add_argument("--from-split", default="train", help="split of SOURCE to crop; keep the detector's val/test images out (default: train)")
    g.add_argument("--crops-out", metavar="DIR", help="where the crop folder is written (default: OUT/crops); an existing crop folder is reused")
    add_classes(g, help="keep only these classes of the detection dataset: names, comma-separated, or the flag repeated")
    g.add_argument("--min-crop", type=int, default=C.min_size, help=f"skip boxes smaller than this many pixels (default: {C.min_size})")
    g.add_argument("--crop-margin", type=float, default=C.margin, help=f"context around each box, fraction of its size (default: {C.margin})")
    g.add_argument("--min-per-class", type=int, default=C.min_per_class, help=f"drop classes with fewer crops (default: {C.min_per_class})")
    g.add_argument("--max-per-class", type=int, default=C.max_per_class, help="keep at most this many crops per class, largest first (default: all)")
    g.add_argument("--crops-only", action="store_true", help="write the crop folder and stop")


def _crops(args: argparse.Namespace, out_dir: Path) -> Path:
    """The crop folder of --from-detection, made now or reused."""
    from ..pretrain import CROPS_MANIFEST, detection_crops

    crops = Path(args.crops_out) if args.crops_out else out_dir / "crops"
    cfg = CropConfig(
        min_size=args.min_crop, margin=args.crop_margin, min_per_class=args.min_per_class, max_per_class=args.max_per_class
    )
    counts = detection_crops(args.from_detection, args.from_split, crops, cfg, classes=class_list(args.classes))
    if counts is None:
        print(f"using the existing crops in {crops} ({CROPS_MANIFEST} found)")
    else:
        print(f"{sum(counts.values())} crops of {len(counts)} classes -> {crops}")
    return crops


def _data_dir(args: argparse.Namespace, out_dir: Path) -> Path | None:
    """DATA_DIR, or the crop folder of --from-detection (None: --crops-only, nothing to train)."""
    if args.from_detection:
        if args.data_dir:
            raise ValueError("give either DATA_DIR or --from-detection SOURCE, not both")
        crops = _crops(args, out_dir)
        return None if args.crops_only else crops
    if not args.data_dir:
        raise ValueError("give DATA_DIR (a folder of class subfolders) or --from-detection SOURCE")
    if args.crops_only:
        raise ValueError("--crops-only needs --from-detection SOURCE")
    return Path(args.data_dir)


def run(args: argparse.Namespace) -> int:
    from ..pretrain import plan_run, pretrain

    given = {name: getattr(args, name) for name in CONFIG_ARGS if getattr(args, name, None) is not None}
    cfg, out_dir, saved_path = plan_run(given, args.out, args.resume)
    data_dir = _data_dir(args, out_dir)
    if data_dir is not None:
        pretrain(data_dir, cfg, out_dir, resume=saved_path or False)
    return 0
