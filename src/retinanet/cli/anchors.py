"""`retinanet anchors`: best possible recall of a preset's anchors on a dataset, and
anchors fitted to it (printed as config overrides)."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import PRESETS, apply_overrides, preset
from .flags import add_flag

MODEL_PREFIX = "model."  # overrides are written as for `retinanet train`


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="dataset folder, COCO json or dataset spec yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="model.key=value",
        help="model config overrides, e.g. model.anchors.sizes=[16,32,64,128,256] model.loss.fg_iou=0.4",
    )
    p.add_argument("--split", default="train", help="split to measure (default: train)")
    p.add_argument("--preset", default="default", choices=PRESETS, help="model preset whose anchors are measured")
    add_flag(p, "--imgsz", aliases=("--input-size",), type=int, default=None, help="input size (default: the preset's)")
    p.add_argument("--drop-bad", action="store_true", help="leave out unusable images and boxes instead of stopping")
    p.add_argument(
        "--fit",
        nargs=2,
        type=int,
        metavar=("N_SCALES", "N_RATIOS"),
        help="fit this many anchor scales and aspect ratios to the boxes and compare",
    )
    p.add_argument("--plot", metavar="PNG", help="write box shapes vs anchor shapes to this PNG")
    p.add_argument("--seed", type=int, default=0, help="seed of the fitting search (default: 0)")


def run(args: argparse.Namespace) -> int:
    from ..anchor_fit import anchor_report, format_report, plot_report
    from ..coverage import fit_to_data, format_table
    from ..data import load_dataset

    cfg = preset(args.preset)
    bad = [o for o in args.overrides if not o.startswith(MODEL_PREFIX)]
    if bad:
        raise ValueError(f"only model.* overrides apply here, got {', '.join(bad)}")
    apply_overrides(cfg, [o[len(MODEL_PREFIX) :] for o in args.overrides])
    if args.imgsz is not None:
        if args.imgsz < 32:
            raise ValueError(f"--imgsz must be at least 32, got {args.imgsz}")
        cfg.input_size = args.imgsz
    if args.fit is not None and min(args.fit) < 1:
        raise ValueError(f"--fit needs at least 1 scale and 1 ratio, got {args.fit[0]} {args.fit[1]}")
    dataset = load_dataset(args.source, args.split, check="header", drop_bad=args.drop_bad)
    check = fit_to_data(cfg, dataset, fit=cfg.anchors.fit)  # what `retinanet train` does before its first step
    cfg = dataclasses.replace(cfg, input_size=check.cfg.input_size)  # auto resolved; the configured anchors measured
    report = anchor_report(dataset, cfg, fit=tuple(args.fit) if args.fit else None, seed=args.seed, progress=True)
    print(f"{args.source} [{args.split}]: {len(dataset)} images, preset {args.preset}")
    print(format_report(report))
    print("\n`retinanet train` with this config starts with:\n" + "\n".join(check.lines))
    print(format_table(check.after))
    if args.fit:
        extra = "".join(f" {o}" for o in args.overrides if not o.startswith("model.anchors.scales=") and not o.startswith("model.anchors.ratios="))
        size = f" imgsz={cfg.input_size}" if args.imgsz is not None else ""
        fixed = " model.anchors.fit=false"  # these scales and ratios, not a refit at the start of training
        print(f"train with them: retinanet train --data {args.source} --preset {args.preset}{extra}{size} {_fitted(report)}{fixed}")
    if args.plot:
        print(f"plot: {plot_report(report, args.plot)}")
    return 0


def _fitted(report) -> str:
    from ..anchor_fit import overrides

    return overrides(report.fitted.scales, report.fitted.ratios)
