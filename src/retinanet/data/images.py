"""Image files: decoding to correctly oriented 8-bit RGB, header-only size, verification.

Every input arrives as RGB: grey (L, 1), grey+alpha (LA), RGBA, palette (P, PA, with or
without transparency), CMYK, YCbCr, 16-bit (I;16 / I) and float (F) images. Alpha is
composited on black. 16-bit images are scaled from their full 0..65535 range.

Orientation: boxes refer to the *displayed* image, i.e. after the EXIF orientation tag
is applied (as COCO, Ultralytics, CVAT and Label Studio do). ``open_image`` /
``read_image`` apply the tag, and ``image_info`` reports the displayed width and height
from the file header without decoding, so a Record's width/height always equal what
``read_image`` returns. A broken EXIF block is treated as "no rotation" by all of them.

Undecodable files raise ImageError naming the file and the reason. A baseline JPEG that
ends early is the exception: when at most ``TRUNCATED_ROWS_LIMIT`` of its rows are lost
it is decoded as far as its data goes (the rest grey) and used; its ImageInfo / Decoded
carry the fraction so the data checks can report it.

Memory: an image above ``max_pixels()`` (90 megapixels unless the environment variable
RETINANET_MAX_PIXELS says otherwise) is refused from its header, before any pixel is
decoded: a small PNG can declare 13000 x 13000 pixels and would take gigabytes. For
inference (``min_side``) a JPEG above ``DRAFT_MIN_PIXELS`` is decoded at 1/2, 1/4 or 1/8
of its size by libjpeg's DCT scaling, never below what the letterbox needs (training
drafts every JPEG at least twice what augmentation needs); the limit then applies to the
pixels actually decoded.
"""

from __future__ import annotations

import io
import os
import shutil
import warnings
from collections.abc import Callable
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

DRAFT_MIN_PIXELS = 24_000_000
"""Inference decodes a JPEG above this many pixels reduced (Image.draft): a 12000 x 9000
photo then costs 5 MB of pixels instead of 324. Smaller ones decode in full, which is
cheap and keeps the annotated copy at the file's size and the boxes identical to those
of the same pixels passed as an array."""

TRUNCATED_ROWS_LIMIT = 0.01
"""A baseline JPEG that ends early is used when at most this fraction of its rows is
missing: losing the last bytes greys a few blocks of the last row band, not the picture.
More missing, or a progressive JPEG (its loss is spread over the whole
image), stays an error."""
CHECK_SCALE = 8
"""image_info(decode=True) and the truncation measure decode JPEGs at 1/8 scale: the whole
data stream is still read, and checking and loading agree on the rows missing."""
_JPEG_FILL = 128  # what libjpeg gives every pixel of a block it has no data for (L, RGB)
_EOI = b"\xff\xd9"  # end-of-image marker
_TRUNCATED = "image file is truncated"  # Pillow's OSError for data that stops early
_STRIP_ROWS = 512  # rows copied at a time from a PIL image into numpy


