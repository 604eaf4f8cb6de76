"""Issue "Training" recipe benchmark: the default preset and recipe fine-tuned on raccoon's
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
from tqdm import tqdm

from common import ROOT, machine
from retinanet.checkpoint import model_from_checkpoint
from retinanet.config import AugmentConfig, RunConfig, apply_overrides, preset
from retinanet.data import load_dataset
from retinanet.data.loader import build_loader
from retinanet.engine import Trainer
from retinanet.evaluation import evaluate, score_detections
from retinanet.peer import build_peer
from retinanet.postprocess import Detections

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


def train_peer(args: argparse.Namespace) -> tuple[dict, float]:
    """DESIGN.md's peer recipe: 20 epochs, SGD (momentum 0.9) one-cycle peaking at lr 0.0025, batch 4, flips."""
    torch.manual_seed(0)
    train = load_dataset(args.data, split="train", progress=False)
    test = load_dataset(args.data, split="test", progress=False)
    flips = AugmentConfig(hflip=0.5, scale=(1.0, 1.0), color_jitter=0.0)
    loader = build_loader(train, 320, train=True, batch_size=4, workers=0, seed=0, augment=flips)
    peer = build_peer(train.num_classes, 320).train()
    params = [p for p in peer.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.0025, total_steps=20 * len(loader))
    start = time.perf_counter()
    for epoch in tqdm(range(20), desc="peer epochs"):
        loader.set_epoch(epoch)
        for b in loader:
            targets = [{"boxes": bx[lab >= 0], "labels": lab[lab >= 0]} for bx, lab in zip(b.boxes, b.labels)]
            losses = peer(list(b.images), targets)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            sched.step()
    minutes = (time.perf_counter() - start) / 60
    peer.eval()
    eval_loader = build_loader(test, 320, train=False, batch_size=8, workers=0, seed=0)
    detections, ids = [], []
    with torch.no_grad():
        for b in eval_loader:
            for out, scale, iid in zip(peer(list(b.images)), b.scales, b.image_ids):
                detections.append(Detections(out["boxes"] / scale, out["scores"], out["labels"]))
                ids.append(int(iid))
    by_id = dict(zip(ids, detections))
    ordered = [by_id[r.image_id] for r in test.records]
    return score_detections(test, ordered, plots=False).metrics, minutes


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
        peer, peer_min = train_peer(args)
        rows.append(("torchvision peer, DESIGN.md recipe", peer, peer_min, 20))
    print("\n| model | epochs | train minutes | test AP | test AP50 |")
    print("| --- | --- | --- | --- | --- |")
    for name, m, minutes, epochs in rows:
        print(f"| {name} | {epochs} | {minutes:.1f} | {m['AP']:.3f} | {m['AP50']:.3f} |")
    print(f"\ncheckpoint of our final epoch: {ckpt}")


if __name__ == "__main__":
    main()
