"""`retinanet serve --model X`: an HTTP API (POST /predict, GET /health, /model, /metrics)
and a web page at / for any model Detector loads; concurrent requests share forward passes."""

from __future__ import annotations

import argparse
import sys

from ..config.predict import PredictConfig as D
from ..serve.app import ServeConfig as S
from .flags import add_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt) or exported model (.onnx, OpenVINO .xml, LiteRT .tflite)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--conf", type=float, default=D.conf, help="default score threshold (default: the one the model stores, else 0.25)")
    p.add_argument("--max-upload-mb", type=float, default=S.max_upload_mb, help="largest upload in MB; larger gets 413 (default 20)")
    p.add_argument("--max-queue", type=int, default=S.max_queue, help="images waiting at most; beyond, 503 with Retry-After (default 64)")
    p.add_argument("--batch-window-ms", type=float, default=S.batch_window_ms,
                   help="how long a request waits for others to share its forward pass (default 5)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=S.max_batch, help="images per forward pass at most (default 8)")
    add_device(p)
    p.add_argument("--threads", type=int, default=D.threads, help="ONNX Runtime / OpenVINO / LiteRT CPU threads")


def run(args: argparse.Namespace) -> int:
    from ..api import Detector
    from ..devices import check_present

    try:
        import uvicorn

        from ..serve import create_app
    except ImportError as e:
        raise RuntimeError(f"retinanet serve needs FastAPI and uvicorn: pip install 'retinanet-mobilenet[serve]' ({e})") from None
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if args.max_queue < 1 or args.max_batch < 1 or args.batch_window_ms < 0:
        raise ValueError("--max-queue and --max-batch must be at least 1, --batch-window-ms at least 0")
    det = Detector(args.model, conf=args.conf, device=check_present(args.device, "--device"), threads=args.threads)
    cfg = S(args.max_upload_mb, args.max_queue, args.batch_window_ms, args.max_batch)
    print(f"serving {args.model} ({det.backend_name}, {det.num_classes} classes) on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(create_app(det, cfg), host=args.host, port=args.port, log_level="info")
    return 0
