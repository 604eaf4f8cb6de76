"""`retinanet predict`: run a model on images and print what comes out."""

from __future__ import annotations

import argparse


from .checkpoint import model_from_checkpoint
from .config import preset
from .data.images import read_image
from .model import build_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", help="image files")
    p.add_argument("--model", help="checkpoint (.pt); default: an untrained model of --preset")
    p.add_argument("--preset", default="default", help="preset used without --model")
    p.add_argument("--conf", type=float, default=None, help="score threshold (default: the model's)")


def run(args: argparse.Namespace) -> int:
    model = model_from_checkpoint(args.model) if args.model else build_model(preset(args.preset)).eval()
    if args.conf is not None:
        model.cfg.postprocess.score_thresh = args.conf
    for src in args.sources:
        det = model.predict(read_image(src))[0]
        print(f"{src}: {len(det)} detections")
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            x1, y1, x2, y2 = box
            print(f"  {model.class_names[label]:>14s} {score:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
    return 0
