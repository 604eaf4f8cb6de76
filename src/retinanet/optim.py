"""Optimisation parts shared by the detector (engine.py) and backbone pretraining
(pretrain/): parameter groups, the optimiser, the warmup + cosine schedule, the weight
EMA, gradient clipping and the non-finite check.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient stopped being a finite number: training stops instead of learning NaN."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: conv / linear weights (> 1-d) with weight decay, norms and biases (1-d)
    without, since decaying a norm's scale or a bias only fights the normalisation.

    Frozen parameters stay in the groups: they never get a gradient, so the optimiser
    skips them, and the groups keep the same sizes whatever is frozen when, so a run's
    saved optimiser state always loads back (resume)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float, setting: str = "optimizer"
) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW (``momentum`` is beta1) over ``param_groups``;
    ``setting`` names the option in the error for an unknown ``name``."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"{setting} must be 'sgd' or 'adamw', not {name!r}")


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_factor: float | None = None, min_ratio: float = 0.0
) -> float:
    """Multiplier of the peak lr at ``step`` (0-based, the step about to be taken): a linear
    warmup to 1 over ``warmup_steps``, then a cosine from 1 down to ``min_ratio`` at
    ``total_steps``.

    The warmup starts at ``warmup_factor`` at step 0 and reaches 1 at step ``warmup_steps``
    (the detector: 0.001, a gentle start for freshly initialised heads); with
    ``warmup_factor=None`` the ramp counts the step being taken, (step + 1) / warmup_steps,
    so the last warmup step is already at the peak (pretraining).
    """
    if step < warmup_steps:
        if warmup_factor is None:
            return (step + 1) / warmup_steps
        return warmup_factor + (1 - warmup_factor) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float | None = None,
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of ``lr_factor``: call ``step()`` after every optimiser step."""

    def factor(step: int) -> float:  # a plain function: LambdaLR's state_dict leaves it out
        return lr_factor(step, total_steps, warmup_steps, warmup_factor, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restart_at(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> list[float]:
    """Set the optimiser's learning rates to ``scheduler``'s values for ``step`` (the next
    step to take) and return them. A resumed run whose length changed needs this: its
    scheduler follows the new plan, but the rates loaded with the optimiser are the old
    plan's until the next ``step()``."""
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    return lrs


def ema_avg_fn(decay: float, tau: float) -> Callable:
    """multi_avg_fn for AveragedModel: EMA whose decay ramps up as decay * (1 - exp(-n / tau))
    (as YOLOv5 / timm do), so the average is usable after the first epochs; integer
    buffers (batch norm counters) are copied."""

    def fn(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        d = decay * (1 - math.exp(-float(num_averaged) / tau))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return fn


def clip_gradients(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip the global gradient norm to ``max_norm`` (0 = no clipping); returns the norm
    before clipping, which is inf / nan when any gradient is."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))


def non_finite(loss: Tensor, grad_norm: Tensor) -> str | None:
    """'loss' or 'gradient' when that one is not a finite number (the step must not be
    taken), None when both are."""
    if not torch.isfinite(loss):
        return "loss"
    if not torch.isfinite(grad_norm):
        return "gradient"
    return None
