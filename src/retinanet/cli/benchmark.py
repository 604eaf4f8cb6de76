"""`retinanet benchmark`: latency of one model on every runtime beside the
torchvision-assembled peer, printed as a markdown table (protocol: benchmark.py)."""

from __future__ import annotations

import argparse

from ..config.export import DEFAULT_RUNTIMES, RUNTIMES, BenchConfig
from .flags import add_flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--model", help="checkpoint (.pt) to measure; default: an untrained --preset model")
    p.add_argument("--preset", default="default", help="preset measured without --model (default: default)")
    add_flag(p, "--num-classes", aliases=("--classes",), type=int, default=d.num_classes,
             help=f"number of classes of the preset model (default {d.num_classes})")
    add_flag(p, "--imgsz", aliases=("--sizes",), type=int, nargs="+", default=list(d.sizes),
             help=f"input sizes, one or more (default {' '.join(map(str, d.sizes))})")  # fmt: skip
    p.add_argument("--batch", type=int, default=d.batch, help="images per call (default 1)")
    p.add_argument("--runtimes", nargs="+", default=list(DEFAULT_RUNTIMES), choices=list(RUNTIMES), help="runtimes to measure")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to build)")
    p.add_argument("--no-peer", action="store_true", help="skip the torchvision peer")
    p.add_argument("--image", help="photo to run on (default: a synthetic 640x480 scene)")
    p.add_argument("--calibration", help="int8 calibration images, folder or glob (default: the benchmark image)")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"rounds of back-to-back calls per runtime (default {d.repeats})")
    p.add_argument("--threads", type=int, default=d.threads, help=f"intra-op threads (default {d.threads})")


def run(args: argparse.Namespace) -> int:
    from ..api import expand_images
    from ..benchmark import BLOCK, benchmark, format_rows, machine_line, model_factory, test_image

    runtimes = tuple(args.runtimes) + (("compile",) if args.compile and "compile" not in args.runtimes else ())
    calibration = expand_images(args.calibration) if args.calibration else None
    factory = model_factory(args.model, args.preset, args.num_classes)
    cfg = BenchConfig(sizes=tuple(args.imgsz), batch=args.batch, num_classes=args.num_classes, repeats=args.repeats, threads=args.threads)
    _, image_name = test_image(args.image)
    rows = benchmark(factory, cfg, runtimes, peer=not args.no_peer, image_path=args.image, calibration=calibration)
    print(f"machine: {machine_line(cfg.threads)}")
    print(
        f"end to end from a decoded {image_name} image to final boxes; median of {cfg.repeats} rounds x "
        f"{BLOCK - 1} steady-state calls per runtime, runtimes interleaved round by round\n"
    )
    print(format_rows(rows, cfg.batch))
    return 0
