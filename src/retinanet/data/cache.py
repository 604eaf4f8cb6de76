"""Training images decoded at the size augmentation can use, and optionally kept in memory.

Training never needs a photo at more than ``source_side`` pixels on its longer side (the
input size times the largest random zoom, divided by the smallest IoU-crop side when that
crop is on): everything bigger is resized down by the first augmentation step anyway.

- A JPEG at least twice that size decodes at 1/2, 1/4 or 1/8 of its size through
  libjpeg's DCT scaling (Pillow's draft mode), never below ``source_side``: a 4032 x 3024
  phone photo trained at 320 px decodes at 1008 x 756, several times faster.
- ``cache="ram"`` decodes every training image once, before the first epoch, resizes it
  to at most ``source_side`` and keeps the pixels in memory, so later epochs skip the
  file, the decoding and the big resize. It is refused with a warning (training reads
  from disk as without it) when the images would take more than ``RAM_SHARE`` of the
  memory available. Cached pixels are resized twice (to ``source_side``, then to the
  drawn zoom), so batches differ slightly from uncached ones.

Boxes stay in the file's pixels in the Record; ``ImageSource.read`` returns the factor
the image was reduced by, and the loader scales the boxes with it.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from ..preprocess import letterbox_size
from .dataset import DetectionDataset
from .images import read_image_for

CACHE_MODES = ("none", "ram")
RAM_SHARE = 0.5
"""The cache may take at most this share of the memory available when training starts."""


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable, else free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # not a POSIX system
        return 0


def cached_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(H, W) an image is kept at: its longer side reduced to ``side``, never enlarged."""
    if max(height, width) <= side:
        return height, width
    h, w, _ = letterbox_size(height, width, side)
    return h, w


class ImageSource:
    """Decoded training images: at least ``side`` pixels on the longer side when the file has
    that many, and at most ``side`` from the cache (see the module docstring)."""

    def __init__(self, dataset: DetectionDataset, side: int, cache: str = "none", progress: bool = True):
        if cache not in CACHE_MODES:
            raise ValueError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        if side < 1:
            raise ValueError(f"the source side must be positive, got {side}")
        self.dataset, self.side = dataset, side
        self._cache: list[np.ndarray] | None = None
        if cache == "ram":
            self._fill(progress)

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def cache_bytes(self) -> int:
        """Bytes the cache takes (or would take) for this dataset, from the records' sizes."""
        return sum(math.prod(cached_size(r.height, r.width, self.side)) * 3 for r in self.dataset.records)

    def _fill(self, progress: bool) -> None:
        need, free = self.cache_bytes(), available_memory()
        if need > RAM_SHARE * free:
            warnings.warn(
                f"data.cache=ram: {len(self.dataset)} training images at up to {self.side} px need "
                f"{need / 2**30:.1f} GiB, more than {RAM_SHARE:.0%} of the {free / 2**30:.1f} GiB available; "
                "training reads them from disk instead",
                stacklevel=3,
            )
            return
        cache: list[np.ndarray] = []
        bar = tqdm(total=len(self.dataset), desc=f"caching images ({need / 2**20:.0f} MiB)", unit="img", disable=not progress)
        # Pillow decodes and torch resizes without holding the GIL: two threads keep two cores busy.
        with bar, ThreadPoolExecutor(max(1, min(4, torch.get_num_threads()))) as pool:
            for pixels in pool.map(self._decode_small, range(len(self.dataset))):
                cache.append(pixels)
                bar.update()
        self._cache = cache

    def _decode_small(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 pixels of one image, longer side at most ``side``."""
        image = self._decode(index)
        h, w = cached_size(*image.shape[-2:], self.side)
        if (h, w) != tuple(image.shape[-2:]):
            image = F.resize(image, [h, w], antialias=True)
        return np.ascontiguousarray(image.permute(1, 2, 0).numpy())

    def _decode(self, index: int) -> Tensor:
        r = self.dataset[index]
        image, size = read_image_for(r.image_path, self.side, draft_min_pixels=0)
        if size != (r.height, r.width):
            # Boxes are in the annotated frame; a different decoded size (often an EXIF
            # rotation the annotation tool ignored) would put them on the wrong pixels.
            raise ValueError(
                f"{r.image_path}: image decodes to {size[1]}x{size[0]} (width x height, EXIF orientation applied) "
                f"but its annotation says {r.width}x{r.height}; the boxes would not fit the image"
            )
        return image

    def read(self, index: int) -> tuple[Tensor, float, float]:
        """(3, H, W) uint8 image (a channels-last view) and the factors (x, y) it is reduced
        by from the file's pixels: boxes times the factors fit it."""
        r = self.dataset[index]
        if self._cache is not None:
            image = torch.from_numpy(self._cache[index]).permute(2, 0, 1)
        else:
            image = self._decode(index)
        h, w = image.shape[-2:]
        return image, w / r.width, h / r.height
