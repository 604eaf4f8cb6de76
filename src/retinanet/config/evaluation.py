"""Settings of an evaluation run: batching, the score threshold, the plots' thresholds and sizes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """Defaults of the evaluation loop and its plots (used by evaluation.evaluate() and `retinanet eval`)."""

    batch_size: int = 8
    """Images per forward pass."""
    workers: int = 0
    """DataLoader processes decoding and letterboxing images (0 = in the main process)."""
    conf: float | None = None
    """Score threshold of the model's detections for this evaluation (None = the model's own
    postprocess.score_thresh); the model's config is not changed."""
    agnostic: bool | None = None
    """Class-agnostic NMS for this evaluation (None = the model's own postprocess.agnostic,
    per class by default); the model's config is not changed."""
    plot_conf: float = 0.25
    """Score threshold of the confusion matrix and the drawn images (metrics use every detection)."""
    match_iou: float = 0.5
    """IoU at which the confusion matrix matches detections to ground truth."""
    num_drawn: int = 6
    """Images drawn with ground truth and predictions side by side."""
    drawn_max_side: int = 640
    """Longer side, in pixels, of each panel of a drawn image."""
