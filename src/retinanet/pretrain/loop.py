"""One pass of classifier training or evaluation, and the optimiser and schedule of a
PretrainConfig (the shared parts of optim.py with pretraining's numbers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import optim
from ..config import PretrainConfig
from ..optim import NonFiniteLossError, clip_gradients, non_finite
from ..runtime import batches

TOPK = 5


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """optim.build_optimizer with the run's lr and weight decay (defaults resolved)."""
    return optim.build_optimizer(model, cfg.optimizer, cfg.resolved_lr(), cfg.momentum, cfg.resolved_weight_decay())


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine over the run; the warmup counts the step being taken, so its
    first step already trains at lr / warmup_steps."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    return optim.warmup_cosine(optimizer, total, warmup, warmup_factor=None, min_ratio=cfg.final_lr_ratio)


def _to_input(images: Tensor, device: torch.device) -> Tensor:
    # Depthwise convs run about twice as fast channels-last on CPU (as the detector does).
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def _step(model, optimizer, criterion, params, images, targets, clip_grad: float) -> tuple[Tensor, Tensor, str | None]:
    """Forward, backward and clipping of one batch: (loss, logits (N, K), what is not finite)."""
    logits = model(images)  # (N, K)
    loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss, logits, non_finite(loss, clip_gradients(params, clip_grad))


def _non_finite_error(what: str, loss: Tensor, desc: str, step: int, steps: int, lr: float) -> NonFiniteLossError:
    if what == "loss":
        return NonFiniteLossError(
            f"{desc}: non-finite loss ({loss.item()}) at step {step}/{steps} (lr {lr:.3g}); "
            "training stopped, the last checkpoint is from the previous epoch. Lower --lr, "
            "or check the --weights file and the images"
        )
    return NonFiniteLossError(f"{desc}: non-finite gradient norm at step {step}/{steps} (lr {lr:.3g}); training stopped. Lower --lr")


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    device: torch.device,
    clip_grad: float = 0.0,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and accuracy of the training batches.

    Stops with NonFiniteLossError at the first non-finite loss or gradient norm, before
    the optimiser step, so the weights never take a NaN."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(batches(loader), desc=desc, total=len(loader), unit="batch", dynamic_ncols=True, disable=not progress)
    for step, (images, targets) in enumerate(bar):
        images, targets = _to_input(images, device), targets.to(device)
        lr = optimizer.param_groups[0]["lr"]
        loss, logits, bad = _step(model, optimizer, criterion, params, images, targets, clip_grad)
        if bad:
            raise _non_finite_error(bad, loss, desc, step + 1, len(loader), lr)
        optimizer.step()
        scheduler.step()
        n = targets.shape[0]
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == targets).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2e}")
    if seen == 0:
        raise ValueError("the training loader produced no batch")
    return {"train_loss": total_loss / seen, "train_acc": correct / seen}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "val", progress: bool = True) -> dict[str, float]:
    """Plain cross-entropy, top-1 and top-k accuracy (k = min(5, classes)) over ``loader``."""
    model.eval()
    total_loss, top1, topk, seen = 0.0, 0, 0, 0
    bar = tqdm(batches(loader), desc=desc, total=len(loader), unit="batch", leave=False, dynamic_ncols=True, disable=not progress)
    for images, targets in bar:
        images, targets = _to_input(images, device), targets.to(device)
        logits = model(images)  # (N, K)
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(TOPK, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == targets[:, None]  # (N, k)
        top1 += int(hits[:, 0].sum())
        topk += int(hits.any(1).sum())
        seen += targets.shape[0]
    if seen == 0:
        raise ValueError("the validation loader produced no image")
    return {"val_loss": total_loss / seen, "val_top1": top1 / seen, "val_top5": topk / seen}
