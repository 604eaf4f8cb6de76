"""Image decoding: every input arrives as correctly oriented 8-bit RGB.

Handles grey (L), grey+alpha, RGBA, palette (P), CMYK, 16-bit (I;16 / I) and EXIF
orientation. Undecodable or truncated files raise ImageError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, 16-bit scaled to 8 bits, alpha composited on black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1 else 1.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("LA", "RGBA"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Decoded, EXIF-rotated RGB PIL image."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()  # decode fully now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except Exception as e:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def read_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB tensor."""
    arr = np.asarray(open_image(path), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
