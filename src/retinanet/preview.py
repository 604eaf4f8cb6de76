"""What augmentation does to the data, seen before the model learns from it: the first
batches of a run's first epoch drawn as a grid, each image as the network receives it
(augmented, letterboxed) with its boxes and class names in draw.py's class colours, saved
as ``train_batch0.jpg``, ``train_batch1.jpg``, ... in the run folder.

Ignore regions (crowd / difficult boxes) are drawn grey and labelled "ignored". Small
inputs are enlarged by a whole factor (pixels stay sharp) so labels stay readable; large
ones are shrunk so a grid stays a few megapixels at most.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from .data.labels import CROWD_LABEL, PAD_LABEL
from .draw import class_color, draw_boxes

PREVIEW_BATCHES = 3  # train_batch0.jpg .. train_batch2.jpg
MAX_IMAGES = 16  # drawn of one batch
MIN_TILE = 256  # an image's longer side in the grid, at least (by a whole factor) ...
MAX_TILE = 512  # ... and at most
GAP = 4  # white pixels between tiles
IGNORED_COLOR = (160, 160, 160)
JPEG_QUALITY = 90


def preview_path(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / f"train_batch{index}.jpg"


def tile_scale(height: int, width: int) -> float:
    """Factor from the input's pixels to a tile's: a whole factor up to MIN_TILE, down to MAX_TILE."""
    side = max(height, width)
    if side < MIN_TILE:
        return float(math.ceil(MIN_TILE / side))
    return min(1.0, MAX_TILE / side)


def grid_columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def tile_origin(index: int, columns: int, tile_hw: tuple[int, int]) -> tuple[int, int]:
    """(x, y) of tile ``index``'s top-left corner in the grid."""
    h, w = tile_hw
    return (index % columns) * (w + GAP), (index // columns) * (h + GAP)


def _tile(image: Tensor, boxes: Tensor, labels: Tensor, class_names: Sequence[str], scale: float) -> Tensor:
    """(3, H, W) float in [0, 1] -> (3, h, w) uint8 at ``scale`` with its boxes drawn."""
    h, w = round(image.shape[-2] * scale), round(image.shape[-1] * scale)
    mode = {"mode": "nearest"} if scale >= 1 else {"mode": "bilinear", "antialias": True, "align_corners": False}
    tile = F.interpolate(image[None].float(), size=(h, w), **mode)[0]
    tile = (tile.clamp(0, 1) * 255).round().to(torch.uint8)
    keep = labels != PAD_LABEL
    labels = labels[keep].tolist()
    text = ["ignored" if k == CROWD_LABEL else str(class_names[k]) for k in labels]
    colors = [IGNORED_COLOR if k == CROWD_LABEL else class_color(k) for k in labels]
    return draw_boxes(tile, boxes[keep].float() * scale, text, colors)


def draw_batch(images: Tensor, boxes: Tensor, labels: Tensor, class_names: Sequence[str]) -> Tensor:
    """A training batch (images (N, 3, H, W) float in [0, 1], boxes (N, G, 4) xyxy in input
    pixels, labels (N, G) with PAD_LABEL / CROWD_LABEL) -> one (3, H', W') uint8 grid of
    its first MAX_IMAGES images, row by row, tile_origin() giving each one's place."""
    n = min(len(images), MAX_IMAGES)
    scale = tile_scale(*images.shape[-2:])
    tiles = [_tile(images[i], boxes[i], labels[i], class_names, scale) for i in range(n)]
    h, w = tiles[0].shape[-2:]
    cols = grid_columns(n)
    rows = math.ceil(n / cols)
    grid = torch.full((3, rows * (h + GAP) - GAP, cols * (w + GAP) - GAP), 255, dtype=torch.uint8)
    for i, tile in enumerate(tiles):
        x, y = tile_origin(i, cols, (h, w))
        grid[:, y : y + h, x : x + w] = tile
    return grid


def save_batch_preview(batch, class_names: Sequence[str], path: str | Path) -> Path:
    """data.loader's Batch drawn by draw_batch, written as a JPEG."""
    grid = draw_batch(batch.images.cpu(), batch.boxes.cpu(), batch.labels.cpu(), class_names)
    path = Path(path)
    image = Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())  # (3, H, W) -> (H, W, 3)
    image.save(path, quality=JPEG_QUALITY, subsampling=0)  # full-resolution colour: thin box lines keep theirs
    return path
