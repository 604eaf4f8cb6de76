"""`retinanet predict SOURCE...`: run a checkpoint (.pt) or exported model (.onnx) on
images, folders, globs, video files or a webcam.

Writes into --output (default runs/predict):
  <image name>             the image with boxes drawn (unless --no-save)
  <video stem>.mp4         the annotated video
  labels/<stem>.txt        YOLO txt per image / frame (with --save-txt; + score with --save-conf)
  detections.json          COCO-style: images, annotations (with score), categories
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .api import Detector, Result, _file_to_chw, annotate, expand_images
from .data.images import ImageError, unique_file_names
from .video import VideoSink, VideoSource, is_video, is_webcam

DEFAULT_OUTPUT = "runs/predict"
JSON_NAME = "detections.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image, folder, glob ('imgs/*.jpg'), video file or webcam index (0)")
    p.add_argument("--model", help="checkpoint (.pt) or exported model (.onnx); default: an untrained --preset model")
    p.add_argument("--preset", default="default", help="preset of the untrained model used without --model")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default {DEFAULT_OUTPUT})")
    p.add_argument("--conf", type=float, default=None, help="score threshold (default: the model's, 0.05)")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: the model's, 0.5)")
    p.add_argument("--max-det", type=int, default=None, help="detections kept per image (default: the model's, 100)")
    p.add_argument("--classes", default=None, help="keep only these classes: comma-separated names or indices")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--save-txt", action="store_true", help="also write YOLO txt labels to OUTPUT/labels/")
    p.add_argument("--save-conf", action="store_true", help="append the score to each YOLO txt line")
    p.add_argument("--no-save", action="store_true", help="do not write annotated images / videos")
    p.add_argument("--max-frames", type=int, default=None, help="stop a video or webcam after this many frames")
    p.add_argument("--device", default="cpu", help="torch device for checkpoints (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: torch's thread count)")
    p.add_argument("--verbose", action="store_true", help="print every image's detections")


def build_detector(args: argparse.Namespace) -> Detector:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    if args.model:
        model: Any = args.model
    else:
        from .config import preset
        from .model import build_model

        print(f"no --model given: using an untrained {args.preset!r} model (its detections are noise)", file=sys.stderr)
        model = build_model(preset(args.preset))
    return Detector(
        model,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        classes=classes,
        device=args.device,
        threads=args.threads,
        batch_size=args.batch,
    )


class Writer:
    """Collects the COCO-style JSON and writes images, videos and YOLO txt files."""

    def __init__(self, out: Path, detector: Detector, save: bool, save_txt: bool, save_conf: bool):
        self.out, self.detector = out, detector
        self.save, self.save_txt, self.save_conf = save, save_txt, save_conf
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, result: Result, file_name: str, txt_stem: str, frame: int | None = None) -> int:
        image_id = len(self.images) + 1
        h, w = result.image_size
        entry: dict[str, Any] = {"id": image_id, "file_name": file_name, "width": w, "height": h}
        if frame is not None:
            entry["frame"] = frame
        self.images.append(entry)
        for det in result.to_coco(image_id):
            _, _, bw, bh = det["bbox"]
            self.annotations.append({"id": len(self.annotations) + 1, **det, "area": bw * bh, "iscrowd": 0})
        if self.save_txt:
            labels = self.out / "labels"
            labels.mkdir(exist_ok=True)
            lines = result.to_yolo(with_score=self.save_conf)
            (labels / f"{txt_stem}.txt").write_text("".join(line + "\n" for line in lines))
        return image_id

    def finish(self) -> Path:
        categories = [{"id": int(c), "name": n} for c, n in zip(self.detector.category_ids, self.detector.class_names)]
        path = self.out / JSON_NAME
        path.write_text(json.dumps({"images": self.images, "annotations": self.annotations, "categories": categories}))
        return path


def _predict_images(files: list[Path], det: Detector, writer: Writer, args: argparse.Namespace) -> int:
    """Batches of image files; returns the number of files that could not be read."""
    out_names = unique_file_names(files)
    failed = 0
    bar = tqdm(total=len(files), desc="images", unit="img", disable=len(files) < 2, file=sys.stderr)
    for start in range(0, len(files), args.batch):
        chunk, names = [], []
        for path, out_name in zip(files[start : start + args.batch], out_names[start : start + args.batch]):
            try:
                chunk.append(_file_to_chw(path))
                names.append((path, out_name))
            except ImageError as e:
                tqdm.write(f"skipped: {e}", file=sys.stderr)
                failed += 1
        for img, (path, out_name), result in zip(chunk, names, det.predict_tensors(chunk, [str(p) for p, _ in names])):
            writer.add(result, str(path), Path(out_name).stem)
            if writer.save:
                _save_image(annotate(img, result), writer.out / out_name)
            if args.verbose:
                _print_result(str(path), result)
        bar.update(len(files[start : start + args.batch]))
    bar.close()
    return failed


def _save_image(rgb: np.ndarray, path: Path) -> None:
    img = Image.fromarray(rgb)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=95)
    elif path.suffix.lower() in (".png", ".bmp", ".webp", ".tif", ".tiff"):
        img.save(path)
    else:
        img.save(path.with_suffix(".png"))


def _predict_video(source: str, det: Detector, writer: Writer, args: argparse.Namespace) -> None:
    import torch

    video = VideoSource(source, args.max_frames)
    stem = f"webcam{source}" if is_webcam(source) else Path(source).stem
    sink = VideoSink(writer.out / f"{stem}.mp4", video.fps) if writer.save else None
    bar = tqdm(total=video.total, desc=stem, unit="frame", file=sys.stderr)
    frame_idx = 0

    def flush(frames: list[np.ndarray]) -> None:
        nonlocal frame_idx
        tensors = [torch.from_numpy(f).permute(2, 0, 1) for f in frames]  # (H, W, 3) -> (3, H, W)
        for frame, result in zip(frames, det.predict_tensors(tensors, [source] * len(frames))):
            writer.add(result, source, f"{stem}_{frame_idx:06d}", frame=frame_idx)
            if sink is not None:
                sink.write(annotate(frame, result))
            if args.verbose:
                _print_result(f"{source}#{frame_idx}", result)
            frame_idx += 1
        bar.update(len(frames))

    pending: list[np.ndarray] = []
    try:
        for frame in video:
            pending.append(frame)
            if len(pending) == args.batch:
                flush(pending)
                pending = []
        if pending:
            flush(pending)
    except KeyboardInterrupt:  # a webcam runs until interrupted: keep what was written
        if pending:
            flush(pending)
    finally:
        bar.close()
        if sink is not None:
            sink.close()


def _print_result(name: str, r: Result) -> None:
    print(f"{name}: {len(r)} detections")
    for (x1, y1, x2, y2), s, n in zip(r.boxes.tolist(), r.scores.tolist(), r.names):
        print(f"  {n:>14s} {s:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")


def run(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {args.max_frames}")
    # Resolve every source before loading the model, so a typo fails at once.
    images: list[Path] = []
    videos: list[str] = []
    for src in args.sources:
        if is_video(src):
            if not is_webcam(src) and not Path(src).is_file():
                raise FileNotFoundError(f"{src}: video file not found")
            videos.append(src)
        else:
            images += expand_images(src)
    det = build_detector(args)
    writer = Writer(Path(args.output), det, not args.no_save, args.save_txt, args.save_conf)
    failed = _predict_images(images, det, writer, args) if images else 0
    for src in videos:
        _predict_video(src, det, writer, args)
    path = writer.finish()
    n_img = len(writer.images)
    if n_img == 0:
        raise RuntimeError(f"none of the {len(images)} images could be read")
    print(
        f"{n_img} {'frames/images' if videos else 'images'}, {len(writer.annotations)} detections "
        f"({det.backend_name}) -> {path}" + (f"; {failed} unreadable images skipped" if failed else "")
    )
    return 0
