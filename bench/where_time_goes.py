"""Where the time goes, for the default preset: the exported graph per part (ONNX Runtime's
profiler) and a training step per stage (torch.profiler).

Inference: the ONNX graph `retinanet export` writes (letterbox, network, decode and NMS
inside), 80 classes, run on the decoded 640x480 photo `000000000009.jpg` (letterboxed to
320x256 at 320). ONNX Runtime's per-node kernel times are summed by the module each node
came from (the exporter's name scopes): letterbox, backbone, FPN, class and box towers,
class and box predictors, and the graph's own code outside those modules (reshaping the
head's maps, per-level top-k, anchors, decode, NMS). Nodes ONNX Runtime created itself
(layout changes between its blocked format and NCHW) and any node whose origin cannot be
found are reported on lines of their own. Only the timed calls count, not the warm-up.
`--int8` profiles the int8 graph instead (`retinanet export --int8`'s QDQ model, calibrated on
100 coco128 photos): the quantizer's QuantizeLinear / DequantizeLinear nodes count in the
part of the tensor they convert; the dequantize nodes ONNX Runtime adds itself when it moves
one past a transpose (`<tensor>_dq`) are listed as unattributed.

Training: batches of coco128 made by the training loader (decoding, augmentation and
collation happen in the `data` stage, no workers: the auto setting on 2 cores), then the
steps of engine.Trainer: forward, loss, backward, gradient clipping, the optimizer step
and the EMA update. `decode` times reading as many of coco128's JPEGs as a batch holds,
alone: the share of `data` that decoding takes.

    .venv/bin/python bench/where_time_goes.py [--size 320] [--calls 100] [--steps 12] [--int8]
"""

from __future__ import annotations

import argparse
import ast
import collections
import itertools
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.optim.swa_utils import AveragedModel

from common import ROOT, machine, write_report
from retinanet.benchmark import test_image
from retinanet.config import AugmentConfig, ExportConfig, QuantizeConfig, TrainConfig, preset
from retinanet.data import load_dataset
from retinanet.data.images import read_image
from retinanet.data.loader import build_loader
from retinanet.export import export_onnx, quantize_int8
from retinanet.model import build_model
from retinanet.optim import build_optimizer, ema_avg_fn

DATASETS = ROOT.parent / "shared" / "datasets"
PHOTO = DATASETS / "coco128" / "train2017" / "000000000009.jpg"
SCOPE = "pkg.torch.onnx.name_scopes"
PARTS = {  # the module a node came from -> its part
    "letterbox": "letterbox",
    "backbone": "backbone",
    "fpn": "FPN",
    "head.cls_tower": "class tower",
    "head.box_tower": "box tower",
    "head.cls_pred": "class predictor",
    "head.box_pred": "box predictor",
}
REST = "graph code outside the modules: reshape, top-k, anchors, decode, NMS"
ORT_MADE = "layout changes made by ONNX Runtime"
UNKNOWN = "unattributed"
WARMUP = 10


def node_parts(model: onnx.ModelProto) -> dict[str, str]:
    """Node name, and each output name, -> part."""
    parts = {}
    for node in model.graph.node:
        scopes = [p.value for p in node.metadata_props if p.key == SCOPE]
        path = ast.literal_eval(scopes[0]) if scopes else []
        top = path[1] if len(path) > 1 else node.name.split("/")[0]
        part = PARTS.get(top, REST)
        for name in (node.name, *node.output):
            parts[name] = part
    return parts


def part_of(profiled: str, parts: dict[str, str]) -> str:
    """The part of a node in ONNX Runtime's profile (its optimizers rename fused nodes:
    an output's name, '_nchwc' and similar suffixes)."""
    candidates = [profiled]
    while (shorter := re.sub(r"_(nchwc|token_\d+|fused\w*|quant|QuantizeLinear|DequantizeLinear)$", "", candidates[-1])) != candidates[-1]:
        candidates.append(shorter)
    for candidate in candidates:
        for name in (candidate, f"node_{candidate}"):
            if name in parts:
                return parts[name]
    return ORT_MADE if re.match(r"Reorder(Input|Output)", profiled) else UNKNOWN


