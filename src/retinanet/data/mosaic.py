"""Mosaic (YOLOv4 / YOLOv5): four images around a random centre on one canvas.

The four images arrive already resized to about the input size (each with its own zoom),
so each keeps its objects at the scale a single-image sample would show them. The canvas
is split at the centre (cx, cy) into four quadrants; each image is anchored at the centre
by its inner corner (the first by its bottom-right corner, the second by its bottom-left,
the third by its top-right, the fourth by its top-left) and cut at the canvas edge.
Boxes move with their image and are clipped to its quadrant; boxes that fall outside
become empty and are dropped by the sanitize step that follows.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

Sample = tuple[tv_tensors.Image, dict[str, Any]]

# Quadrant order: top-left, top-right, bottom-left, bottom-right of the centre.
QUADRANTS = 4


def random_centre(size: int) -> tuple[int, int]:
    """A centre in the middle half of the canvas (YOLOv5 draws it from [S/2, 3S/2] of a 2S canvas)."""
    lo, hi = size // 4, size - size // 4
    x, y = torch.randint(lo, hi + 1, (2,)).tolist()
    return int(x), int(y)


def mosaic(samples: list[Sample], size: int, centre: tuple[int, int]) -> Sample:
    """Combine four (image, target) samples into one size x size sample.

    samples: 4 uint8 images (3, H_i, W_i) with BoundingBoxes targets (labels, scale).
    centre: (cx, cy) in canvas pixels, 0 <= cx, cy <= size.
    The result keeps the first sample's ``scale`` (the image the index points at).
    """
    if len(samples) != QUADRANTS:
        raise ValueError(f"mosaic needs {QUADRANTS} samples, got {len(samples)}")
    cx, cy = centre
    if not (0 <= cx <= size and 0 <= cy <= size):
        raise ValueError(f"mosaic centre {centre} is outside the {size} x {size} canvas")
    first_image = samples[0][0]
    canvas = torch.zeros((first_image.shape[0], size, size), dtype=first_image.dtype)
    all_boxes, all_labels = [], []
    for q, (image, target) in enumerate(samples):
        h, w = image.shape[-2:]
        right, bottom = q % 2 == 1, q >= 2
        # Quadrant on the canvas: x0..x1, y0..y1.
        x0, x1 = (cx, size) if right else (0, cx)
        y0, y1 = (cy, size) if bottom else (0, cy)
        qw, qh = x1 - x0, y1 - y0
        if qw == 0 or qh == 0:
            continue
        # Window of the image that lands on the quadrant. An image on the left of the
        # centre shows its right part (window starts at w - qw, negative when the image
        # is narrower, which F.crop pads with black); on the right, its left part.
        left = 0 if right else w - qw
        top = 0 if bottom else h - qh
        canvas[:, y0:y1, x0:x1] = F.crop(image.as_subclass(torch.Tensor), top, left, qh, qw)
        boxes = F.crop(target["boxes"], top, left, qh, qw)  # (G, 4) in quadrant pixels, clipped to it
        all_boxes.append(boxes.as_subclass(torch.Tensor) + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
        all_labels.append(target["labels"])
    boxes = torch.cat(all_boxes) if all_boxes else torch.zeros(0, 4)
    labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
    out = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(size, size)),
        "labels": labels,
        "scale": samples[0][1]["scale"],
    }
    return tv_tensors.Image(canvas), out
