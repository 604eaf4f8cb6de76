"""Running a Detector over what a user points it at: image files, folders, globs, http(s)
URLs of images, video files, video streams and webcams, writing what `retinanet predict`
promises into one folder:

  <image name>             the image with boxes drawn (unless save is off; a JPEG above
                           images.DRAFT_MIN_PIXELS at the reduced size it decoded at; an
                           image URL by its address's last part, made a safe file name)
  <video stem>.mp4         the annotated video (a stream: its address's last part; two
                           videos of the same stem get a number added, as images do)
  labels/<stem>.txt        YOLO txt per image / frame (save_txt; + score with save_conf)
  detections.json          COCO-style: images, annotations (with score), categories

Boxes in the JSON and txt files are in the file's own pixels, whatever size it decoded at.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .api import Detector
from .config import PredictConfig
from .data.images import ImageError, read_image_for, unique_file_names
from .results import Result, annotate, save_rgb
from .sources import (
    expand_images,
    is_url,
    read_url,
    source_kind,
    url_file_name,
    video_stem,
)
from .video import VideoSink, VideoSource, is_stream, is_webcam

JSON_NAME = "detections.json"


@dataclass
class Sources:
    """What a list of sources resolves to, before any model is loaded (a typo fails at once)."""

    images: list[Path | str] = field(default_factory=list)
    """Image files, and image URLs (str)."""
    videos: list[str] = field(default_factory=list)
    """Video files, stream addresses and webcam indices."""


def resolve_sources(sources: list[str]) -> Sources:
    """Each source checked and sorted into images and videos (a URL without an image or
    video suffix is asked for its Content-Type)."""
    out = Sources()
    for src in sources:
        if source_kind(src) == "video":
            if not is_webcam(src) and not is_stream(src) and not Path(src).is_file():
                raise FileNotFoundError(f"{src}: video file not found")
            out.videos.append(src.strip() if is_stream(src) else src)
        elif is_url(src):
            out.images.append(src.strip())
        else:
            out.images += expand_images(src)
    return out


def _free_stem(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem_1``, ``stem_2``, ... : the first not in ``taken`` (lower case), then taken."""
    name, k = stem, 1
    while name.lower() in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name.lower())
    return name


def output_names(items: list[Path | str], videos: list[str] | None = None) -> list[str]:
    """One file name per image file or URL for the flat output folder, all distinct: files
    by data.images.unique_file_names, URLs by their address's last part (url_file_name)
    with a counter where names would clash. With ``videos``, their stems follow the names:
    video_stem, made distinct from each other the same way (rtsp://cam1/live and
    rtsp://cam2/live: live, live_1), so no video or label file is written over."""
    files = [p for p in items if isinstance(p, Path)]
    unique = unique_file_names(files)
    file_names, taken, names = iter(unique), {Path(n).stem.lower() for n in unique}, []
    for item in items:
        if isinstance(item, Path):
            names.append(next(file_names))
            continue
        name = Path(url_file_name(item))
        names.append(_free_stem(name.stem, taken) + name.suffix)
    taken_videos: set[str] = set()  # <stem>.mp4 and labels/<stem>_<frame>.txt never meet an image's name
    return names + [_free_stem(video_stem(v), taken_videos) for v in videos or []]


class Writer:
    """Collects the COCO-style JSON and writes images, videos and YOLO txt files."""

    def __init__(self, out: Path, detector: Detector, cfg: PredictConfig):
        self.out, self.detector, self.cfg = out, detector, cfg
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
        if self.cfg.save_txt:
            labels = self.out / "labels"
            labels.mkdir(exist_ok=True)
            lines = result.to_yolo(with_score=self.cfg.save_conf)
            (labels / f"{txt_stem}.txt").write_text("".join(line + "\n" for line in lines))
        if self.cfg.verbose:
            print_result(file_name if frame is None else f"{file_name}#{frame}", result)
        return image_id

    def finish(self) -> Path:
        categories = [{"id": int(c), "name": n} for c, n in zip(self.detector.category_ids, self.detector.class_names)]
        path = self.out / JSON_NAME
        path.write_text(json.dumps({"images": self.images, "annotations": self.annotations, "categories": categories}))
        return path


@dataclass
class PredictSummary:
    images: int
    """Images and frames predicted."""
    detections: int
    json_path: Path
    failed: int
    """Image files that could not be read (skipped with a message)."""


def check_config(cfg: PredictConfig) -> None:
    if cfg.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {cfg.batch}")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {cfg.max_frames}")
    if cfg.stream_max_frames < 1:
        raise ValueError(f"stream_max_frames must be at least 1, got {cfg.stream_max_frames}")


def predict(detector: Detector, sources: Sources, cfg: PredictConfig) -> PredictSummary:
    """Run ``detector`` over every image and video of ``sources`` into ``cfg.out``.

    The detector's own settings apply (threshold, NMS, classes, device): cfg's conf, iou,
    max_det, agnostic, classes, device and threads are for building it, as `retinanet
    predict` does (``Detector(model, conf=cfg.conf, ...)``)."""
    check_config(cfg)
    if cfg.track and sources.images:
        raise ValueError(f"--track follows objects through a video's frames; {sources.images[0]} is an image (give videos, streams or webcams)")
    writer = Writer(Path(cfg.out), detector, cfg)
    names = output_names(sources.images, sources.videos)  # one flat folder: no two outputs share a name
    failed = _predict_images(sources.images, names, detector, writer) if sources.images else 0
    for src, stem in zip(sources.videos, names[len(sources.images) :]):
        _predict_video(src, stem, detector, writer)
    path = writer.finish()
    if not writer.images:
        raise RuntimeError(f"none of the {len(sources.images)} images could be read")
    return PredictSummary(len(writer.images), len(writer.annotations), path, failed)


