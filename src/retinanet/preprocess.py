"""Letterbox: resize so the longer side equals the input size, pad bottom/right to a square.

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


def letterbox_size(h: int, w: int, size: int) -> tuple[int, int, float]:
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale)), scale


def letterbox(images: list[Tensor], size: int) -> tuple[Tensor, Tensor, Tensor]:
    """images: list of (3, H, W) uint8 or float in [0, 1].

    Returns batch (N, 3, size, size) float in [0, 1], scales (N,) and original sizes (N, 2) as (H, W).
    """
    batch = torch.zeros(len(images), 3, size, size)
    scales, sizes = [], []
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(img.shape)}")
        h, w = img.shape[-2:]
        nh, nw, scale = letterbox_size(h, w, size)
        x = img.float() / 255 if img.dtype == torch.uint8 else img.float()
        # Antialiased bilinear, like PIL's resize, so small outputs do not alias.
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        batch[i, :, :nh, :nw] = x.clamp(0, 1)
        scales.append(scale)
        sizes.append((h, w))
    return batch, torch.tensor(scales), torch.tensor(sizes)
