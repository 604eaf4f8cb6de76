"""Checkpoints: plain dicts written atomically, read with torch.load(weights_only=True).

Two kinds, each stamped with its format: the detector's (``retinanet train``, FORMAT) and
the backbone classifier's (``retinanet pretrain``, PRETRAIN_FORMAT; its keys are listed in
retinanet/pretrain/__init__.py).

Detector keys: format, model (state dict), ema (state dict or absent), config (nested dict of the
run's resolved config, with 'model' the ModelConfig), class_names, category_ids (the
dataset's own id of each contiguous label), epoch, step, optimizer, scheduler, rng,
metrics. Inference prefers the EMA weights when they are present.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import torch

from .atomic import write_atomic
from .config import ModelConfig, from_dict

FORMAT = "retinanet-mobilenet/1"
PRETRAIN_FORMAT = "retinanet-mobilenet-pretrain/1"


def atomic_save(obj: Any, path: str | Path, on_written: Callable[[], None] | None = None) -> Path:
    """torch.save ``obj`` to ``path`` atomically (atomic.write_atomic): a kill never leaves a
    broken file, and a full disk raises an OSError naming ``path`` with the old file intact.
    The bytes are built in memory first, so torch's writer never meets the full disk."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, buf.getbuffer(), on_written)


def save_checkpoint(state: dict[str, Any], path: str | Path, on_written: Callable[[], None] | None = None) -> Path:
    """A detector checkpoint, stamped with FORMAT, written atomically."""
    return atomic_save({"format": FORMAT, **state}, path, on_written)


def read_stamped(path: str | Path, fmt: str, key: str, what: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A plain-dict file stamped with ``fmt`` that holds ``key``, read with weights_only=True;
    a missing, unreadable or foreign file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: not a readable checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != fmt or key not in state:
        raise RuntimeError(f"{path}: not a {fmt} {what}")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return read_stamped(path, FORMAT, "model", "checkpoint", map_location)


def save_pretrain_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """A pretrained classifier, stamped with PRETRAIN_FORMAT, written atomically."""
    return atomic_save({"format": PRETRAIN_FORMAT, **state}, path)


def load_pretrain_checkpoint(path: str | Path) -> dict[str, Any]:
    return read_stamped(path, PRETRAIN_FORMAT, "classifier_state", "pretrain checkpoint (written by `retinanet pretrain`)")


def model_from_checkpoint(path_or_state: str | Path | dict[str, Any], use_ema: bool = True):
    """Rebuild the model a checkpoint was saved from (no backbone weights are fetched)."""
    from .model import RetinaNet

    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    cfg: ModelConfig = from_dict(ModelConfig, state["config"]["model"], "model")
    cfg.backbone.weights = "checkpoint"  # every weight comes from the checkpoint
    model = RetinaNet(cfg, class_names=state.get("class_names"), category_ids=state.get("category_ids"))
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    model.load_state_dict(weights)
    return model.eval()
