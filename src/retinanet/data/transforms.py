"""Box-aware augmentation and letterboxing on torchvision.transforms.v2.

A sample is ``(image, target)``: image a ``tv_tensors.Image`` (3, H, W) uint8; target a
dict with ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY, canvas = image size), ``labels``
(G,) long and ``scale`` (float, input pixels per original pixel so far). Ignore regions
(crowd / difficult) carry ``CROWD_LABEL`` as their label, so every crop, flip, clip and
drop treats them exactly like the objects; the loss reads the label.

    training:   [IoU crop] -> resize, longer side = size * zoom -> flip -> random crop /
                pad to size x size (or a 4-image mosaic, see mosaic.py) -> colour
                jitter -> clip boxes, drop tiny ones -> float in [0, 1]
    evaluation: resize, longer side = size -> pad bottom/right -> float in [0, 1]

Evaluation has the geometry of ``retinanet.preprocess.letterbox``: content at the top
left, so detections map back to the original image with one division by ``scale``. The
flip comes before the padding so that training images, like evaluation ones, have their
padding at the bottom / right.

Speed: the only work at the original resolution is the one resize (the IoU crop before
it is a slice), and everything up to the final float conversion runs on uint8 images
of about the input size. Randomness comes only from torch's default generator, which
the loader seeds per sample from (seed, epoch, index).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config import AugmentConfig
from .labels import CROWD_LABEL
from ..preprocess import letterbox_size

Sample = tuple[tv_tensors.Image, dict[str, Any]]
IOU_CROP_MIN_SCALE = 0.3  # RandomIoUCrop's smallest crop side, relative to the image's (torchvision's default)


def make_sample(
    image: Tensor,
    boxes: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    ignore: np.ndarray | Tensor | None = None,
    scale: float = 1.0,
) -> Sample:
    """Wrap a (3, H, W) uint8 image and its (G, 4) xyxy pixel boxes as a v2 sample.

    Boxes flagged in ``ignore`` get the label CROWD_LABEL. ``scale``: image pixels per
    original pixel (below 1 for an image decoded or cached reduced).
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).clone()
    if ignore is not None:
        labels[torch.as_tensor(ignore, dtype=torch.bool).reshape(-1)] = CROWD_LABEL
    h, w = image.shape[-2:]
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
        ),
        "labels": labels,
        "scale": scale,
    }
    return tv_tensors.Image(image), target


def unpack(sample: Sample) -> tuple[Tensor, Tensor, Tensor, float]:
    """Plain tensors out of a finished sample: image, boxes (G, 4), labels (G,), scale."""
    image, target = sample
    return (
        image.as_subclass(Tensor),
        target["boxes"].as_subclass(Tensor),
        target["labels"],
        float(target["scale"]),
    )


class LetterboxResize:
    """Resize so the longer side is ``size * zoom``, zoom drawn uniformly from ``zoom``.

    With zoom (1, 1) this is the resize of preprocess.letterbox (same rounding, same
    antialiased bilinear filter, on uint8). Boxes scale by the exact per-axis factor of
    the pixels (new / old side); ``target['scale']`` is multiplied by the letterbox scale
    (size * zoom / longer side), the number evaluation divides by.
    """

    def __init__(self, size: int, zoom: tuple[float, float] = (1.0, 1.0)):
        if size < 1:
            raise ValueError(f"input size must be positive, got {size}")
        lo, hi = zoom
        if not 0 < lo <= hi:
            raise ValueError(f"augment.scale must be (low, high) with 0 < low <= high, got {zoom}")
        self.size, self.zoom = size, (float(lo), float(hi))

    def __call__(self, image: tv_tensors.Image, target: dict[str, Any]) -> Sample:
        lo, hi = self.zoom
        z = lo if hi == lo else lo + (hi - lo) * float(torch.rand(()))
        h, w = image.shape[-2:]
        nh, nw, scale = letterbox_size(h, w, self.size * z)
        if (nh, nw) != (h, w):
            image = F.resize(image, [nh, nw], antialias=True)
            target = {**target, "boxes": F.resize(target["boxes"], [nh, nw])}
        return image, {**target, "scale": target["scale"] * scale}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, zoom={self.zoom})"


