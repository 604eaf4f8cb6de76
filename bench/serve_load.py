"""Load on `retinanet serve` -> BENCHMARKS.md, section "Serving under load".

A server on 127.0.0.1 (default preset, 80 classes, ONNX Runtime fp32 at 320 unless
--model is given) answers REQUESTS requests from CLIENTS concurrent clients, each posting
a coco128 photo (the 128 photos in turn). Reports throughput, client-side latency p50 /
p95, how many were refused with 503 (none expected at this load), and from /metrics the
forward passes and batch sizes the batching made of them. Then the same requests one at a
time, for the throughput batching buys.

    .venv/bin/python bench/serve_load.py [--requests 200] [--clients 8] [--model model.onnx]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from common import machine, write_report  # noqa: E402
from test_serve import running  # noqa: E402  the tests' server on a free loopback port

from retinanet.api import Detector  # noqa: E402
from retinanet.serve import ServeConfig  # noqa: E402

PHOTOS = sorted((ROOT.parent / "shared" / "datasets" / "coco128" / "train2017").glob("*.jpg"))


def _model(tmp: Path, given: str | None) -> str:
    if given:
        return given
    from retinanet.config import ExportConfig, preset
    from retinanet.export import export_onnx
    from retinanet.model import build_model

    return str(export_onnx(build_model(preset("default", num_classes=80)), tmp / "model.onnx", ExportConfig()))


def load(url: str, requests: int, clients: int) -> dict:
    bodies = [p.read_bytes() for p in PHOTOS]

    def one(i: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        r = client.post("/predict", content=bodies[i % len(bodies)])
        return r.status_code, time.perf_counter() - t0

    with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        before = client.get("/metrics").json()
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
        after = client.get("/metrics").json()
    lat = sorted(t for _, t in answers)
    return {
        "clients": clients, "requests": requests, "ok": sum(c == 200 for c, _ in answers),
        "refused": sum(c == 503 for c, _ in answers), "wall": wall, "rps": requests / wall,
        "p50": statistics.median(lat) * 1000, "p95": lat[int(0.95 * (len(lat) - 1))] * 1000,
        "passes": after["forward_passes"] - before["forward_passes"],
        "batches": {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items() if v - before["batch_sizes"].get(k, 0)},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--model", help="model to serve (default: an untrained default-preset ONNX export, 80 classes)")
    args = ap.parse_args()
    lines = [machine(), ""]
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(Path(tmp), args.model)
        det = Detector(model, conf=0.05)
        with running(det, ServeConfig()) as url:
            httpx.post(url + "/predict", content=PHOTOS[0].read_bytes(), timeout=120)  # warm-up
            rows = [load(url, args.requests, args.clients), load(url, args.requests // 4, 1)]
    lines += [f"model: {Path(model).name} ({det.backend_name}), server defaults (window 5 ms, max batch 8, queue 64)", "",
              "| clients | requests | ok | 503 | requests/s | p50 ms | p95 ms | forward passes | batch sizes |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        sizes = ", ".join(f"{k}: {v}" for k, v in sorted(r["batches"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"| {r['clients']} | {r['requests']} | {r['ok']} | {r['refused']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['passes']} | {sizes} |")
    text = "\n".join(lines)
    write_report("serve_load", text)


if __name__ == "__main__":
    main()
