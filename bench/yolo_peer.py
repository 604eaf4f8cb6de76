"""Ultralytics' nano detectors beside ours, in one run on this machine: inference from a
photo to boxes in ONNX Runtime, and training images per second.

Ultralytics is AGPL and pulls opencv-python (which would shadow our
opencv-python-headless), so it never enters .venv: this script builds its own
environment for it (bench/out/yolo_venv: torch from this machine's disk, ultralytics
8.4.190, onnx, onnxslim) and runs bench/yolo_child.py there to build YOLO11n and YOLO26n from their
model yaml (random weights: nothing can be downloaded here, and speed does not depend on
them), export them to ONNX (YOLO11n with its NMS inside, YOLO26n end to end) and train them.

Inference is timed here, in .venv, in one process with the same ONNX Runtime and threads
for every model, interleaved round by round (retinanet.benchmark.time_interleaved): from
the same decoded 640x480 COCO photo (uint8) to boxes in its pixels. Ours is the default
preset at each size with letterbox, decode and NMS in its graph; for YOLO the timer
covers its letterbox in numpy (cv2 resize, pad to a multiple of 32 with grey 114, /255),
the graph, the confidence filter and the scale back. The 4:3 photo runs at 320x256 for
every model at 320.

Training: coco128 (all 128 images) converted to YOLO labels with `retinanet convert`,
batch 8, no workers (the auto setting on 2 cores), each side with its default
augmentation (ours: flips, scale jitter, colour; Ultralytics: mosaic and the rest),
validation off. Images per second are those of the epochs after the first.

With ``--variant key=value ...`` (model overrides, e.g. ``model.fpn.channels=64``) a second
row of ours, the default preset with those overrides, is timed and trained beside the
rest: a candidate cut measured against the peers in the same run.

    .venv/bin/python bench/yolo_peer.py [--repeats 30] [--sizes 320] [--epochs 3] [--skip-train] [--skip-speed]
        [--variant key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common import ROOT, flops, machine, write_report
from retinanet.benchmark import TIMING_CONF, build_runners, test_image, time_interleaved
from retinanet.config import RunConfig, preset
from retinanet.config.io import apply_overrides
from retinanet.model import build_model

DATASETS = ROOT.parent / "shared" / "datasets"
PHOTO = DATASETS / "coco128" / "train2017" / "000000000009.jpg"
OUT = ROOT / "bench" / "out" / "yolo_peer"
PEER_VENV = ROOT / "bench" / "out" / "yolo_venv"
PEERS = ("yolo11n", "yolo26n")
OURS = "ours, default preset"
STRIDE = 32  # Ultralytics pads its letterbox to a multiple of the largest stride


def peer_python() -> Path:
    """The peer environment's python, built (or completed) on first use."""
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    packages = ["torch==2.14.1", "torchvision==0.29.1", "ultralytics==8.4.190", "onnx", "onnxslim", f"onnxruntime=={ort.__version__}"]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages], check=True)
    return py


def run_child(py: Path, *args: str) -> dict:
    """bench/yolo_child.py in the peer environment; its RESULT line as a dict."""
    proc = subprocess.run([str(py), str(ROOT / "bench" / "yolo_child.py"), *args], capture_output=True, text=True, cwd=OUT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"yolo_child.py {' '.join(args)} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def peer_version(py: Path) -> str:
    # The package's metadata, not an import: a first import prints Ultralytics' settings banner.
    code = "from importlib.metadata import version; print(version('ultralytics'))"
    return subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()


def yolo_runner(path: str, size: int, threads: int):
    """Photo (H, W, 3) uint8 -> (boxes xyxy in its pixels, scores, classes) through an
    Ultralytics ONNX graph whose output is (1, 300, 6): x1 y1 x2 y2 score class."""
    import cv2

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(image: np.ndarray):
        h, w = image.shape[:2]
        r = size / max(h, w)
        nh, nw = round(h * r), round(w * r)
        ph, pw = math.ceil(nh / STRIDE) * STRIDE, math.ceil(nw / STRIDE) * STRIDE
        top, left = (ph - nh) // 2, (pw - nw) // 2
        canvas = np.full((ph, pw, 3), 114, np.uint8)
        canvas[top : top + nh, left : left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        out = session.run(None, {name: x})[0][0]
        keep = out[:, 4] > TIMING_CONF
        boxes = (out[keep, :4] - np.array([left, top, left, top], np.float32)) / r
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return boxes, out[keep, 4], out[keep, 5].astype(np.int64)

    return run


def ours_models(size: int, variant: list[str]) -> dict:
    """Row name -> our untrained model at ``size``: the default preset, and with ``variant``
    the default preset under those model overrides."""
    models = {OURS: preset("default", num_classes=80, input_size=size)}
    if variant:  # a preset of its own: apply_overrides changes the config it is given
        cfg = apply_overrides(RunConfig(model=preset("default", num_classes=80, input_size=size)), variant).model
        models[f"ours, {' '.join(variant)}"] = cfg
    return {name: build_model(cfg).eval() for name, cfg in models.items()}


def speed(py: Path, sizes: list[int], repeats: int, threads: int, variant: list[str]) -> str:
    image, _ = test_image(str(PHOTO))
    from retinanet.api import load_inputs

    chw = load_inputs(image)[0][0]
    rows = []
    for size in sizes:
        exported = {name: run_child(py, "export", name, str(OUT / f"onnx{size}"), str(size), str(TIMING_CONF)) for name in PEERS}
        fns, gflops = {}, {name: info["gflops"] for name, info in exported.items()}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, model) in enumerate(ours_models(size, variant).items()):
                gflops[name] = flops(lambda: model(torch.zeros(1, 3, size, size)))
                folder = Path(tmp) / str(i)
                folder.mkdir()
                run = build_runners(model, size, ("onnx",), folder, None, image, threads)["onnx fp32"]
                fns[name] = lambda run=run: run([chw])
            for name, info in exported.items():
                run = yolo_runner(info["onnx"], size, threads)
                fns[name] = lambda run=run: run(image)
            times = time_interleaved(fns, repeats, warmup=5)
        ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
        for name, value in ms.items():
            rows.append((size, name, gflops.get(name), value, value / ms[OURS]))
    lines = [
        "| input | model | GFLOP at the square (2 per multiply-add) | ONNX Runtime fp32 ms, photo to boxes | time / ours |",
        "| --- | --- | --- | --- | --- |",
    ]
    for size, name, gf, value, ratio in rows:
        lines.append(f"| {size} | {name} | {'' if gf is None else f'{gf:.2f}'} | {value:.1f} | {ratio:.2f} |")
    return "\n".join(lines)


def yolo_dataset() -> str:
    """coco128 as YOLO labels (images symlinked), with a data.yaml Ultralytics accepts."""
    folder = OUT / "coco128_yolo"
    if not (folder / "data.yaml").exists():
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "retinanet"), "convert", str(DATASETS / "coco128"), str(folder), "--to", "yolo", "--quiet", "--overwrite"],
            check=True,
        )
    spec = folder / "peer.yaml"
    text = (folder / "data.yaml").read_text()
    spec.write_text(text + "val: images/train\n")  # Ultralytics wants a val entry; validation is off
    return str(spec)


