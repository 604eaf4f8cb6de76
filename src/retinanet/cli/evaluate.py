"""`retinanet eval`: COCO metrics (pycocotools) of a checkpoint or an exported model
(.onnx fp32 / int8, OpenVINO .xml, LiteRT .tflite) on a dataset, with the per-class table, PR curves, a
confusion matrix and drawn samples written to --out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.evaluation import EvalConfig
from .flags import add_device, add_flag, run_dir

RUNS = "runs/eval"  # each evaluation writes the next free RUNS/exp, exp2, ... unless --out names a folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalConfig
    p.add_argument("--model", required=True,
                   help="checkpoint (.pt) written by `retinanet train`, or a model `retinanet export` wrote (.onnx, .xml, .tflite)")  # fmt: skip
    p.add_argument("--data", required=True, help="dataset folder (COCO / VOC / YOLO), COCO json, or dataset spec / data.yaml")
    p.add_argument("--split", default="val", help="split of --data to evaluate (default: val)")
    p.add_argument("--out", help=f"folder for the metrics, detections and plots (default: the next free {RUNS}/exp, exp2, ...)")
    add_flag(p, "--batch", aliases=("--batch-size",), type=int, default=d.batch_size, help=f"images per batch (default: {d.batch_size})")
    p.add_argument("--workers", type=int, default=d.workers, help=f"image decoding processes (default: {d.workers})")
    p.add_argument("--conf", type=float, default=d.conf,
                   help="score threshold of the model's detections (default: the checkpoint's, 0.05)")
    p.add_argument("--agnostic-nms", action="store_const", const=True, default=d.agnostic,
                   help="class-agnostic NMS: a box also suppresses overlapping boxes of other classes")
    p.add_argument("--plot-conf", type=float, default=d.plot_conf,
                   help=f"score threshold of the confusion matrix and drawn images (default: {d.plot_conf})")
    p.add_argument("--no-plots", action="store_true", help="write metrics and detections only")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    add_device(p)
    p.add_argument("--drop-bad", action="store_true", help="leave out unusable images and boxes of --data instead of stopping")
    p.add_argument("--verbose", action="store_true", help="also print pycocotools' own output")


def run(args: argparse.Namespace) -> int:
    from ..api import EXPORT_SUFFIXES, Detector
    from ..checkpoint import model_from_checkpoint
    from ..data import load_dataset
    from ..evaluation import evaluate
    from ..evaluation.report import format_metrics, format_table
    from ..devices import torch_device

    if args.conf is not None and not 0.0 <= args.conf <= 1.0:
        raise ValueError(f"--conf must be in [0, 1], got {args.conf}")
    if not 0.0 <= args.plot_conf <= 1.0:
        raise ValueError(f"--plot-conf must be in [0, 1], got {args.plot_conf}")
    cfg = EvalConfig(batch_size=args.batch, workers=args.workers, conf=args.conf, plot_conf=args.plot_conf,
                     agnostic=args.agnostic_nms)
    # Image headers only: evaluation decodes every image anyway, and a broken one fails there naming its file.
    # The data before the model: a problem with it fails at once.
    dataset = load_dataset(args.data, args.split, check="header", drop_bad=args.drop_bad)
    kwargs = dict(plots=not args.no_plots, max_images=args.max_images, verbose=args.verbose)
    if Path(args.model).suffix.lower() in EXPORT_SUFFIXES:  # what ships, run by its own runtime
        detector = Detector(args.model, device=args.device, batch_size=args.batch)
        out = run_dir(args.out, RUNS)
        report = evaluate(detector, dataset, cfg, out_dir=out, **kwargs)
    else:
        model = model_from_checkpoint(args.model).to(torch_device(args.device, args.model))
        out = run_dir(args.out, RUNS)
        report = evaluate(model, dataset, cfg, out_dir=out, **kwargs)
    print(format_metrics(report.metrics))
    print()
    print(format_table(report.per_class))
    print(f"\nwrote {len(report.files)} files to {out}")
    return 0
