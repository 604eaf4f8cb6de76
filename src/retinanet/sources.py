"""Where the images of a prediction come from: image files, folders, globs, http(s) URLs
of images, in-memory images (PIL, numpy, torch), video files, video streams (rtsp://,
http MJPEG, ...) and webcams.

``open_source`` checks a source at once (a missing file, an empty folder, a bad array
or an unreachable URL raises before any work) and returns a lazy iterator: each image is
decoded (or downloaded) only when it is reached, so a folder is never decoded whole.

URLs: an http(s) address whose path ends in an image suffix is an image; one ending in a
video suffix is a video; any other is asked for its Content-Type (``image/*``: an image;
``multipart/*`` (MJPEG) or ``video/*``: a stream). Images are downloaded into memory only
(at most URL_MAX_BYTES, within URL_TIMEOUT_S seconds in all, headers included: a
server sending a byte now and then is cut off at that time; redirects only to http(s)) and
decoded by the same rules as files (data/images.py: EXIF rotation, every mode to RGB, the
pixel limit checked from the header before decoding). Failures raise ``UrlError`` naming
the URL.
"""

from __future__ import annotations

import glob as globlib
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data.images import (
    IMAGE_SUFFIXES,
    ImageError,
    read_bytes_for,
    read_image_for,
    to_rgb,
)
from .http_deadline import Deadline, opener
from .video import VIDEO_SUFFIXES, VideoSource, is_stream, is_video, is_webcam

URL_SCHEMES = ("http", "https")
URL_TIMEOUT_S = 30.0
"""Seconds a download (or a URL's Content-Type probe) may take in all."""
URL_MAX_BYTES = 64 * 2**20
"""Largest image file downloaded (64 MiB)."""
_CHUNK = 1 << 16

Size = tuple[int, int]


class UrlError(ImageError):
    """A URL that cannot be used; the message names the URL and the reason."""


@dataclass
class Input:
    """One image to predict on: (3, H, W) uint8 or float tensor, where it came from."""

    image: Tensor
    source: str | None = None
    """File, URL or video it came from (None: an in-memory image)."""
    size: Size | None = None
    """(H, W) of the file when it decoded reduced (a large JPEG); None: the tensor's size."""
    frame: int | None = None
    """Index of the frame in its video or stream."""


# ----------------------------------------------------------------------------- files


