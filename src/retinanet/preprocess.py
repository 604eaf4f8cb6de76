"""Letterbox: resize so the longer side equals the input size, pad bottom/right to a square
(or, rectangular, only up to a multiple of RECT_STRIDE).

Padding only at the bottom and right keeps the mapping back to the original image a
single division by the scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ImageNet statistics the MobileNet weights were trained with (torchvision's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Rectangular inference pads each side to a multiple of this (the peer, torchvision's
# detection transform, pads to 32 as well): the stride of C5, so every level's map of a
# padded image is an exact fraction of it.
RECT_STRIDE = 32

# A uint8 image above STRIP_PIXELS is widened to float STRIP_ROWS rows at a time: the float
# copy of a whole 60-megapixel image would take 720 MB.
STRIP_PIXELS = 4_000_000
STRIP_ROWS = 256


def _antialiased(x: Tensor, h: int, w: int) -> Tensor:
    """Antialiased bilinear, like PIL's resize, so small outputs do not alias."""
    return F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]


def resize(img: Tensor, h: int, w: int) -> Tensor:
    """(3, H, W) uint8 or float in [0, 1] -> (3, h, w) float in [0, 1].

    A large uint8 image shrinks along its width a band of rows at a time, then along its
    height: the two separable passes the single call makes, with the same result to the
    bit, without a float copy of the whole image."""
    ih, iw = img.shape[-2:]
    if img.dtype != torch.uint8:
        return _antialiased(img.float(), h, w)
    if ih * iw <= STRIP_PIXELS or h > ih or w > iw:
        # Resized in 0..255, then scaled: the filter is linear, so this equals scaling first
        # (within float rounding, 1e-7) with the division on the small image (a 640 x 480
        # photo to 320 x 240: 2.6 ms instead of 4.1).
        return _antialiased(img.float(), h, w).div_(255)
    narrow = torch.empty(3, ih, w)
    for y in range(0, ih, STRIP_ROWS):
        band = img[:, y : y + STRIP_ROWS].float().div_(255)
        narrow[:, y : y + band.shape[1]] = _antialiased(band, band.shape[1], w)
    return _antialiased(narrow, h, w)


def letterbox_size(h: int, w: int, size: int) -> tuple[int, int, float]:
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale)), scale


def _round_up(side: int, stride: int, size: int) -> int:
    """A resized side padded up to a multiple of ``stride``, never above ``size``."""
    return min(size, -(-side // stride) * stride)


def padded_size(h: int, w: int, size: int, stride: int | None = None) -> tuple[int, int]:
    """Input size one (H, W) image letterboxes to: size x size, or with ``stride`` each
    resized side rounded up to a multiple of it (never above size)."""
    if not stride:
        return size, size
    nh, nw, _ = letterbox_size(h, w, size)
    return _round_up(nh, stride, size), _round_up(nw, stride, size)


def letterbox(images: list[Tensor], size: int, stride: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """images: list of (3, H, W) uint8 or float in [0, 1].

    Returns batch (N, 3, S_h, S_w) float in [0, 1], scales (N,) and original sizes (N, 2) as
    (H, W). Without ``stride`` the batch is the full size x size square; with it, each side
    is padded only up to a multiple of ``stride`` (rectangular inference: a 4:3 photo at
    320 becomes 320 x 256 instead of 320 x 320, 20% fewer pixels to run).
    """
    resized, scales, sizes = [], [], []
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(img.shape)}")
        h, w = img.shape[-2:]
        nh, nw, scale = letterbox_size(h, w, size)
        resized.append(resize(img, nh, nw))
        scales.append(scale)
        sizes.append((h, w))
    out_h = out_w = size
    if stride:  # the largest image's padded size (callers group images of one size)
        out_h = _round_up(max(x.shape[1] for x in resized), stride, size)
        out_w = _round_up(max(x.shape[2] for x in resized), stride, size)
    batch = torch.zeros(len(images), 3, out_h, out_w)
    for i, x in enumerate(resized):
        batch[i, :, : x.shape[1], : x.shape[2]] = x.clamp(0, 1)
    return batch, torch.tensor(scales), torch.tensor(sizes)