def is_file(path: str | Path) -> bool:
    """Path.is_file that says False for a name the file system refuses (too long, ...)
    instead of raising: a name read from an annotation is then just a missing image."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # ENAMETOOLONG; ValueError: an embedded NUL byte
        return False


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


class MissingImageError(ImageError):
    """The image file does not exist."""


class TooManyPixelsError(ImageError):
    """The image declares more pixels than max_pixels(): refused before decoding."""


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
    missing_rows: float | None = None
    """A JPEG that ends early and is still used (decode=True): fraction of its rows lost,
    decoded grey. None for a whole file."""


@dataclass(frozen=True)
class Decoded:
    image: Image.Image
    """RGB in displayed orientation; smaller than the file when a JPEG was drafted."""
    size: tuple[int, int]
    """(height, width) of the file in displayed orientation: the frame boxes refer to."""
    missing_rows: float | None = None
    """As ImageInfo.missing_rows."""


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
        raise TooManyPixelsError(
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


def draft_request(width: int, height: int, min_side: int, min_pixels: int = DRAFT_MIN_PIXELS) -> tuple[int, int] | None:
    """The size to ask Image.draft for, or None to decode in full (at most ``min_pixels``
    pixels, or a longer side under twice ``min_side``). Pillow picks the largest DCT scale
    (1/2, 1/4, 1/8) that keeps both sides at least the request, so asking for the image
    shrunk to a longer side of ``min_side`` never decodes below what the letterbox needs."""
    longer = max(width, height)
    if width * height <= min_pixels or longer < 2 * min_side:
        return None
    return max(1, -(-width * min_side // longer)), max(1, -(-height * min_side // longer))


def _cannot_decode(path: Path | str, e: Exception) -> ImageError:
    return ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})")


def _open_checked(path: Path) -> Image.Image:
    if not is_file(path):
        raise MissingImageError(f"{path}: image file not found")
    try:
        return _open(path)
    except Exception as e:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        raise _cannot_decode(path, e) from None


def _fill_rows(pixels: np.ndarray) -> int:
    """Rows at the bottom whose every value is libjpeg's fill grey."""
    grey = (pixels.reshape(pixels.shape[0], -1) == _JPEG_FILL).all(axis=1)
    decoded = np.flatnonzero(~grey)
    return len(grey) - (int(decoded[-1]) + 1 if len(decoded) else 0)