def expand_images(source: str | Path) -> list[Path]:
    """A file, a folder (its images, sorted, not recursive) or a glob -> image files."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{text}: no images match this pattern")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    return [path]


# ----------------------------------------------------------------------------- URLs


def is_url(source: Any) -> bool:
    """An http(s) address (of an image, a video or an MJPEG stream)."""
    if not isinstance(source, str) or "://" not in source:
        return False
    parts = urlsplit(source.strip())
    return parts.scheme.lower() in URL_SCHEMES and bool(parts.netloc)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) addresses only (never file:// or ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in URL_SCHEMES:
            raise UrlError(f"{req.full_url}: redirected to {newurl!r}, which is not an http(s) address")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@contextmanager
def _open_url(url: str, timeout: float) -> Iterator[tuple[Any, Deadline]]:
    """The response to ``url`` (headers read) and the deadline that ends the download
    ``timeout`` seconds after it began; failures raise UrlError."""
    if not is_url(url):
        raise UrlError(f"{url}: not an http(s) address")
    request = urllib.request.Request(url, headers={"User-Agent": "retinanet-mobilenet"})
    deadline = Deadline(timeout)
    try:
        try:
            response = opener(deadline, _HttpOnlyRedirects).open(request, timeout=timeout)
        except UrlError:
            raise
        except urllib.error.HTTPError as e:
            raise UrlError(f"{url}: cannot download (HTTP {e.code} {e.reason})") from None
        except (OSError, HTTPException, ValueError) as e:  # timeouts, resets, malformed addresses
            if deadline.expired:
                raise UrlError(f"{url}: no answer within {timeout:g} s") from None
            reason = e.reason if isinstance(e, urllib.error.URLError) else f"{type(e).__name__}: {e}"
            raise UrlError(f"{url}: cannot download ({reason})") from None
        with response:
            if deadline.expired:  # headers cut short by the deadline
                raise UrlError(f"{url}: no answer within {timeout:g} s")
            yield response, deadline
    finally:
        deadline.cancel()


def fetch(url: str, max_bytes: int | None = None, timeout: float | None = None) -> bytes:
    """The body of ``url``, read into memory: at most ``max_bytes`` (None: URL_MAX_BYTES),
    within ``timeout`` seconds in all, headers included (None: URL_TIMEOUT_S)."""
    max_bytes = URL_MAX_BYTES if max_bytes is None else max_bytes
    timeout = URL_TIMEOUT_S if timeout is None else timeout
    late = f"{url}: download took longer than {timeout:g} s"
    with _open_url(url, timeout) as (response, deadline):
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise UrlError(f"{url}: {int(declared) / 2**20:.1f} MiB, above the download limit of {max_bytes / 2**20:g} MiB")
        buf = bytearray()
        try:
            while chunk := response.read1(_CHUNK):  # what has arrived: the deadline is seen between small reads
                buf += chunk
                if len(buf) > max_bytes:
                    raise UrlError(f"{url}: larger than the download limit of {max_bytes / 2**20:g} MiB")
                if deadline.expired:
                    raise UrlError(late)
        except (OSError, HTTPException) as e:
            raise UrlError(late if deadline.expired else f"{url}: download failed ({type(e).__name__}: {e})") from None
        if deadline.expired:  # the socket shut down: what came is cut short
            raise UrlError(late)
    if not buf:
        raise UrlError(f"{url}: the server sent no data")
    return bytes(buf)


def url_kind(url: str) -> str:
    """'image' or 'video' (a video file or a stream OpenCV reads): from the path's suffix,
    else from the Content-Type the server answers with (within URL_TIMEOUT_S)."""
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    with _open_url(url, URL_TIMEOUT_S) as (response, _):
        kind = (response.headers.get_content_type() or "").lower()
    if kind.startswith("image/"):
        return "image"
    if kind.startswith(("multipart/", "video/")) or kind in ("application/vnd.apple.mpegurl", "application/x-mpegurl"):
        return "video"
    raise UrlError(f"{url}: neither an image nor a video stream (Content-Type {kind or 'missing'})")


def decode_bytes(data: bytes, name: str, min_side: int | None = None) -> tuple[Tensor, Size]:
    """An image file's bytes -> (3, H, W) uint8 RGB tensor in displayed orientation and the
    image's (H, W), by the same rules as a file (data.images: EXIF rotation, every mode to
    RGB, the pixel limit, a slightly truncated JPEG repaired; ``min_side``: a large JPEG
    may decode reduced, its longer side kept at least that)."""
    return read_bytes_for(data, name, min_side)


def read_url(url: str, min_side: int | None = None) -> tuple[Tensor, Size]:
    """An image URL downloaded into memory and decoded: the tensor and the image's (H, W)."""
    return decode_bytes(fetch(url), url, min_side)


def url_file_name(url: str, default: str = "image") -> str:
    """A safe file name for what ``url`` points at: its last path part, only letters, digits,
    '.', '_' and '-' kept (never a path, never hidden), or ``default``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(urlsplit(url).path).name).lstrip(".")
    return name[:120] or default


def video_stem(source: str) -> str:
    """The stem a video's outputs are named by: 'webcam0', a file's stem, or for a stream
    its address's last path part, made safe (url_file_name), or 'stream'."""
    if is_webcam(source):
        return f"webcam{source.strip()}"
    if is_stream(source):
        return Path(url_file_name(source.strip(), "stream")).stem or "stream"
    return Path(source).stem


# ----------------------------------------------------------------------------- in memory


def _writable(arr: np.ndarray) -> np.ndarray:
    """Contiguous and writable (torch.from_numpy warns on read-only arrays such as PIL's)."""
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()


