"""Issue "Foundation" benchmark: FLOPs, parameters and eager CPU latency of every preset
at 320 and 640 px with 80 classes, beside the torchvision-assembled peer (retinanet/peer.py),
measured in one run with interleaved timing.

Latency is end to end from an input batch already at the model size to final boxes:
forward + post-processing (score threshold, top-k, decoding, NMS) for both models; the
peer runs through its own GeneralizedRCNNTransform (normalise; its resize is a no-op at
its own size) and postprocess. "forward" columns time the network alone.

    .venv/bin/python bench/speed.py [--sizes 320 640] [--repeats 15]
"""

from __future__ import annotations

import argparse

import torch

from common import flops, machine, median_ms
from retinanet.benchmark import time_interleaved
from retinanet.peer import build_peer
from retinanet.config import PRESETS, preset
from retinanet.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\n")
    print("| model | input | GFLOP | params (M) | forward ms | end-to-end ms | peer end-to-end / this |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        peer = build_peer(80, size).eval()
        x_peer = [torch.rand(3, size, size)]
        models = {name: build_model(preset(name, num_classes=80, input_size=size)).eval() for name in PRESETS}
        x = torch.rand(1, 3, size, size)
        fns = {"peer": lambda: peer(x_peer)}
        for name, m in models.items():
            fns[name] = lambda m=m: m.postprocess(m(x), (size, size))
            fns[name + ":forward"] = lambda m=m: m(x)
        with torch.no_grad():
            times = time_interleaved(fns, repeats=args.repeats, warmup=2)
        peer_ms = median_ms(times["peer"])
        peer_params = sum(p.numel() for p in peer.parameters()) / 1e6
        print(f"| torchvision RetinaNet-MobileNetV2-FPN256 (peer) | {size} | {flops(lambda: peer(x_peer)):.2f} | {peer_params:.2f} | | {peer_ms:.1f} | 1.00 |")
        for name, m in models.items():
            e2e = median_ms(times[name])
            params = sum(p.numel() for p in m.parameters()) / 1e6
            print(
                f"| {name} | {size} | {flops(lambda: m(x)):.2f} | {params:.2f} | {median_ms(times[name + ':forward']):.1f} "
                f"| {e2e:.1f} | {peer_ms / e2e:.2f} |"
            )


if __name__ == "__main__":
    main()
