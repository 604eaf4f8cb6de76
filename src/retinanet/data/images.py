"""Image files: decoding to correctly oriented 8-bit RGB, header-only size, verification.

Every input arrives as RGB: grey (L, 1), grey+alpha (LA), RGBA, palette (P, PA, with or
without transparency), CMYK, YCbCr, 16-bit (I;16 / I) and float (F) images. Alpha is
composited on black. 16-bit images are scaled from their full 0..65535 range.

Orientation: boxes refer to the *displayed* image, i.e. after the EXIF orientation tag
is applied (as COCO, Ultralytics, CVAT and Label Studio do). ``open_image`` /
``read_image`` apply the tag, and ``image_info`` reports the displayed width and height
from the file header without decoding, so a Record's width/height always equal what
``read_image`` returns. A broken EXIF block is treated as "no rotation" by all of them.

Undecodable or truncated files raise ImageError naming the file and the reason.

Memory: an image above ``max_pixels()`` (90 megapixels unless the environment variable
RETINANET_MAX_PIXELS says otherwise) is refused from its header, before any pixel is
decoded: a small PNG can declare 13000 x 13000 pixels and would take gigabytes.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

EXIF_ORIENTATION_TAG = 0x0112
NO_ROTATION = 1
# EXIF orientation -> the transpose that displays the stored pixels upright (the same
# table as PIL.ImageOps.exif_transpose). Orientations 5..8 swap width and height.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_SIDES = (5, 6, 7, 8)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

MAX_PIXELS_ENV = "RETINANET_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 90_000_000


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


class MissingImageError(ImageError):
    """The image file does not exist."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    """Displayed width (after the EXIF orientation)."""
    height: int
    """Displayed height (after the EXIF orientation)."""
    mode: str
    """PIL mode of the stored pixels ('RGB', 'L', 'RGBA', 'P', 'I;16', ...)."""
    orientation: int = NO_ROTATION
    """EXIF orientation tag (1 = none)."""
    stored_width: int = 0
    stored_height: int = 0


def max_pixels() -> int:
    """The largest image (width x height) decoded: RETINANET_MAX_PIXELS, else 90 megapixels."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={value!r} is not a number of pixels") from None
    if limit < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {value!r}")
    return limit


def _open(path: Path) -> Image.Image:
    """Image.open without Pillow's bomb warning: check_pixels is the limit that applies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def check_pixels(path: Path, width: int, height: int) -> None:
    """ImageError when a ``width`` x ``height`` image is above max_pixels()."""
    limit = max_pixels()
    if width * height > limit:
        raise ImageError(
            f"{path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above the limit of "
            f"{limit / 1e6:g} ({MAX_PIXELS_ENV}); not decoded"
        )


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8), or 1 when absent or unreadable."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION_TAG, NO_ROTATION)
        value = int(value)
    except Exception:  # broken EXIF blocks raise many kinds; the pixels are still fine
        return NO_ROTATION
    return value if value in _TRANSPOSE else NO_ROTATION


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, 16-bit scaled to 8 bits, alpha composited on black."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        # 'I' is 32-bit: Pillow uses it for some 16-bit files; values above 255 mean 16-bit data.
        peak = 65535.0 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1 else 1.0  # floats in [0, 1] or already 0..255
        img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette transparency becomes alpha
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Decoded, EXIF-rotated RGB PIL image."""
    path = Path(path)
    if not path.is_file():
        raise MissingImageError(f"{path}: image file not found")
    try:
        with _open(path) as img:
            check_pixels(path, *img.size)  # from the header, before decoding
            img.load()  # decode fully now: truncated files fail here, not later
            orientation = exif_orientation(img)
            rgb = to_rgb(img)
    except ImageError:
        raise
    except Exception as e:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    if orientation != NO_ROTATION:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb


def read_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB tensor in displayed orientation: the one image-file reader.

    The tensor is a permuted view of the decoded (H, W, 3) pixels (channels-last memory):
    that skips a copy, and the uint8 antialiased resize that usually follows runs about
    twice as fast on this layout."""
    return torch.from_numpy(np.array(open_image(path))).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W) view


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """An image tensor as uint8: float values in [0, 1] are scaled and rounded; uint8 passes."""
    if image.dtype == torch.uint8:
        return image
    return (image * 255).round().clamp(0, 255).to(torch.uint8)


def image_info(path: str | Path, decode: bool = False) -> ImageInfo:
    """Size (displayed orientation), mode and EXIF orientation of an image file.

    ``decode=False`` reads the header only (fast; finds missing, empty and non-image
    files). ``decode=True`` also decodes every byte of pixel data, which is what finds a
    truncated or corrupt file. JPEGs are decoded at 1/8 scale for this (libjpeg's DCT
    scaling): the whole entropy-coded stream is still read, so truncation is still found.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingImageError(f"{path}: image file not found")
    try:
        with _open(path) as img:
            w, h = img.size
            check_pixels(path, w, h)  # from the header, before decoding
            mode = img.mode
            orientation = exif_orientation(img)
            if decode:
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
                img.load()
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has zero size {w}x{h}")
    dw, dh = (h, w) if orientation in SWAPS_SIDES else (w, h)
    return ImageInfo(dw, dh, mode, orientation, w, h)


def place_image(src: Path, dst: Path, copy: bool = False) -> None:
    """Put ``src`` at ``dst`` as a symlink (default: no disk space) or a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        # An absolute target keeps the link valid wherever the output folder is read from.
        os.symlink(Path(src).resolve(), dst)


def unique_file_names(paths: list[Path]) -> list[str]:
    """One file name per path for a flat output folder, with unique stems (VOC and YOLO
    name each annotation file after its image's stem): the base name, made unique by
    prefixing the parent folder's name, then a counter, when two paths share a stem."""
    names: list[str] = []
    taken: set[str] = set()  # lower-case stems: case-insensitive file systems exist
    for p in paths:
        name = p.name
        if Path(name).stem.lower() in taken:
            stem, k = f"{p.parent.name}_{p.stem}", 1
            name = stem + p.suffix
            while Path(name).stem.lower() in taken:
                name = f"{stem}_{k}{p.suffix}"
                k += 1
        taken.add(Path(name).stem.lower())
        names.append(name)
    return names
