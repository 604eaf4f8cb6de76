"""Settings of `retinanet predict` (and of the prediction demo at the end of training)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PredictConfig:
    out: str = "runs/predict"
    """Output folder: annotated images and videos, labels/, detections.json."""
    conf: float | None = None
    """Score threshold (unset: the model's, 0.05)."""
    iou: float | None = None
    """NMS IoU threshold (unset: the model's, 0.5)."""
    max_det: int | None = None
    """Detections kept per image (unset: the model's, 100)."""
    classes: str = ""
    """Keep only these classes: comma-separated names or indices (empty: all)."""
    batch: int = 8
    """Images or frames per forward pass."""
    save: bool = True
    """Write annotated images and videos."""
    save_txt: bool = False
    """Also write YOLO txt labels to out/labels/."""
    save_conf: bool = False
    """Append the score to each YOLO txt line."""
    max_frames: int | None = None
    """Stop a video or webcam after this many frames (unset: all)."""
    device: str = "cpu"
    """Torch device for checkpoints."""
    threads: int | None = None
    """ONNX Runtime intra-op threads (unset: torch's thread count)."""
    verbose: bool = False
    """Print every image's detections."""

    def class_list(self) -> list[str] | None:
        """The classes to keep, or None for all (an empty setting)."""
        return [c.strip() for c in self.classes.split(",") if c.strip()] if self.classes else None
