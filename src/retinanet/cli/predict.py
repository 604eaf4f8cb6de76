"""`retinanet predict SOURCE...`: run a checkpoint (.pt) or exported model (.onnx, .xml, .tflite) on
images, folders, globs, image URLs, video files, video streams or a webcam (see
retinanet.predict for the outputs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..api import Detector
from ..config import PredictConfig, preset
from ..predict import check_config, predict, resolve_sources
from .flags import add_classes, add_device, add_flag, class_list, run_dir

D = PredictConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image, folder, glob ('imgs/*.jpg'), image URL, video file, stream (rtsp://, http MJPEG) or webcam index (0)")
    p.add_argument("--model", help="checkpoint (.pt) or exported model (.onnx, OpenVINO .xml, LiteRT .tflite); default: an untrained --preset model")
    p.add_argument("--preset", default="default", help="preset of the untrained model used without --model")
    add_flag(p, "--out", aliases=("--output",), help=f"output folder (default: the next free {D.out}/exp, exp2, ...)")
    p.add_argument("--conf", type=float, default=D.conf, help=f"score threshold (default: the one the model stores, else {D.fallback_conf})")
    p.add_argument("--iou", type=float, default=D.iou, help="NMS IoU threshold (default: the model's, 0.5)")
    p.add_argument("--max-det", type=int, default=D.max_det, help="detections kept per image (default: the model's, 100)")
    p.add_argument("--agnostic-nms", action="store_const", const=True, default=D.agnostic,
                   help="class-agnostic NMS: a box also suppresses overlapping boxes of other classes")
    add_classes(p)
    p.add_argument("--batch", type=int, default=D.batch, help=f"images per forward pass (default {D.batch})")
    p.add_argument("--save-txt", action="store_true", help="also write YOLO txt labels to OUT/labels/")
    p.add_argument("--save-conf", action="store_true", help="append the score to each YOLO txt line")
    p.add_argument("--no-save", action="store_true", help="do not write annotated images / videos")
    p.add_argument("--max-frames", type=int, default=D.max_frames, help=f"stop a video, stream or webcam after this many frames (default: all of a file or webcam, {D.stream_max_frames} of a network stream)")
    add_device(p)
    p.add_argument("--threads", type=int, default=D.threads, help="ONNX Runtime threads (default: torch's thread count)")
    p.add_argument("--verbose", action="store_true", help="print every image's detections")
    p.add_argument("--track", action="store_true", help="follow objects through each video (ByteTrack): ids on the video, OUT/tracks/<video>.txt")


def config_from_args(args: argparse.Namespace) -> PredictConfig:
    return PredictConfig(
        out=str(run_dir(args.out, D.out)), conf=args.conf, iou=args.iou, max_det=args.max_det, agnostic=args.agnostic_nms,
        classes=",".join(class_list(args.classes) or []),
        batch=args.batch, save=not args.no_save, save_txt=args.save_txt, save_conf=args.save_conf,
        max_frames=args.max_frames, device=_device(args.device), threads=args.threads, verbose=args.verbose,
        track=getattr(args, "track", False),
    )  # fmt: skip


def _device(name: str) -> str:
    """``--device`` checked as a device name (CUDA: present); the model's format decides what it means (retinanet.devices)."""
    from ..devices import check_present

    return check_present(name, setting="--device")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_config(cfg)
    sources = resolve_sources(args.sources)  # before loading the model: a typo fails at once
    model: Any = args.model
    if not model:
        print(f"no --model given: using an untrained {args.preset!r} model (its detections are noise)", file=sys.stderr)
        from ..model import build_model  # only here: torchvision is not needed for an ONNX model

        model = build_model(preset(args.preset))
    det = Detector(
        model, conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det, classes=cfg.class_list(), agnostic=cfg.agnostic,
        device=cfg.device, threads=cfg.threads, batch_size=cfg.batch,
    )  # fmt: skip
    done = predict(det, sources, cfg)
    print(
        f"{done.images} {'frames/images' if sources.videos else 'images'}, {done.detections} detections "
        f"({det.backend_name}) -> {done.json_path}"
        + (f"; {done.failed} unreadable images skipped" if done.failed else "")
    )
    if cfg.track:
        print(f"tracks (MOTChallenge text): {Path(cfg.out) / 'tracks'}")
    return 0
