"""What a detector run's checkpoints hold, and how a run is rebuilt from one.

last.pt is the resume point: model, EMA, optimiser, schedule, scaler, random state,
history and the position in the epoch. best.pt is for inference only: the weights to use
(the EMA's when the run keeps one) as the model, the config (with its anchors), the class
names and ids and the confidence threshold, so it is a fraction of last.pt's size. The
keys are listed in checkpoint.py. The functions take the engine's Trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, from_dict, to_dict
from .data.splits import saved_val_split
from .optim import restart_at
from .runtime import rng_state, set_rng_state

FITNESS_KEY = "AP"  # best.pt = the epoch with the highest COCO AP@[.5:.95] on the validation split


def training_state(trainer: Any, metrics: dict[str, float]) -> dict[str, Any]:
    """last.pt: everything a resumed run needs to continue exactly."""
    ema = trainer.ema
    return {
        "model": trainer.model.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": int(ema.n_averaged) if ema is not None else 0,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,
        "step": trainer.step,
        "best_fitness": trainer.best_fitness,
        "best_epoch": trainer.best_epoch,
        "history": trainer.history,
        "rng": rng_state(),
        "config": to_dict(trainer.cfg),
        "class_names": trainer.model.class_names,
        "category_ids": trainer.model.category_ids,
        "metrics": metrics,
        "position": trainer.position,
    }


def inference_state(trainer: Any, metrics: dict[str, float]) -> dict[str, Any]:
    """best.pt: the weights inference uses, what describes them, and the F1-best
    confidence threshold of this epoch's validation (``trainer.val_threshold``)."""
    state = {
        "model": trainer.eval_model.state_dict(),
        "config": to_dict(trainer.cfg),
        "class_names": trainer.model.class_names,
        "category_ids": trainer.model.category_ids,
        "epoch": trainer.epoch,
        "step": trainer.step,
        "metrics": metrics,
    }
    found = trainer.val_threshold
    if found is not None:
        state.update(threshold_entries(found))
    return state


def threshold_entries(found: Any) -> dict[str, Any]:
    """The keys a validation's evaluation.threshold.F1Threshold adds to best.pt."""
    return {
        "conf_threshold": found.threshold,
        "conf_threshold_f1": {"f1": found.f1, "precision": found.precision, "recall": found.recall, "iou": found.iou},
    }


def restore(trainer: Any, state: dict[str, Any]) -> None:
    """Load last.pt's ``state`` into ``trainer`` (built from the same config)."""
    trainer.model.load_state_dict(state["model"])
    if trainer.ema is not None and state.get("ema") is not None:
        trainer.ema.module.load_state_dict(state["ema"])
        trainer.ema.n_averaged.fill_(state.get("ema_updates", 0))
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    trainer.best_fitness = float(state.get("best_fitness", -1.0))
    trainer.history = list(state.get("history") or [])
    trainer.best_epoch = int(state.get("best_epoch", _best_epoch(trainer.history, trainer.best_fitness)))
    trainer.position = state.get("position")
    set_rng_state(state["rng"])


def _best_epoch(history: list[dict[str, float]], best: float) -> int:
    """The first epoch whose validation AP is ``best`` (checkpoints saved before best_epoch)."""
    return next((int(row["epoch"]) for row in history if row.get(f"val_{FITNESS_KEY}") == best), 0)


def saved_config(state: dict[str, Any], path: Path) -> RunConfig:
    """The run's config from its last.pt; best.pt cannot be resumed."""
    if "optimizer" not in state:
        raise ValueError(f"{path}: holds only the model for inference; resume from the run folder or its last.pt")
    raw = state["config"]
    cfg = RunConfig(
        model=from_dict(ModelConfig, raw["model"], "model"),
        data=from_dict(DataConfig, raw["data"], "data"),
        train=from_dict(TrainConfig, raw["train"], "train"),
    )
    if "holdout" not in raw["data"]:  # saved before held-out validation: the same val images as before
        cfg.data.val_split = saved_val_split(cfg.data)
    return cfg


def resume_changes(cfg: RunConfig, state: dict[str, Any], path: Path, epochs: int | None, patience: int | None) -> int:
    """Apply a resume's new ``epochs`` and ``patience`` to ``cfg``; returns the planned epochs."""
    planned = cfg.train.epochs
    if epochs is not None:
        if epochs < int(state["epoch"]):
            raise ValueError(f"epochs={epochs}: {path} has already trained {state['epoch']} epochs")
        cfg.train.epochs = epochs
    if patience is not None:
        cfg.train.patience = patience
    return planned


def replan(trainer: Any, planned: int) -> None:
    """A resumed run of another length: the warmup + cosine schedule now ends at the new
    last epoch, and the learning rate continues from where that plan is at this step."""
    t = trainer.cfg.train
    lrs = restart_at(trainer.scheduler, trainer.step)
    # A longer run continues even when patience had stopped it: the wait counts from here.
    trainer.patience_from = trainer.epoch
    if trainer.dist.is_main:
        tqdm.write(
            f"epochs {planned} -> {t.epochs}: the learning-rate schedule is re-planned from step {trainer.step} "
            f"(epoch {trainer.epoch}): lr {lrs[0]:.2e} now, cosine down to {t.lr * t.min_lr_ratio:.2e} at epoch {t.epochs}"
        )
