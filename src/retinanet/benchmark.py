"""Latency and throughput of one model on every runtime (`retinanet benchmark`), end to end
from a decoded image (uint8 RGB) to final boxes in its pixels, beside the
torchvision-assembled peer measured in the same run.

Timing: runtimes take turns, BLOCK calls back to back each per round, after PAUSE
seconds idle (the previous runtime's spinning threads go to sleep); the first call of a
block is not counted (it pays for the switch), so the medians are steady-state
latencies, as when one runtime serves a stream.

Runtimes: eager PyTorch, TorchScript (traced, frozen network; letterbox and
post-processing as in eager), torch.compile (with --compile: it takes minutes to build),
ONNX Runtime fp32 and int8 (exported and quantized on the fly), and with --runtimes also
OpenVINO fp32 / int8 (the same ONNX graph as IR, int8 by NNCF) and LiteRT fp32 / int8 (the
network alone at the square; letterbox and decode outside it). Runs are interleaved
round-robin, so a burst of load from other processes hits every runtime alike; the
medians and the ratios to the peer are what to read on a shared machine.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config.export import DEFAULT_RUNTIMES, RUNTIMES, BenchConfig, ExportConfig, QuantizeConfig

# Calls per runtime per round. The runtimes alternate block by block (a burst of load from
# other processes hits them all alike), and the first call of each block is not counted:
# it pays for the switch (PyTorch's OpenMP threads spin for a while after a call and on
# 2 cores take the next runtime's cores; ONNX Runtime measured 22 ms right after a PyTorch
# call, 12 ms in steady use). The samples are steady-state latencies, as in a stream.
BLOCK = 4
# Idle seconds before each block: the previous runtime's idle threads (PyTorch's OpenMP
# threads, ONNX Runtime's spinning pool) stop spinning and leave the cores to the next.
PAUSE = 0.1


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, block: int = BLOCK, pause: float = PAUSE
) -> dict[str, list[float]]:
    """Seconds per call of each function: ``repeats`` rounds, each running every function
    ``block`` times back to back (after ``pause`` idle seconds) and keeping all but the
    first of those calls."""
    if block < 2:
        raise ValueError(f"block must be at least 2 (its first call is discarded), got {block}")
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc="timing", unit="round", file=sys.stderr):
        for name, fn in fns.items():
            time.sleep(pause)
            for k in range(block):
                t = time.perf_counter()
                fn()
                if k:
                    times[name].append(time.perf_counter() - t)
    return times


def load_peer():
    from .peer import build_peer

    return build_peer


def test_image(path: str | None, rng_seed: int = 0) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB: the given photo, or a 640 x 480 synthetic scene."""
    if path:
        from .data.images import open_image

        return np.array(open_image(path), dtype=np.uint8), str(path)
    rng = np.random.default_rng(rng_seed)
    y, x = np.mgrid[0:480, 0:640]
    img = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], axis=2).astype(np.uint8)
    for _ in range(12):  # a few flat rectangles, so the network sees edges
        x0, y0 = rng.integers(0, 560), rng.integers(0, 400)
        img[y0 : y0 + rng.integers(20, 200), x0 : x0 + rng.integers(20, 200)] = rng.integers(0, 256, 3)
    return img, "synthetic 640x480"


def traced_runner(model, size: int):
    """TorchScript: the network traced and frozen (once per padded input shape, on first
    use); letterbox (rectangular when the model's ``rect`` is on) and post-processing eager."""
    import warnings

    from .preprocess import RECT_STRIDE, letterbox

    stride = RECT_STRIDE if model.cfg.rect else None
    nets: dict[tuple[int, ...], Callable] = {}

    def run(images: list[torch.Tensor]):
        with torch.no_grad():
            batch, scales, sizes = letterbox(images, size, stride)
            key = tuple(batch.shape)
            if key not in nets:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; measured while it exists
                    nets[key] = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model.eval(), batch)))
            return model.postprocess(nets[key](batch), tuple(batch.shape[-2:]), scales, sizes)

    return run


