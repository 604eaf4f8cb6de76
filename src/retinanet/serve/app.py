"""The HTTP API (FastAPI) around one Detector and its Batcher.

    POST /predict   an image (multipart field ``file``, or the raw bytes as the body);
                    ``conf`` as a query or form field (default: the model's threshold)
                    -> {"source", "frame", "height", "width", "detections": [...], "conf"}
                    413 upload above max_upload_mb or image above the pixel limit,
                    415 not a readable image, 422 a bad conf, 503 queue full (Retry-After)
    GET  /health    {"status": "ok"}
    GET  /model     classes, input size, format, version, default conf
    GET  /metrics   requests, refused, failed, forward passes, batch sizes, latency p50/p95
    GET  /          the web page (page.html)
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request,
# imported inside create_app so that the package imports without FastAPI) at definition time.
import asyncio
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .batcher import Batcher, QueueFull

RETRY_AFTER_S = 1


@dataclass
class ServeConfig:
    max_upload_mb: float = 20.0
    """Largest upload accepted; a larger one gets 413 before it is read whole."""
    max_queue: int = 64
    """Images waiting for the model at most; beyond, 503 with Retry-After."""
    batch_window_ms: float = 5.0
    """How long the first waiting image waits for others to share its forward pass."""
    max_batch: int = 8
    """Images per forward pass at most."""


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(detector: Any, cfg: ServeConfig | None = None):
    """A FastAPI app serving ``detector`` (an api.Detector); its Batcher starts now and stops with the app."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    cfg = cfg or ServeConfig()
    batcher = Batcher(detector, cfg.max_queue, cfg.max_batch, cfg.batch_window_ms / 1000)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="retinanet-mobilenet", lifespan=lifespan)
    app.state.batcher, app.state.detector = batcher, detector
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model_info() -> dict:
        return describe(detector)

    @app.get("/metrics")
    async def metrics() -> dict:
        return batcher.stats.snapshot(batcher.queue.qsize())

    @app.post("/predict")
    async def predict(request: Request):
        try:
            data, name, conf = await read_upload(request, int(cfg.max_upload_mb * 1e6))
            image, size = await asyncio.to_thread(decode_upload, data, name, detector.input_size)
            future = batcher.submit(image, size, name, conf)
        except UploadError as e:
            return JSONResponse({"detail": str(e)}, status_code=e.status)
        except QueueFull as e:
            return JSONResponse({"detail": f"busy: {e}; retry later"}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            result = await asyncio.wrap_future(future)
        except Exception as e:
            return JSONResponse({"detail": f"{name}: the model failed: {e}"}, status_code=500)
        return {**result.to_dict(), "conf": detector.conf if conf is None else conf}

    return app


def describe(detector: Any) -> dict:
    from .. import __version__

    return {
        "classes": list(detector.class_names),
        "input_size": int(detector.input_size),
        "format": detector.backend_name,
        "model": detector.path.name if detector.path else None,
        "conf": detector.conf,
        "version": __version__,
    }


async def read_upload(request: Any, limit: int) -> tuple[bytes, str, float | None]:
    """The uploaded image's bytes, its name and the conf asked for; UploadError for what is refused."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"upload of {int(declared) / 1e6:.1f} MB is above the limit of {limit / 1e6:g} MB")
    body = bytearray()
    async for chunk in request.stream():  # read at most limit + 1 bytes, whatever the header said
        body += chunk
        if len(body) > limit:
            raise UploadError(413, f"upload is above the limit of {limit / 1e6:g} MB")
    conf_text = request.query_params.get("conf")
    name, data = "upload", bytes(body)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        data, name, form_conf = await _multipart(request, bytes(body))
        conf_text = conf_text if conf_text is not None else form_conf
    if not data:
        raise UploadError(415, "no image in the request (send the file as multipart field 'file' or as the body)")
    return data, name, _conf(conf_text)


async def _multipart(request: Any, body: bytes) -> tuple[bytes, str, str | None]:
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def replay():
        yield body
        yield b""

    parser = MultiPartParser(request.headers, replay())
    parser.spool_max_size = len(body) + 1  # the parts stay in memory: nothing is written to disk
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise UploadError(415, f"unreadable multipart form: {e}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise UploadError(415, "the multipart form has no file field 'file'")
    data = await upload.read()
    conf = form.get("conf")
    return data, _safe_name(upload.filename), conf if isinstance(conf, str) else None


def _safe_name(name: str | None) -> str:
    """An upload's file name as a plain label (never used as a path)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", (name or "").rsplit("/", 1)[-1].rsplit("\\", 1)[-1])[:128]
    return cleaned or "upload"


def _conf(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UploadError(422, f"conf must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UploadError(422, f"conf must be in [0, 1], got {value:g}")
    return value


def decode_upload(data: bytes, name: str, input_size: int):
    """Bytes -> ((3, H, W) uint8 tensor, (H, W)) by the rules of image files; 413 / 415 as UploadError."""
    from ..data.images import ImageError, TooManyPixelsError
    from ..sources import decode_bytes

    try:
        return decode_bytes(data, name, input_size)
    except TooManyPixelsError as e:
        raise UploadError(413, str(e)) from None
    except ImageError as e:
        raise UploadError(415, str(e)) from None
