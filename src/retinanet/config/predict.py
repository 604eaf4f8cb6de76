"""Settings of `retinanet predict` (and of the prediction demo at the end of training)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PredictConfig:
    out: str = "runs/predict"
    """Output folder: annotated images and videos, labels/, detections.json."""
    conf: float | None = None
    """Score threshold (unset: the one stored in the checkpoint or exported model, else fallback_conf)."""
    fallback_conf: float = 0.25
    """Score threshold of a model that stores none, when conf is unset."""
    iou: float | None = None
    """NMS IoU threshold (unset: the model's, 0.5)."""
    max_det: int | None = None
    """Detections kept per image (unset: the model's, 100)."""
    agnostic: bool | None = None
    """Class-agnostic NMS: a box also suppresses overlapping boxes of other classes (unset: the model's, per class)."""
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
    """Stop a video, stream or webcam after this many frames (unset: a video file or a
    webcam to its end, a network stream or video URL after stream_max_frames)."""
    stream_max_frames: int = 9000
    """Frames read from a network stream or video URL when max_frames is unset (5 minutes
    at 30 fps): a live stream never ends by itself, and each frame is written out."""
    device: str = "auto"
    """Where the model runs: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N for a
    checkpoint or an .onnx; cpu, gpu, gpu.N or npu for an OpenVINO .xml (retinanet.devices)."""
    threads: int | None = None
    """ONNX Runtime intra-op threads (unset: torch's thread count)."""
    verbose: bool = False
    """Print every image's detections."""
    track: bool = False
    """Follow objects through each video (ByteTrack): every box gets its track's id, drawn on
    the video and written to out/tracks/<video>.txt (MOTChallenge lines). Videos only."""

    def class_list(self) -> list[str] | None:
        """The classes to keep, or None for all (an empty setting)."""
        return [c.strip() for c in self.classes.split(",") if c.strip()] if self.classes else None