def compiled_runner(model, size: int):
    from .preprocess import RECT_STRIDE, letterbox

    stride = RECT_STRIDE if model.cfg.rect else None
    net = torch.compile(model.eval())

    def run(images: list[torch.Tensor]):
        with torch.no_grad():
            batch, scales, sizes = letterbox(images, size, stride)
            return model.postprocess(net(batch), tuple(batch.shape[-2:]), scales, sizes)

    return run


# Timed at COCO evaluation's score threshold, as the peer is, not at a stored one for use:
# the NMS and decode then see every candidate an evaluation would.
TIMING_CONF = 0.05


def build_runners(model, size: int, runtimes: tuple[str, ...], workdir: Path, calibration: list[Path] | None, image: np.ndarray, threads: int):
    """name -> function(list of (3, H, W) uint8 tensors) for each requested runtime."""
    from .api import Detector
    from .export import export_onnx, quantize_int8

    runners: dict[str, Callable] = {}
    # Batch norms folded, as Detector("model.pt") does; the caller's model stays trainable.
    fused = copy.deepcopy(model).fuse()
    if "eager" in runtimes:
        eager = Detector(fused, device="cpu", conf=TIMING_CONF)
        runners["eager"] = lambda imgs: eager.predict_tensors(imgs)
    if "torchscript" in runtimes:
        runners["torchscript"] = traced_runner(fused, size)
    if "compile" in runtimes:
        runners["compile"] = compiled_runner(model, size)
    if {"int8", "openvino-int8", "litert-int8"} & set(runtimes):
        calibration = calibration or [_saved(image, workdir / "calibration.png")]
    if {"litert", "litert-int8"} & set(runtimes):  # the network alone at the full square; letterbox and decode in numpy/torch
        runners.update(_litert_runners(fused, size, runtimes, workdir, calibration, threads))
    if {"onnx", "int8", "openvino", "openvino-int8"} & set(runtimes):
        fp32 = export_onnx(model, workdir / f"model{size}.onnx", ExportConfig(input_size=size))
        if "openvino" in runtimes or "openvino-int8" in runtimes:
            runners.update(_openvino_runners(fp32, runtimes, calibration, threads))
        if "onnx" in runtimes:
            d32 = Detector(fp32, threads=threads, conf=TIMING_CONF)
            runners["onnx fp32"] = lambda imgs: d32.predict_tensors(imgs)
        if "int8" in runtimes:
            q = quantize_int8(fp32, workdir / f"model{size}.int8.onnx", calibration, QuantizeConfig(num_images=min(100, len(calibration))))
            d8 = Detector(q, threads=threads, conf=TIMING_CONF)
            runners["onnx int8"] = lambda imgs: d8.predict_tensors(imgs)
    return runners


def _litert_runners(fused, size: int, runtimes: tuple[str, ...], workdir: Path, calibration: list[Path] | None, threads: int) -> dict[str, Callable]:
    """LiteRT fp32 and int8 (calibrated on ``calibration``) runners of the network at the ``size`` square."""
    from .api import Detector
    from .export.litert import export_litert

    runners: dict[str, Callable] = {}
    for name, precision in (("litert", "fp32"), ("litert-int8", "int8")):
        if name in runtimes:
            calib = calibration if precision == "int8" else None
            path = export_litert(fused, workdir / f"model{size}.{precision}.tflite", size, calib, num_images=100)
            runners[f"litert {precision}"] = Detector(path, threads=threads, conf=TIMING_CONF).predict_tensors
    return runners


def _openvino_runners(fp32: Path, runtimes: tuple[str, ...], calibration: list[Path] | None, threads: int) -> dict[str, Callable]:
    """OpenVINO fp32 (the IR of the ONNX graph) and int8 (that IR quantized by NNCF) runners."""
    from .api import Detector
    from .export.openvino import export_openvino, quantize_openvino

    xml = export_openvino(fp32, fp32.with_suffix(".xml"))
    runners: dict[str, Callable] = {}
    if "openvino" in runtimes:
        dov = Detector(xml, threads=threads, conf=TIMING_CONF)
        runners["openvino fp32"] = lambda imgs: dov.predict_tensors(imgs)
    if "openvino-int8" in runtimes:
        q = quantize_openvino(xml, fp32.with_name(fp32.stem + ".int8.xml"), calibration or [], num_images=min(100, len(calibration or [])))
        dq = Detector(q, threads=threads, conf=TIMING_CONF)
        runners["openvino int8"] = lambda imgs: dq.predict_tensors(imgs)
    return runners


