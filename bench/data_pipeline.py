"""The training data pipeline per stage, per image: reading an image (decoded in full as
before, decoded no bigger than augmentation can use, or served from the in-memory cache
of data.cache=ram), the augmentation of the default recipe, and a whole loader pass in
this process (workers=0, the auto setting on 2 cores) and with 1 or 2 worker processes.

Each figure is the median over the training images of one dataset (coco128's 640 px
photos, aquarium's 1024 x 768 ones), at the default input sizes 320 and 640. The modes
are interleaved image by image, so machine noise hits them alike.

    .venv/bin/python bench/data_pipeline.py [--datasets coco128 aquarium] [--sizes 320 640] [--images 96]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from accuracy import splits
from common import machine, median_ms, write_report
from retinanet.config import AugmentConfig
from retinanet.data import DetectionDataset
from retinanet.data.cache import ImageSource
from retinanet.data.images import read_image
from retinanet.data.loader import AugmentedDataset, build_loader


def _subset(ds: DetectionDataset, n: int) -> DetectionDataset:
    return DetectionDataset(ds.records[:n], ds.class_names, ds.category_ids, ds.root, ds.format)


def _per_image(ds: DetectionDataset, size: int) -> dict[str, float]:
    """Median ms per image of each stage, the modes interleaved image by image."""
    augment = AugmentConfig()
    plain = AugmentedDataset(ds, size, train=True, augment=augment)
    t0 = time.perf_counter()
    cached = AugmentedDataset(ds, size, train=True, augment=augment, cache="ram")
    fill = time.perf_counter() - t0
    assert cached.images.cached, "the cache was refused"
    times: dict[str, list[float]] = {k: [] for k in ("full decode", "reduced decode", "from cache", "augment")}
    for i, r in enumerate(ds.records):
        for name, fn in (
            ("full decode", lambda: read_image(r.image_path)),
            ("reduced decode", lambda: plain.images.read(i)),
            ("from cache", lambda: cached.images.read(i)),
        ):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        sample = cached.load(i)
        t = time.perf_counter()
        cached.transforms(*sample)
        times["augment"].append(time.perf_counter() - t)
    out = {k: median_ms(v) for k, v in times.items()}
    out["cache fill s"] = fill
    out["cache MiB"] = cached.images.cache_bytes() / 2**20
    out["source side"] = plain.transforms.source_side
    return out


def _loader_rate(ds: DetectionDataset, size: int, workers: int, cache: str, passes: int = 2) -> float:
    """Images per second of whole loader passes (batch 8), after a first pass that starts workers."""
    loader = build_loader(ds, size, train=True, batch_size=8, workers=workers, cache=cache)
    try:
        for _ in loader:  # the first pass: worker start-up
            pass
        rates = []
        for _ in range(passes):
            t, n = time.perf_counter(), 0
            for batch in loader:
                n += len(batch)
            rates.append(n / (time.perf_counter() - t))
        return statistics.median(rates)
    finally:
        loader.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["coco128", "aquarium"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    ap.add_argument("--images", type=int, default=96, help="training images per dataset")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# Training data pipeline, per image",
        "",
        f"{machine()}; default augmentation (zoom 0.75-1.25, flip, colour jitter); medians over {args.images} training images.",
        "",
        "| data | input | decoded up to | full decode ms | reduced decode ms | from cache ms | augment ms "
        "| cache MiB (fill s) | loader img/s: disk, 0 workers | ram, 0 | disk, 1 | disk, 2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.datasets:
        train = _subset(splits(name)[0], args.images)
        for size in args.sizes:
            s = _per_image(train, size)
            rates = [_loader_rate(train, size, w, c) for w, c in ((0, "none"), (0, "ram"), (1, "none"), (2, "none"))]
            row = (
                f"| {name} | {size} | {s['source side']} px | {s['full decode']:.2f} | {s['reduced decode']:.2f} "
                f"| {s['from cache']:.3f} | {s['augment']:.2f} | {s['cache MiB']:.0f} ({s['cache fill s']:.1f}) | "
                + " | ".join(f"{r:.0f}" for r in rates)
                + " |"
            )
            print(row, flush=True)
            lines.append(row)
    write_report("data_pipeline", "\n".join(lines))


if __name__ == "__main__":
    main()
