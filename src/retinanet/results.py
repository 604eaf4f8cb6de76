"""What one image's detections give: ``Result`` (boxes, scores, labels and names; COCO
entries, YOLO lines, JSON, a pandas DataFrame, the annotated image, the crops of each
box) and ``annotate``, which draws them.

Memory: a Result made by ``Detector.predict`` holds a reference to the image it was
predicted from (``result.image``, the (3, H, W) tensor the detector ran on: no copy, but
it keeps those pixels alive as long as the Result lives). A list of Results from a folder
therefore holds every decoded image; ``predict(..., stream=True)`` hands them over one at
a time instead, and ``result.image = None`` lets one image go (``plot``, ``save`` and
``crops`` then raise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data.coco import coco_results
from .data.images import to_uint8
from .data.yolo import yolo_line
from .draw import class_color, draw_boxes
from .sources import array_to_chw

Size = tuple[int, int]
JSON_BOX_DECIMALS = 2  # hundredths of a pixel
JSON_SCORE_DECIMALS = 5


@dataclass
class Result:
    """Detections of one image, best first. Boxes are xyxy in the image's own pixels."""

    boxes: np.ndarray
    """(D, 4) float32 x1, y1, x2, y2."""
    scores: np.ndarray
    """(D,) float32 class probabilities."""
    labels: np.ndarray
    """(D,) int64 contiguous class index 0..K-1."""
    names: list[str]
    """Class name of each detection."""
    image_size: tuple[int, int]
    """(height, width) of the image."""
    source: str | None = None
    """File, URL or video the image came from (None: an in-memory image)."""
    category_ids: list[int] = field(default_factory=list)
    """The dataset's own category id of each detection (COCO ids for a COCO-trained model)."""
    image: Tensor | None = field(default=None, repr=False, compare=False)
    """The (3, H, W) image predicted on (None: not kept). A large JPEG may have decoded
    reduced: then its size differs from image_size, and drawings and crops are at its size."""
    frame: int | None = None
    """Index of the frame in its video or stream (None for an image)."""
    track_ids: np.ndarray | None = None
    """(D,) int64 track id of each detection when a tracker assigned them (tracking.Tracker), else None."""

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries: bbox [x, y, w, h], the dataset's category id, score."""
        return coco_results(image_id, self.boxes, self.scores, self.category_ids)

    def to_yolo(self, with_score: bool = False) -> list[str]:
        """YOLO txt lines: ``label cx cy w h`` normalised by the image size (+ score)."""
        h, w = self.image_size
        scores = self.scores.tolist() if with_score else [None] * len(self)
        return [yolo_line(label, box, w, h, s) for box, label, s in zip(self.boxes.tolist(), self.labels.tolist(), scores)]

    def _category_ids(self) -> list[int | None]:
        return list(self.category_ids) if len(self.category_ids) == len(self) else [None] * len(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: source, frame, image height and width, and the detections (box xyxy in
        pixels, score, label, name, category_id, and track_id when tracked), best first."""
        h, w = self.image_size
        detections = [
            {"box": [round(v, JSON_BOX_DECIMALS) for v in box], "score": round(score, JSON_SCORE_DECIMALS),
             "label": label, "name": name, "category_id": cat}
            for box, score, label, name, cat in zip(
                self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), self.names, self._category_ids()
            )
        ]  # fmt: skip
        if self.track_ids is not None:
            for d, tid in zip(detections, self.track_ids.tolist()):
                d["track_id"] = tid
        return {"source": self.source, "frame": self.frame, "height": h, "width": w, "detections": detections}

    def to_json(self, indent: int | None = None) -> str:
        """to_dict() as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_pandas(self):
        """A pandas DataFrame, one row per detection (best first): x1, y1, x2, y2, score,
        label, name, category_id. Needs pandas (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Result.to_pandas() needs pandas, which is not installed: pip install pandas") from None
        x1, y1, x2, y2 = self.boxes.reshape(-1, 4).T
        columns = {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": self.scores, "label": self.labels}
        return pd.DataFrame({**columns, "name": list(self.names), "category_id": self._category_ids()})

    def _image(self, what: str) -> Tensor:
        if self.image is None:
            raise ValueError(f"Result.{what}() needs the image, and this Result holds none (made without one, or released)")
        return self.image

    def plot(self) -> np.ndarray:
        """The image with the detections drawn (annotate): (H, W, 3) uint8 RGB."""
        return annotate(self._image("plot"), self)

    def save(self, path: str | Path) -> Path:
        """Write the annotated image to ``path`` (its folder is created); a suffix Pillow does
        not write becomes .png. Returns the path written."""
        return save_rgb(self.plot(), Path(path))

    def crops(self) -> list[np.ndarray]:
        """The image inside each box, best first: (h, w, 3) uint8 RGB arrays, each at least
        one pixel, boxes rounded outwards to whole pixels."""
        image = to_uint8(self._image("crops"))
        hwc = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3) view
        h, w = hwc.shape[:2]
        boxes = to_frame(self.boxes.reshape(-1, 4), self.image_size, (h, w))
        out = []
        for x1, y1, x2, y2 in boxes.tolist():
            left, top = min(max(int(np.floor(x1)), 0), w - 1), min(max(int(np.floor(y1)), 0), h - 1)
            right, bottom = max(min(int(np.ceil(x2)), w), left + 1), max(min(int(np.ceil(y2)), h), top + 1)
            out.append(np.ascontiguousarray(hwc[top:bottom, left:right]))
        return out


def to_frame(boxes: np.ndarray, shape: Size, size: Size) -> np.ndarray:
    """xyxy boxes on an (H, W) ``shape`` image -> on a ``size`` image of the same content
    (a JPEG's reduced decode to its file's pixels, and back for drawing)."""
    (h, w), (fh, fw) = shape, size
    if (h, w) == (fh, fw):
        return boxes
    frame = np.array([fw, fh, fw, fh], np.float32)
    return np.minimum(boxes * (frame / np.array([w, h, w, h], np.float32)), frame)


def annotate(image: Tensor | np.ndarray, result: Result) -> np.ndarray:
    """The image (3, H, W) tensor or (H, W, 3) array with boxes and ``name score`` labels
    drawn in the class palette (draw.py, shared with the evaluation plots); returns
    (H, W, 3) uint8 RGB. The lowest score is drawn first, so where boxes overlap the best
    one and its label end on top. A reduced decode of the result's file gets its boxes
    scaled to it."""
    if isinstance(image, np.ndarray):
        image = array_to_chw(image, "image")
    text = [f"{n} {s:.2f}" for n, s in zip(result.names, result.scores.tolist())]
    if result.track_ids is not None:  # a tracked video: each box carries its track's id
        text = [f"#{t} {label}" for t, label in zip(result.track_ids.tolist(), text)]
    colors = [class_color(label) for label in result.labels.tolist()]
    boxes = to_frame(result.boxes, result.image_size, (int(image.shape[-2]), int(image.shape[-1])))
    drawn = draw_boxes(to_uint8(image), torch.from_numpy(boxes), text, colors, scores=result.scores.tolist())
    return drawn.permute(1, 2, 0).contiguous().numpy()  # (3, H, W) -> (H, W, 3)


def save_rgb(rgb: np.ndarray, path: Path) -> Path:
    """(H, W, 3) uint8 to ``path`` in its own format when Pillow writes it, else as PNG
    (the suffix replaced); its folder is created. Returns the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        img.save(path, quality=95)
    elif suffix in (".png", ".bmp", ".webp", ".tif", ".tiff"):
        img.save(path)
    else:
        path = path.with_suffix(".png")
        img.save(path)
    return path


__all__ = ["Result", "annotate", "save_rgb", "to_frame"]
