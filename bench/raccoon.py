"""Recipe benchmark: the default preset and recipe fine-tuned on raccoon's
train split (160 images, 320 px), COCO AP / AP50 on its 40 test images, and wall time.

With --peer, the torchvision-assembled peer (retinanet.peer) is fine-tuned in the same
run with the recipe of ../shared/DESIGN.md (20 epochs, SGD one-cycle lr 0.0025, batch 4,
flips, 320 px, same ImageNet MobileNetV2) and scored by the same evaluation code.

The reported figures are those of the final epoch (the checkpoint is not picked on the
test split).

    .venv/bin/python bench/raccoon.py [--epochs 30] [--peer] [key=value ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import ROOT, machine
from retinanet.checkpoint import model_from_checkpoint
from peer_train import score_peer, train_peer
from retinanet.config import RunConfig, apply_overrides, preset
from retinanet.data import load_dataset
from retinanet.engine import Trainer
from retinanet.evaluation import evaluate

RACCOON = ROOT.parent / "shared" / "datasets" / "raccoon"


def train_ours(args: argparse.Namespace) -> tuple[dict, float, Path]:
    cfg = RunConfig(model=preset("default"))
    cfg.data.source = str(args.data)
    cfg.data.val_split = "test"
    cfg.train.epochs = args.epochs
    cfg.train.out = args.out
    cfg.train.name = "ours"
    apply_overrides(cfg, args.overrides)
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    minutes = (time.perf_counter() - start) / 60
    test = load_dataset(args.data, split="test", progress=False)
    model = model_from_checkpoint(trainer.run_dir / "last.pt")  # final epoch, EMA weights
    return evaluate(model, test, progress=False).metrics, minutes, trainer.run_dir / "last.pt"


def run_peer(args: argparse.Namespace) -> tuple[dict, float]:
    peer, minutes = train_peer(load_dataset(args.data, split="train", progress=False))
    return score_peer(peer, load_dataset(args.data, split="test", progress=False)).metrics, minutes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*", help="RunConfig overrides for our run")
    ap.add_argument("--data", default=str(RACCOON))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "raccoon"))
    ap.add_argument("--peer", action="store_true", help="also fine-tune the torchvision peer (about 30 minutes here)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {machine()}")
    ours, ours_min, ckpt = train_ours(args)
    rows = [("default preset, default recipe", ours, ours_min, args.epochs)]
    if args.peer:
        peer, peer_min = run_peer(args)
        rows.append(("torchvision peer, DESIGN.md recipe", peer, peer_min, 20))
    print("\n| model | epochs | train minutes | test AP | test AP50 |")
    print("| --- | --- | --- | --- | --- |")
    for name, m, minutes, epochs in rows:
        print(f"| {name} | {epochs} | {minutes:.1f} | {m['AP']:.3f} | {m['AP50']:.3f} |")
    print(f"\ncheckpoint of our final epoch: {ckpt}")


if __name__ == "__main__":
    main()
