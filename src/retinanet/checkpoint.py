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

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, from_dict

FORMAT = "retinanet-mobilenet/1"
PRETRAIN_FORMAT = "retinanet-mobilenet-pretrain/1"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save ``obj`` to ``path`` via a temporary file and a rename: a kill never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """A detector checkpoint, stamped with FORMAT, written atomically."""
    return atomic_save({"format": FORMAT, **state}, path)


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