@dataclass
class _Chunk:
    """Decoded images of one batch: each with its (path, output name) and its file's (H, W)
    (a large JPEG decodes reduced, at least min_side on its longer side)."""

    images: list[torch.Tensor] = field(default_factory=list)
    names: list[tuple[Path | str, str]] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    failed: int = 0


def _read_chunk(files: list[Path | str], out_names: list[str], min_side: int) -> _Chunk:
    chunk = _Chunk()
    for path, out_name in zip(files, out_names):
        try:
            image, size = read_url(path, min_side) if isinstance(path, str) else read_image_for(path, min_side)
        except ImageError as e:  # also a URL that cannot be downloaded (sources.UrlError)
            tqdm.write(f"skipped: {e}", file=sys.stderr)
            chunk.failed += 1
            continue
        chunk.images.append(image)
        chunk.names.append((path, out_name))
        chunk.sizes.append(size)
    return chunk


def _predict_images(files: list[Path | str], out_names: list[str], det: Detector, writer: Writer) -> int:
    """Batches of image files and URLs (saved as ``out_names``); returns the number that could not be read."""
    failed, batch = 0, writer.cfg.batch
    bar = tqdm(total=len(files), desc="images", unit="img", disable=len(files) < 2, file=sys.stderr)
    for start in range(0, len(files), batch):
        chunk = _read_chunk(files[start : start + batch], out_names[start : start + batch], det.input_size)
        failed += chunk.failed
        results = det.predict_tensors(chunk.images, [str(p) for p, _ in chunk.names], sizes=chunk.sizes)
        for img, (path, out_name), result in zip(chunk.images, chunk.names, results):
            writer.add(result, str(path), Path(out_name).stem)
            if writer.cfg.save:
                save_rgb(annotate(img, result), writer.out / out_name)
        bar.update(len(files[start : start + batch]))
    bar.close()
    return failed


def frame_cap(source: str, cfg: PredictConfig) -> tuple[int | None, bool]:
    """The frames to read of a video source, and whether that is the default cap of a
    network stream or video URL (cfg.stream_max_frames) rather than the user's --max-frames."""
    if cfg.max_frames is None and is_stream(source):
        return cfg.stream_max_frames, True
    return cfg.max_frames, False


class _VideoRun:
    """One video or webcam: frames go through the detector in batches of cfg.batch."""

    def __init__(self, source: str, stem: str, det: Detector, writer: Writer):
        self.source, self.det, self.writer = source, det, writer
        cap, self.default_cap = frame_cap(source, writer.cfg)
        self.video = VideoSource(source, cap)
        self.stem = stem
        self.sink = VideoSink(writer.out / f"{self.stem}.mp4", self.video.fps) if writer.cfg.save else None
        self.bar = tqdm(total=self.video.total, desc=self.stem, unit="frame", file=sys.stderr)
        self.frame_idx = 0
        self.tracker = self.mot = None
        if writer.cfg.track:
            from .tracking import Tracker

            self.tracker = Tracker(det.conf, self.video.fps)
            self.mot = writer.out / "tracks" / f"{self.stem}.txt"
            self.mot.parent.mkdir(exist_ok=True)
            self.mot.write_text("")

    def flush(self, frames: list[np.ndarray]) -> None:
        tensors = [torch.from_numpy(f).permute(2, 0, 1) for f in frames]  # (H, W, 3) -> (3, H, W)
        conf = self.tracker.detector_conf if self.tracker else None  # a tracker also takes the low-scoring boxes
        for frame, result in zip(frames, self.det.predict_tensors(tensors, [self.source] * len(frames), conf=conf)):
            if self.tracker is not None:
                result = self._track(result)
            self.writer.add(result, self.source, f"{self.stem}_{self.frame_idx:06d}", frame=self.frame_idx)
            if self.sink is not None:
                self.sink.write(annotate(frame, result))
            self.frame_idx += 1
        self.bar.update(len(frames))

    def _track(self, result: Result) -> Result:
        from .tracking import mot_lines

        tracked = self.tracker.update(result)
        with self.mot.open("a") as f:
            f.writelines(line + "\n" for line in mot_lines(self.frame_idx, tracked))
        return tracked

    def close(self) -> None:
        self.bar.close()
        if self.sink is not None:
            self.sink.close()
        if self.default_cap and self.frame_idx >= self.video.max_frames:
            tqdm.write(
                f"{self.source}: stopped after {self.frame_idx} frames, the default for a network stream; "
                "give --max-frames N to read more",
                file=sys.stderr,
            )


def _predict_video(source: str, stem: str, det: Detector, writer: Writer) -> None:
    run = _VideoRun(source, stem, det, writer)
    pending: list[np.ndarray] = []
    try:
        for frame in run.video:
            pending.append(frame)
            if len(pending) == writer.cfg.batch:
                run.flush(pending)
                pending = []
        if pending:
            run.flush(pending)
    except KeyboardInterrupt:  # a webcam runs until interrupted: keep what was written
        if pending:
            run.flush(pending)
    finally:
        run.close()


def print_result(name: str, r: Result) -> None:
    print(f"{name}: {len(r)} detections")
    for (x1, y1, x2, y2), s, n in zip(r.boxes.tolist(), r.scores.tolist(), r.names):
        print(f"  {n:>14s} {s:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
