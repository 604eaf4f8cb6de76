"""Accuracy of the default recipe on three datasets, never chosen on a test split.

    .venv/bin/python bench/accuracy.py [--datasets raccoon aquarium coco128] [--seeds 3]
        [--epochs N] [--peer] [--tag NAME] [key=value ...]

Splits (fixed rules, so every run and every option sees the same images):
  raccoon   its train split, every 5th image by file name held out as val (20%); test = its test split
  aquarium  train / valid / test as published (a spec file of ours points at its folders)
  coco128   sorted by file name: the first 96 images train, every 6th of them held out as
            val (16), the last 32 test
For each dataset and seed: training minutes; test AP, AP50, AP75, APs of the final epoch
and of best.pt (best on val); per-class test AP50 of best.pt. raccoon runs --seeds seeds
(its 44 test boxes: one box moves AP50 by about 2 points); the others seed 0 unless
--seeds-all. key=value overrides apply to our model and recipe (ablations:
`model.loss.assigner=atss`, ...). --peer also fine-tunes the torchvision peer once per
dataset with DESIGN.md's recipe. Results: a markdown table on stdout and
bench/out/accuracy/<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import ROOT, machine
from peer_train import score_peer, train_peer
from retinanet.checkpoint import model_from_checkpoint
from retinanet.data import load_dataset
from retinanet.data.dataset import DetectionDataset
from retinanet.data.splits import hold_out
from retinanet.engine import Trainer
from retinanet.evaluation import EvalReport, evaluate
from retinanet.train import run_config

DATASETS = ROOT.parent / "shared" / "datasets"
AQUARIUM_NAMES = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]
REPORTED = ("AP", "AP50", "AP75", "APs")
NAMES = ("raccoon", "aquarium", "coco128")
OUT = ROOT / "bench" / "out" / "accuracy"


def _subset(ds: DetectionDataset, records: list) -> DetectionDataset:
    return DetectionDataset(records, ds.class_names, ds.category_ids, ds.root, ds.format)


def _by_name(ds: DetectionDataset) -> list:
    return sorted(ds.records, key=lambda r: r.image_path.name)


def splits(name: str) -> tuple[DetectionDataset, DetectionDataset, DetectionDataset]:
    """(train, val, test) of a benchmark dataset by the fixed rules of the module doc."""
    if name == "raccoon":
        train, val = hold_out(load_dataset(DATASETS / "raccoon", "train", progress=False), 0.2)  # every 5th by name
        return train, val, load_dataset(DATASETS / "raccoon", "test", progress=False)
    if name == "aquarium":
        spec = OUT / "aquarium.yaml"
        spec.parent.mkdir(parents=True, exist_ok=True)
        root = DATASETS / "aquarium"
        spec.write_text(
            f"format: yolo\npath: {root}\ntrain: train/images\nval: valid/images\ntest: test/images\nnames: {AQUARIUM_NAMES}\n"
        )
        return tuple(load_dataset(spec, s, drop_bad=True, progress=False) for s in ("train", "val", "test"))  # type: ignore[return-value]
    if name == "coco128":
        full = load_dataset(DATASETS / "coco128", "train", progress=False)
        rec = _by_name(full)
        train, val = hold_out(_subset(full, rec[:96]), 1 / 6)  # every 6th of the first 96 by name
        return train, val, _subset(full, rec[96:])
    raise ValueError(f"unknown dataset {name!r}")


def _row(report: EvalReport) -> dict:
    return {k: report.metrics[k] for k in REPORTED}


def run_ours(name: str, seed: int, args: argparse.Namespace, data: tuple) -> dict:
    train, val, test = data
    # What `retinanet train --data X` runs (the datasets are passed in: data.source only names the run)
    fixed = [f"data.source=bench:{name}", f"train.seed={seed}", f"train.out={OUT / args.tag}", f"train.name={name}_seed{seed}"]
    cfg = run_config("default", None, fixed + ([f"train.epochs={args.epochs}"] if args.epochs else []) + args.overrides)
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)
    trainer.fit()
    trainer.close()
    minutes = (time.perf_counter() - start) / 60
    run = trainer.run_dir
    final = evaluate(model_from_checkpoint(run / "last.pt"), test, plots=False, progress=False)
    best = evaluate(model_from_checkpoint(run / "best.pt"), test, plots=False, progress=False)
    return {
        "dataset": name, "seed": seed, "minutes": minutes, "epochs": cfg.train.epochs,
        "input_size": trainer.cfg.model.input_size, "anchors": trainer.coverage.fitting[-1],
        "final": _row(final), "best": _row(best), "best_val_AP": trainer.best_fitness,
        "per_class_AP50": {c["class"]: c["AP50"] for c in best.per_class},
    }  # fmt: skip


def run_peer(name: str, data: tuple) -> dict:
    train, _, test = data
    peer, minutes = train_peer(train)
    report = score_peer(peer, test)
    return {"dataset": name, "seed": 0, "minutes": minutes, "final": _row(report), "per_class_AP50": {c["class"]: c["AP50"] for c in report.per_class}}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: list[dict]) -> str:
    lines = ["| dataset | model | runs | minutes | " + " | ".join(f"test {k} (final / best.pt)" for k in REPORTED) + " |"]
    lines.append("| --- " * (4 + len(REPORTED)) + "|")
    for (dataset, who), runs in _groups(results).items():
        cells = []
        for k in REPORTED:
            final = _mean_sd([r["final"][k] for r in runs])
            best = _mean_sd([r["best"][k] for r in runs]) if "best" in runs[0] else "-"
            cells.append(f"{final} / {best}")
        minutes = statistics.mean(r["minutes"] for r in runs)
        lines.append(f"| {dataset} | {who} | {len(runs)} | {minutes:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(results: list[dict]) -> str:
    """Mean per-class test AP50 (best.pt for ours, the final model for the peer)."""
    lines = []
    for (dataset, who), runs in _groups(results).items():
        names = [n for n, v in runs[0]["per_class_AP50"].items() if v >= 0]  # -1: no test boxes of the class
        means = {n: statistics.mean(r["per_class_AP50"][n] for r in runs) for n in names}
        lines.append(f"{dataset} / {who}: " + ", ".join(f"{n} {v:.2f}" for n, v in means.items()))
    return "\n".join(lines)


def _groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        out.setdefault((r["dataset"], r.get("model", "ours")), []).append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="RunConfig overrides for our runs")
    ap.add_argument("--datasets", nargs="+", default=list(NAMES), choices=NAMES, help="give overrides before this flag")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of raccoon (default 3; the others run one, none with --seeds 0)")
    ap.add_argument("--seeds-all", action="store_true", help="run --seeds seeds on every dataset")
    ap.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (short ablations)")
    ap.add_argument("--peer", action="store_true", help="also fine-tune the torchvision peer once per dataset")
    ap.add_argument("--tag", default="default", help="name of this run's output folder and JSON")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {machine()}\noverrides: {' '.join(args.overrides) or '(none)'}")
    results = []
    for name in args.datasets:
        data = splits(name)
        print(f"{name}: {len(data[0])} train / {len(data[1])} val / {len(data[2])} test images", flush=True)
        seeds = args.seeds if (name == "raccoon" or args.seeds_all) else min(args.seeds, 1)  # --seeds 0: the peer only
        for seed in range(seeds):
            results.append(run_ours(name, seed, args, data))
            print(json.dumps(results[-1]), flush=True)
        if args.peer:
            results.append({**run_peer(name, data), "model": "peer"})
            print(json.dumps(results[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.tag}.json").write_text(json.dumps({"overrides": args.overrides, "results": results}, indent=1))
    print("\n" + table(results) + "\n\nper-class test AP50\n" + per_class_table(results))


if __name__ == "__main__":
    main()