def _saved(image: np.ndarray, path: Path) -> Path:
    """A calibration image when none is given: the timed photo, saved once."""
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


def benchmark(
    model_factory: Callable[[int], torch.nn.Module],
    cfg: BenchConfig,
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES,
    peer: bool = True,
    image_path: str | None = None,
    calibration: list[Path] | None = None,
) -> list[dict]:
    """Rows of {size, runtime, ms (median), images_per_s, vs_peer} for every size and runtime."""
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise ValueError(f"unknown runtime(s) {', '.join(sorted(unknown))}; choose from {', '.join(RUNTIMES)}")
    if cfg.batch < 1 or cfg.repeats < 1:
        raise ValueError("batch and repeats must be at least 1")
    torch.set_num_threads(cfg.threads)
    image, _ = test_image(image_path)
    # As Detector.predict receives a decoded image: a (3, H, W) view of the (H, W, 3) array.
    from .api import load_inputs

    chw = load_inputs(image)[0][0]
    images = [chw] * cfg.batch
    rows = []
    build_peer = load_peer() if peer else None
    for size in cfg.sizes:
        model = model_factory(size).eval()
        with tempfile.TemporaryDirectory() as tmp:
            fns = {}
            if build_peer is not None:
                # ImageNet weights, as its users have: random ones decay into slow denormals.
                p = build_peer(model.num_classes, size, pretrained=True).eval()
                floats = [chw.float() / 255] * cfg.batch  # the peer takes float images; its transform resizes

                def peer_fn(p=p, floats=floats):
                    with torch.no_grad():
                        return p(floats)

                fns["peer (torchvision, eager)"] = peer_fn
            for name, run in build_runners(model, size, runtimes, Path(tmp), calibration, image, cfg.threads).items():
                fns[name] = lambda run=run: run(images)
            times = time_interleaved(fns, cfg.repeats, cfg.warmup)
        peer_ms = statistics.median(times["peer (torchvision, eager)"]) * 1000 if build_peer else None
        for name, samples in times.items():
            ms = statistics.median(samples) * 1000
            rows.append(
                {
                    "size": size,
                    "runtime": name,
                    "ms": ms,
                    "images_per_s": cfg.batch / ms * 1000,
                    "vs_peer": (peer_ms / ms) if peer_ms else None,
                }
            )
    return rows


def format_rows(rows: list[dict], batch: int) -> str:
    lines = [
        "| runtime | input | batch | median ms | images/s | speed-up vs peer |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        vs = f"{r['vs_peer']:.1f}x" if r["vs_peer"] is not None else ""
        lines.append(f"| {r['runtime']} | {r['size']} | {batch} | {r['ms']:.1f} | {r['images_per_s']:.1f} | {vs} |")
    return "\n".join(lines)


def machine_line(threads: int) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    import onnxruntime

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, {threads} threads, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, load average {load:.1f} at start"
    )


def model_factory(checkpoint: str | None, preset_name: str, num_classes: int) -> Callable[[int], torch.nn.Module]:
    """input size -> the model to measure: the checkpoint's (loaded once now, so a bad
    path fails before the peer is built) or an ImageNet-initialised preset model."""
    if checkpoint:
        from .checkpoint import model_from_checkpoint

        model_from_checkpoint(checkpoint)  # fail now, not after the peer is built

        def from_checkpoint(size: int) -> torch.nn.Module:
            m = model_from_checkpoint(checkpoint)
            m.cfg.input_size = size
            return m

        return from_checkpoint
    from .config import preset
    from .model import build_model

    def from_preset(size: int) -> torch.nn.Module:
        # ImageNet backbone weights: random ones make activations vanish into slow denormals.
        return build_model(preset(preset_name, num_classes=num_classes, input_size=size))

    return from_preset