def ours_training(epochs: int, batch: int, size: int, overrides: list[str], folder: str) -> dict:
    out = OUT / folder
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time; retinanet train refuses to overwrite one
    cmd = [
        str(ROOT / ".venv" / "bin" / "retinanet"), "train", "--data", str(DATASETS / "coco128"), "--epochs", str(epochs),
        "--batch", str(batch), "--imgsz", str(size), "--workers", "0", "--no-final", "--no-progress", "--out", str(out),
        "data.val_split=none", "train.loggers=[]", *overrides,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out / "results.csv") as f:
        rates = [float(row["images_per_second"]) for row in csv.DictReader(f)]
    return {"rates": rates, "command": " ".join(["retinanet", *cmd[1:]])}


def training(py: Path, epochs: int, batch: int, size: int, threads: int, variant: list[str]) -> str:
    data = yolo_dataset()
    ours = ours_training(epochs, batch, size, [], f"ours_train{size}")
    lines = [
        f"coco128, 128 images, batch {batch}, {size} px, {epochs} epochs, {threads} threads, no workers, validation off; images/s of epochs 2-{epochs} (epoch 1 in brackets)",
        "",
        "| model | images/s, epochs after the first | epoch 1 | ours / this |",
        "| --- | --- | --- | --- |",
    ]
    ours_rate = statistics.mean(ours["rates"][1:])
    lines.append(f"| ours, default preset and recipe | {ours_rate:.2f} | {ours['rates'][0]:.2f} | 1.00 |")
    if variant:
        other = ours_training(epochs, batch, size, variant, f"ours_train{size}_variant")
        rate = statistics.mean(other["rates"][1:])
        lines.append(f"| ours, {' '.join(variant)} | {rate:.2f} | {other['rates'][0]:.2f} | {ours_rate / rate:.2f} |")
    for name in PEERS:
        r = run_child(py, "train", name, str(OUT / "train"), str(size), data, str(epochs), str(batch), str(threads))
        if r["threads"] != threads:
            raise SystemExit(f"{name} trained on {r['threads']} threads, not {threads}")
        rates = [r["images"] / s for s in r["epoch_seconds"]]
        steady = statistics.mean(rates[1:])
        lines.append(f"| {name} | {steady:.2f} | {rates[0]:.2f} | {ours_rate / steady:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sizes", type=int, nargs="+", default=[320])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=320)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--variant", nargs="+", default=[], metavar="KEY=VALUE", help="model overrides timed and trained as a second row of ours")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch is not steady state)")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    py = peer_python()
    parts = [f"machine: {machine()}; ultralytics {peer_version(py)}, onnxruntime {ort.__version__}"]
    if not args.skip_speed:
        parts.append(speed(py, args.sizes, args.repeats, args.threads, args.variant))
    if not args.skip_train:
        parts.append(training(py, args.epochs, args.batch, args.train_size, args.threads, args.variant))
    write_report("yolo_peer", "\n\n".join(parts))


if __name__ == "__main__":
    main()