def array_to_chw(arr: np.ndarray, what: str) -> Tensor:
    """(H, W), (H, W, 1|3|4) uint8 or float in [0, 1] -> (3, H, W) uint8 or float tensor."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected an (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.shape[2] == 4:
            arr = np.asarray(to_rgb(Image.fromarray(arr, "RGBA")))
        return torch.from_numpy(_writable(arr)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{what}: a float image must hold finite values in [0, 1]")
        if arr.shape[2] == 4:  # composite on black, as to_rgb does
            arr = arr[..., :3] * arr[..., 3:]
        return torch.from_numpy(_writable(arr.astype(np.float32, copy=False))).permute(2, 0, 1)
    raise ValueError(f"{what}: unsupported dtype {arr.dtype} (use uint8, or float in [0, 1])")


def tensor_to_chw(t: Tensor, what: str) -> Tensor:
    t = t.detach().cpu()
    if t.ndim == 2:
        t = t[None].expand(3, -1, -1)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"{what}: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.dtype == torch.uint8:
        return t
    if t.is_floating_point():
        if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
            raise ValueError(f"{what}: a float tensor must hold finite values in [0, 1]")
        return t.float()
    raise ValueError(f"{what}: unsupported dtype {t.dtype} (use uint8, or float in [0, 1])")


def _in_memory(source: Any) -> tuple[list[Tensor], bool]:
    """A PIL image, array or tensor (or a batch of them) -> tensors, and whether it was one."""
    if isinstance(source, Image.Image):
        return [array_to_chw(np.asarray(to_rgb(source)), "PIL image")], True
    if isinstance(source, np.ndarray):
        if source.ndim == 4:
            return [array_to_chw(a, f"array batch[{i}]") for i, a in enumerate(source)], False
        return [array_to_chw(source, "array")], True
    if isinstance(source, Tensor):
        if source.ndim == 4:
            return [tensor_to_chw(t, f"tensor batch[{i}]") for i, t in enumerate(source)], False
        return [tensor_to_chw(source, "tensor")], True
    raise ValueError(f"cannot predict on a {type(source).__name__}: give a path, URL, PIL image, numpy array, tensor or a list")


# ----------------------------------------------------------------------------- any source


@dataclass(frozen=True)
class _ImageUrl:
    url: str


@dataclass(frozen=True)
class _Video:
    source: str


def source_kind(source: str) -> str:
    """'image' (a file, folder, glob or image URL) or 'video' (a video file, a stream, a webcam)."""
    if is_url(source):
        return url_kind(source)
    return "video" if is_video(source) else "image"


def _video_part(text: str, videos: bool) -> _Video:
    if not videos:
        raise ValueError(f"{text}: a video gives one result per frame: use predict(..., stream=True)")
    if not (is_webcam(text) or is_stream(text) or Path(text).is_file()):
        raise FileNotFoundError(f"{text}: video file not found")
    return _Video(text)


def _plan(source: Any, videos: bool) -> tuple[list[Any], bool]:
    """What a source holds (checked now, decoded later): Paths, _ImageUrls, tensors and
    _Videos, and whether it is a single image."""
    if isinstance(source, (str, Path)):
        text = str(source)
        if source_kind(text) == "video":
            return [_video_part(text, videos)], False
        if is_url(text):
            return [_ImageUrl(text.strip())], True
        files = expand_images(text)
        return list(files), len(files) == 1 and Path(text).is_file()
    if isinstance(source, (list, tuple)):
        parts: list[Any] = []
        for item in source:
            parts += _plan(item, videos)[0]
        return parts, False
    return _in_memory(source)


def _iterate(parts: list[Any], min_side: int | None) -> Iterator[Input]:
    for part in parts:
        if isinstance(part, Path):
            image, size = read_image_for(part, min_side)
            yield Input(image, str(part), size)
        elif isinstance(part, _ImageUrl):
            image, size = read_url(part.url, min_side)
            yield Input(image, part.url, size)
        elif isinstance(part, _Video):
            for i, frame in enumerate(VideoSource(part.source)):
                yield Input(torch.from_numpy(frame).permute(2, 0, 1), part.source, None, i)  # (H, W, 3) -> (3, H, W)
        else:
            yield Input(part)


def open_source(source: Any, min_side: int | None = None, videos: bool = False) -> tuple[Iterator[Input], bool]:
    """Any supported source -> a lazy iterator of its images, and whether it is one image.
    Everything that can be checked without decoding is checked now. ``videos``: accept video
    files, streams and webcams (one Input per frame); otherwise they raise ValueError."""
    parts, single = _plan(source, videos)
    return _iterate(parts, min_side), single


def read_inputs(source: Any, min_side: int | None = None) -> tuple[list[Tensor], list[str | None], bool, list[Size | None]]:
    """Every image of a source decoded at once: tensors, their file names (None: in memory),
    whether it was one image, and per image the (H, W) of its file (None: the tensor's size)."""
    items, single = open_source(source, min_side)
    got = list(items)
    return [i.image for i in got], [i.source for i in got], single, [i.size for i in got]


def load_inputs(source: Any) -> tuple[list[Tensor], list[str | None], bool]:
    """Any supported input -> (3, H, W) tensors, their file names, and whether it was one image."""
    return read_inputs(source)[:3]


__all__ = [
    "URL_MAX_BYTES",
    "URL_TIMEOUT_S",
    "Input",
    "UrlError",
    "array_to_chw",
    "decode_bytes",
    "expand_images",
    "fetch",
    "is_url",
    "load_inputs",
    "open_source",
    "read_inputs",
    "read_url",
    "source_kind",
    "tensor_to_chw",
    "url_file_name",
    "url_kind",
    "video_stem",
]  # fmt: skip
