"""The torchvision-assembled peer (retinanet.peer) fine-tuned with ../shared/DESIGN.md's
recipe (20 epochs, SGD momentum 0.9 one-cycle peaking at lr 0.0025, batch 4, flips,
320 px, the same ImageNet MobileNetV2), scored by our evaluation code. Shared by
bench/raccoon.py and bench/accuracy.py."""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from retinanet.config import AugmentConfig
from retinanet.data.dataset import DetectionDataset
from retinanet.data.loader import build_loader
from retinanet.evaluation import EvalReport, score_detections
from retinanet.peer import build_peer
from retinanet.postprocess import Detections

PEER_EPOCHS = 20
PEER_LR = 0.0025
PEER_BATCH = 4
PEER_SIZE = 320


def train_peer(train: DetectionDataset, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """The fine-tuned peer and its training minutes."""
    torch.manual_seed(seed)
    flips = AugmentConfig(hflip=0.5, scale=(1.0, 1.0), color_jitter=0.0)
    loader = build_loader(train, PEER_SIZE, train=True, batch_size=PEER_BATCH, workers=0, seed=seed, augment=flips)
    peer = build_peer(train.num_classes, PEER_SIZE).train()
    params = [p for p in peer.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=PEER_LR, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=PEER_LR, total_steps=PEER_EPOCHS * len(loader))
    start = time.perf_counter()
    for epoch in tqdm(range(PEER_EPOCHS), desc="peer epochs"):
        loader.set_epoch(epoch)
        for b in loader:
            targets = [{"boxes": bx[lab >= 0], "labels": lab[lab >= 0]} for bx, lab in zip(b.boxes, b.labels)]
            losses = peer(list(b.images), targets)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            sched.step()
    return peer.eval(), (time.perf_counter() - start) / 60


@torch.no_grad()
def score_peer(peer: torch.nn.Module, test: DetectionDataset) -> EvalReport:
    loader = build_loader(test, PEER_SIZE, train=False, batch_size=8, workers=0, seed=0)
    by_id = {}
    for b in loader:
        for out, scale, iid in zip(peer(list(b.images)), b.scales, b.image_ids):
            by_id[int(iid)] = Detections(out["boxes"] / scale, out["scores"], out["labels"])
    return score_detections(test, [by_id[r.image_id] for r in test.records], plots=False)