def _repaired(data: bytes) -> Image.Image:
    """A JPEG that ends early, given back its end-of-image marker: libjpeg then decodes what
    is there and fills the rest with grey, for this image alone (Pillow's
    LOAD_TRUNCATED_IMAGES would do the same for every image of every thread)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data + _EOI))


def _missing_rows(path: Path, data: bytes) -> float:
    """Fraction of the rows a truncated JPEG lost, measured at 1/8 scale; ImageError when
    it is above TRUNCATED_ROWS_LIMIT or cannot be measured."""
    with _repaired(data) as img:
        if img.info.get("progressive"):  # its loss is spread over the whole picture
            why = "truncated progressive JPEG: the missing data cannot be located"
        elif img.mode in ("L", "RGB"):  # a baseline scan fills rows top to bottom
            img.draft(img.mode, (max(1, img.width // CHECK_SCALE), max(1, img.height // CHECK_SCALE)))
            img.load()
            pixels = np.asarray(img)
            missing = _fill_rows(pixels) / pixels.shape[0]
            if missing <= TRUNCATED_ROWS_LIMIT:
                return missing
            why = f"truncated JPEG: {missing:.1%} of its rows are missing, more than {TRUNCATED_ROWS_LIMIT:.0%}"
        else:
            why = f"truncated {img.mode} JPEG: the rows missing cannot be measured"
    raise ImageError(f"{path}: cannot decode image ({why})")


def _load(img: Image.Image, path: Path | str, raw: Callable[[], bytes] | None = None) -> float | None:
    """Decode ``img``; None when its file is whole. A JPEG that ends early is measured
    instead (the fraction of rows missing, or ImageError beyond the limit) and left
    undecoded: the caller decodes its repaired bytes."""
    try:
        img.load()
        return None
    except OSError as e:
        if img.format != "JPEG" or not str(e).startswith(_TRUNCATED):
            raise
    return _missing_rows(path, raw() if raw else Path(path).read_bytes())


def decode_image(path: str | Path, min_side: int | None = None, draft_min_pixels: int = DRAFT_MIN_PIXELS) -> Decoded:
    """The file decoded to RGB in displayed orientation, with its own size.

    ``min_side`` (inference: the model's input size) lets a JPEG above ``draft_min_pixels``
    decode at reduced size with its longer side still at least ``min_side``; boxes found
    on it must be scaled to ``size``, the file's frame."""
    path = Path(path)
    return _decode(_open_checked(path), path, path.read_bytes, min_side, draft_min_pixels)


def decode_image_bytes(data: bytes, name: str, min_side: int | None = None) -> Decoded:
    """decode_image for an image file's bytes held in memory (a download); ``name`` (its
    URL) is what messages name."""
    try:
        img = _open(io.BytesIO(data))
    except Exception as e:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        raise _cannot_decode(name, e) from None
    return _decode(img, name, lambda: data, min_side)


def _decode(
    img: Image.Image, path: Path | str, raw: Callable[[], bytes], min_side: int | None, draft_min_pixels: int = DRAFT_MIN_PIXELS
) -> Decoded:
    """An opened image file decoded (drafted, repaired when truncated, rotated upright)."""
    keep = False
    try:
        w, h = img.size
        request = draft_request(w, h, min_side, draft_min_pixels) if min_side and img.format == "JPEG" else None
        if request:
            img.draft("RGB", request)
        check_pixels(path, *img.size)  # from the header, before decoding
        orientation = exif_orientation(img)
        missing = _load(img, path, raw)  # decode fully now: truncated files fail here, not later
        if missing is None:
            rgb = _rgb(img)
        else:
            repaired = _repaired(raw())
            if request:
                repaired.draft("RGB", request)
            rgb = to_rgb(repaired)
        keep = rgb is img
    except ImageError:
        raise
    except Exception as e:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        raise _cannot_decode(path, e) from None
    finally:
        if not keep:
            img.close()
    if orientation != NO_ROTATION:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return Decoded(rgb, (w, h) if orientation in SWAPS_SIDES else (h, w), missing)


def _rgb(img: Image.Image) -> Image.Image:
    """A decoded image as RGB: an RGB one whose file is already closed as it is (converting
    would copy every pixel), any other through to_rgb."""
    if img.mode == "RGB" and getattr(img, "fp", None) is None:
        return img
    return to_rgb(img)


def open_image(path: str | Path) -> Image.Image:
    """Decoded, EXIF-rotated RGB PIL image."""
    return decode_image(path).image


def _to_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an RGB image, copied a strip at a time: np.array(img)
    makes two whole-image byte copies on the way (360 MB for a 60-megapixel image)."""
    w, h = img.size
    out = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, _STRIP_ROWS):
        out[y : y + _STRIP_ROWS] = np.asarray(img.crop((0, y, w, min(h, y + _STRIP_ROWS))))
    return out


def read_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB tensor in displayed orientation: the one image-file reader.

    The tensor is a permuted view of the decoded (H, W, 3) pixels (channels-last memory):
    that skips a copy, and the uint8 antialiased resize that usually follows runs about
    twice as fast on this layout."""
    return read_image_for(path)[0]


def read_image_for(
    path: str | Path, min_side: int | None = None, draft_min_pixels: int = DRAFT_MIN_PIXELS
) -> tuple[torch.Tensor, tuple[int, int]]:
    """read_image for inference and training: the tensor, possibly drafted (see
    decode_image), and the file's (height, width) that boxes on the tensor are scaled to."""
    return _as_tensor(decode_image(path, min_side, draft_min_pixels))


def read_bytes_for(data: bytes, name: str, min_side: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """read_image_for of an image file's bytes in memory (a download named ``name``)."""
    return _as_tensor(decode_image_bytes(data, name, min_side))


def _as_tensor(decoded: Decoded) -> tuple[torch.Tensor, tuple[int, int]]:
    return torch.from_numpy(_to_array(decoded.image)).permute(2, 0, 1), decoded.size  # (H, W, 3) -> (3, H, W) view


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
    A JPEG that ends early but is usable has ``missing_rows`` set.
    """
    path = Path(path)
    if not is_file(path):
        raise MissingImageError(f"{path}: image file not found")
    missing = None
    try:
        with _open(path) as img:
            w, h = img.size
            check_pixels(path, w, h)  # from the header, before decoding
            mode = img.mode
            orientation = exif_orientation(img)
            if decode:
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, w // CHECK_SCALE), max(1, h // CHECK_SCALE)))
                missing = _load(img, path)
    except ImageError:
        raise
    except Exception as e:
        raise _cannot_decode(path, e) from None
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has zero size {w}x{h}")
    dw, dh = (h, w) if orientation in SWAPS_SIDES else (w, h)
    return ImageInfo(dw, dh, mode, orientation, w, h, missing)


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