def inference(size: int, calls: int, threads: int, int8: bool) -> str:
    image, _ = test_image(str(PHOTO))
    model = build_model(preset("default", num_classes=80, input_size=size)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", ExportConfig(input_size=size))
        parts = node_parts(onnx.load(str(path)))
        if int8:
            calibration = sorted((DATASETS / "coco128" / "train2017").glob("*.jpg"))[:100]
            path = quantize_int8(path, Path(tmp) / "model.int8.onnx", calibration, QuantizeConfig(num_images=100))
            parts = {**node_parts(onnx.load(str(path))), **parts}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = {"images": image[None]}
        for _ in range(WARMUP):
            session.run(None, feeds)
        start = time.perf_counter()
        for _ in range(calls):
            session.run(None, feeds)
        wall = (time.perf_counter() - start) / calls * 1000
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    first_timed = runs[WARMUP]
    totals: dict[str, float] = collections.Counter()
    unknown: dict[str, float] = collections.Counter()
    rest: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            name = e["name"][: -len("_kernel_time")]
            part = part_of(name, parts)
            totals[part] += e["dur"]
            if part == UNKNOWN:
                unknown[name] += e["dur"]
            elif part == REST:
                rest[name] += e["dur"]
    total = sum(totals.values())
    lines = [
        f"ONNX Runtime {'int8' if int8 else 'fp32'}, default preset at {size}, {threads} threads: {wall:.1f} ms a call (profiling on), "
        f"{total / calls / 1000:.1f} ms of it in kernels",
        "",
        "| part | ms a call | share of kernel time |",
        "| --- | --- | --- |",
    ]
    for part, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {us / calls / 1000:.2f} | {us / total:.1%} |")
    lines.append("\nlargest nodes outside the modules: " + ", ".join(f"{n} {us / calls / 1000:.2f} ms" for n, us in rest.most_common(8)))
    if unknown:
        lines.append("\nunattributed nodes, largest first: " + ", ".join(f"{n} {us / calls / 1000:.2f} ms" for n, us in unknown.most_common(5)))
    return "\n".join(lines)


def training(size: int, steps: int, batch: int) -> str:
    ds = load_dataset(DATASETS / "coco128", split="train", progress=False)
    loader = build_loader(ds, size, train=True, batch_size=batch, workers=0, seed=0, augment=AugmentConfig())
    model = build_model(preset("default", num_classes=ds.num_classes, input_size=size)).train()
    t = TrainConfig()
    opt = build_optimizer(model, t.optimizer, t.lr, t.momentum, t.weight_decay)
    ema = AveragedModel(model, multi_avg_fn=ema_avg_fn(t.ema_decay, t.ema_tau), use_buffers=True)
    params = [p for p in model.parameters() if p.requires_grad]
    stages: dict[str, list[float]] = collections.defaultdict(list)
    it = (b for _ in itertools.count() for b in loader)  # epoch after epoch: --steps may exceed one

    def timed(name: str, fn):
        start = time.perf_counter()
        out = fn()
        stages[name].append(time.perf_counter() - start)
        return out

    for step in range(steps + 2):
        b = timed("data", lambda: next(it))
        timed("decode", lambda: [read_image(ds.records[i % len(ds)].image_path) for i in range(step * batch, (step + 1) * batch)])
        out = timed("forward", lambda: model(b.images))
        losses = timed("loss", lambda: model.loss(out, b.images.shape[-2:], b.boxes, b.labels))
        opt.zero_grad()
        timed("backward", lambda: losses["loss"].backward())
        timed("clip", lambda: torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
        timed("optimizer", opt.step)
        timed("ema", lambda: ema.update_parameters(model))
    order = ["data", "decode", "forward", "loss", "backward", "clip", "optimizer", "ema"]
    med = {k: float(np.median(stages[k][2:])) * 1000 for k in order}  # the first two steps warm up
    step_ms = sum(v for k, v in med.items() if k != "decode")
    lines = [
        f"training step, default preset, coco128, batch {batch}, {size} px, fp32: the stages' medians over {steps} steps "
        f"add up to {step_ms:.0f} ms ({batch / step_ms * 1000:.1f} images/s)",
        "",
        "| stage | ms a step | share |",
        "| --- | --- | --- |",
    ]
    for k in order:
        label = "decode (part of data)" if k == "decode" else k
        lines.append(f"| {label} | {med[k]:.0f} | {med[k] / step_ms:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="profile the int8 graph (and skip training)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    parts = [f"machine: {machine()}", inference(args.size, args.calls, args.threads, args.int8)]
    if not args.int8:
        parts.append(training(args.size, args.steps, args.batch))
    write_report("where_time_goes_int8" if args.int8 else "where_time_goes", "\n\n".join(parts))


if __name__ == "__main__":
    main()
