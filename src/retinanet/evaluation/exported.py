"""Evaluation of what ships: an exported model (.onnx fp32 / int8, OpenVINO .xml) or any
other model api.Detector loads, run over a dataset through that Detector, scored exactly
as evaluate() scores a checkpoint (same metrics, files and plots).

The images go through the Detector as a user's would: decoded whole, letterboxed
rectangularly (only up to a multiple of 32) by the model's own runtime, its NMS. A
checkpoint's evaluate() letterboxes to the full square instead, as training validates;
the two differ by that padding only.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm import tqdm

from ..config.evaluation import EvalConfig
from ..data.dataset import Record
from ..data.images import read_image
from ..postprocess import Detections


def detector_floor(detector: Any, cfg: EvalConfig) -> float:
    """The score threshold the evaluation runs the Detector at: cfg.conf, else the model's
    own (an export's score_thresh, 0.05 by default; never the stored F1-best threshold,
    since a lower threshold can only raise AP)."""
    return float(cfg.conf) if cfg.conf is not None else float(detector.backend.score_thresh)


def predict_with_detector(detector: Any, records: Sequence[Record], cfg: EvalConfig, progress: bool = True) -> list[Detections]:
    """One Detections per record (boxes in original pixels, the model's labels), batched
    as cfg.batch_size says."""
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    conf = detector_floor(detector, cfg)
    out: list[Detections] = []
    with tqdm(total=len(records), desc="eval", unit="img", disable=not progress) as bar:
        for start in range(0, len(records), cfg.batch_size):
            chunk = records[start : start + cfg.batch_size]
            images = [read_image(r.image_path) for r in chunk]
            results = detector.predict_tensors(images, conf=conf, agnostic=cfg.agnostic)
            out += [
                Detections(torch.from_numpy(r.boxes), torch.from_numpy(r.scores), torch.from_numpy(r.labels)) for r in results
            ]
            bar.update(len(chunk))
    return out

