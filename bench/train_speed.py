"""Issue "Training" benchmark: training throughput (images/s) of the default preset at
320 px, batch 8, against the peer (torchvision's RetinaNet on MobileNetV2 + FPN-256,
retinanet/peer.py) on the same batches, in the same run, steps interleaved.

Both take real coco128 batches made by our loader (letterboxed to 320, flips and scale
jitter), pre-loaded so that only the training step (forward, loss, backward, SGD step)
is timed. Ours runs twice, in full precision and under bf16 autocast
(`train.amp=bf16`, fast on a CPU with AVX512-BF16 or AMX), as two copies of one model timed
in the same rounds. A second figure times our full epoch loop including data loading
(decoding and augmenting coco128's 640 px JPEGs), in the precision `auto` picks here.

    .venv/bin/python bench/train_speed.py [--steps 8] [--batch 8] [--size 320]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from common import ROOT, machine
from retinanet.benchmark import time_interleaved
from retinanet.peer import build_peer
from retinanet.config import AugmentConfig, preset
from retinanet.data import load_dataset
from retinanet.data.loader import build_loader
from retinanet.runtime import amp_dtype, resolve_workers
from retinanet.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "coco128"))
    ap.add_argument("--steps", type=int, default=8, help="timed steps per model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    ds = load_dataset(args.data, split="train", progress=False)
    loader = build_loader(ds, args.size, train=True, batch_size=args.batch, workers=0, seed=0, augment=AugmentConfig())
    batches = [b for _, b in zip(range(4), loader)]

    ours = build_model(preset("default", num_classes=ds.num_classes, input_size=args.size)).train()
    ours_bf16 = copy.deepcopy(ours)
    peer = build_peer(ds.num_classes, args.size).train()
    sgd = lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.001, momentum=0.9)  # noqa: E731
    opt_ours, opt_bf16, opt_peer = sgd(ours), sgd(ours_bf16), sgd(peer)
    state = {"i": 0}

    def batch():
        state["i"] += 1
        return batches[state["i"] % len(batches)]

    def train_step(model, opt, b, dtype=None):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(b.images)
        losses = model.loss(outputs, b.images.shape[-2:], b.boxes, b.labels)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()

    def step_ours():
        train_step(ours, opt_ours, batch())

    def step_bf16():
        train_step(ours_bf16, opt_bf16, batch(), torch.bfloat16)

    peer_inputs = []
    for b in batches:
        images = list(b.images)
        targets = []
        for boxes, labels in zip(b.boxes, b.labels):
            keep = labels >= 0  # drop padding and crowd regions: the peer has no ignore regions
            targets.append({"boxes": boxes[keep], "labels": labels[keep]})
        peer_inputs.append((images, targets))

    def step_peer():
        images, targets = peer_inputs[state["i"] % len(peer_inputs)]
        losses = peer(images, targets)
        opt_peer.zero_grad()
        sum(losses.values()).backward()
        opt_peer.step()

    steps = {"ours": step_ours, "ours bf16": step_bf16, "peer": step_peer}
    times = time_interleaved(steps, repeats=args.steps, warmup=1, block=2)
    ips = {name: args.batch / statistics.median(t) for name, t in times.items()}

    # Our whole loop: loader (data.workers=auto: none on 2 cores) + step, one pass over coco128.
    workers = resolve_workers(-1)
    auto = amp_dtype("auto", torch.device("cpu"))
    loop = build_loader(ds, args.size, train=True, batch_size=args.batch, workers=workers, seed=0, augment=AugmentConfig())
    start, seen = time.perf_counter(), 0
    for b in loop:
        train_step(ours, opt_ours, b, auto)
        seen += len(b)
    loop_ips = seen / (time.perf_counter() - start)

    print(f"\n| model | batch | input | train images/s (median of {args.steps} steps) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| torchvision RetinaNet-MobileNetV2-FPN256 (peer) | {args.batch} | {args.size} | {ips['peer']:.2f} | 1.00 |")
    print(f"| default preset, fp32 | {args.batch} | {args.size} | {ips['ours']:.2f} | {ips['ours'] / ips['peer']:.2f} |")
    print(f"| default preset, bf16 autocast | {args.batch} | {args.size} | {ips['ours bf16']:.2f} | {ips['ours bf16'] / ips['peer']:.2f} |")
    precision = "bf16 autocast" if auto is not None else "fp32"
    print(f"\ndefault preset, one epoch of coco128 including data loading ({workers} workers, {precision}): {loop_ips:.2f} images/s")


if __name__ == "__main__":
    main()