class CropOrPad:
    """To a size x size canvas: where the image is smaller, pad at the bottom / right with
    black; where it is larger, cut a window at a random offset (``random=True``) or at the
    top left. Boxes are shifted and clipped to the window (empty ones go at the sanitize
    step)."""

    def __init__(self, size: int, random: bool = True):
        self.size, self.random = size, random

    def __call__(self, image: tv_tensors.Image, target: dict[str, Any]) -> Sample:
        h, w = image.shape[-2:]
        s = self.size
        top = int(torch.randint(0, h - s + 1, ())) if self.random and h > s else 0
        left = int(torch.randint(0, w - s + 1, ())) if self.random and w > s else 0
        return self.crop(image, target, top, left)

    def crop(self, image: tv_tensors.Image, target: dict[str, Any], top: int, left: int) -> Sample:
        """The size x size window at (top, left); parts beyond the image are black."""
        s = self.size
        if (top, left, *image.shape[-2:]) == (0, 0, s, s):
            return image, target
        image = F.crop(image, top, left, s, s)
        boxes = F.crop(target["boxes"], top, left, s, s)  # shifted and clipped to the window
        return image, {**target, "boxes": boxes}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, random={self.random})"


def _check_augment(cfg: AugmentConfig) -> None:
    for name in ("hflip", "iou_crop", "mosaic"):
        p = getattr(cfg, name)
        if not 0 <= p <= 1:
            raise ValueError(f"augment.{name} is a probability in [0, 1], got {p}")
    if cfg.color_jitter < 0 or cfg.color_jitter >= 1:
        raise ValueError(f"augment.color_jitter must be in [0, 1), got {cfg.color_jitter}")
    if not 0 <= cfg.hue <= 0.5:
        raise ValueError(f"augment.hue must be in [0, 0.5], got {cfg.hue}")
    if len(cfg.scale) != 2:
        raise ValueError(f"augment.scale must be two numbers (low, high), got {cfg.scale}")
    if cfg.crop < 0 or cfg.crop % 32:
        raise ValueError(f"augment.crop must be 0 (off) or a positive multiple of 32 pixels, got {cfg.crop}")
    if cfg.min_box_size < 1:
        # SanitizeBoundingBoxes' floor: a box under one pixel has no content to learn from.
        raise ValueError(f"augment.min_box_size must be >= 1 pixel, got {cfg.min_box_size}")


class DetectionTransforms:
    """The training or evaluation pipeline, in three stages so mosaic can reuse them.

    ``prepare``: per source image: [IoU crop], resize to about the input size, [flip].
    ``place``: one prepared image onto the canvas x canvas square (random crop / pad); the
    canvas is ``size``, or ``cfg.crop`` in training when set (smaller windows of the image at
    ``size``'s scale).
    ``finish``: colour jitter, clip boxes, drop tiny boxes, uint8 -> float.
    Calling the object runs all three on one sample.
    """

    def __init__(self, size: int, train: bool, cfg: AugmentConfig | None = None):
        cfg = cfg if cfg is not None else AugmentConfig()
        _check_augment(cfg)
        self.size, self.train, self.cfg = size, train, cfg
        self.canvas = cfg.crop if train and cfg.crop else size
        if self.canvas > size:
            raise ValueError(f"augment.crop ({cfg.crop}) must not exceed the input size ({size})")
        self.mosaic = cfg.mosaic if train else 0.0
        prepare: list[Any] = []
        finish: list[Any] = []
        if train:
            if cfg.iou_crop > 0:
                prepare.append(v2.RandomApply([v2.RandomIoUCrop(min_scale=IOU_CROP_MIN_SCALE)], p=cfg.iou_crop))
            prepare.append(LetterboxResize(size, tuple(cfg.scale)))
            if cfg.hflip > 0:
                prepare.append(v2.RandomHorizontalFlip(p=cfg.hflip))
            if cfg.color_jitter > 0 or cfg.hue > 0:
                c = cfg.color_jitter
                finish.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=cfg.hue))
        else:
            prepare.append(LetterboxResize(size))
        min_size = cfg.min_box_size if train else 1.0  # evaluation keeps every real box
        finish += [
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=min_size, labels_getter=_labels),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        ]
        # The longest side prepare can use from a source image: the resize's largest zoom,
        # over the smallest side RandomIoUCrop keeps (torchvision's min_scale) when it is on.
        zoom = max(cfg.scale) if train else 1.0
        crop = IOU_CROP_MIN_SCALE if train and cfg.iou_crop > 0 else 1.0
        self.source_side = math.ceil(size * zoom / crop)
        self.prepare = v2.Compose(prepare)
        self.place = CropOrPad(self.canvas, random=train)
        self.finish = v2.Compose(finish)

    def __call__(self, image: tv_tensors.Image, target: dict[str, Any]) -> Sample:
        return self.finish(*self.place(*self.prepare(image, target)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prepare={self.prepare}, place={self.place}, finish={self.finish})"


def _labels(sample: Any) -> Tensor:
    # The labels SanitizeBoundingBoxes must drop together with their boxes.
    return sample[1]["labels"]
