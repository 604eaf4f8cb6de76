"""Checkpoints: plain dicts written atomically, read with torch.load(weights_only=True).

Two kinds, each stamped with its format: the detector's (``retinanet train``, FORMAT) and
the backbone classifier's (``retinanet pretrain``, PRETRAIN_FORMAT; its keys are listed in
retinanet/pretrain/__init__.py).

A detector's last.pt (the resume point) holds: format, model (state dict), ema (state dict
or None), ema_updates, optimizer, scheduler, scaler, epoch, step, best_fitness, best_epoch,
history, rng, position, config (nested dict of the run's resolved config, with 'model' the
ModelConfig), class_names, category_ids (the dataset's own id of each contiguous label) and
metrics. Its best.pt holds only what inference needs: format, model (the EMA weights when
the run kept an EMA), config (the anchors are in config['model']), class_names,
category_ids, conf_threshold (the score with the best F1 on the validation split, when
there was one), and for the record epoch, step and metrics. Inference prefers the EMA
weights of a checkpoint that has them.
"""

from __future__ import annotations

import io
import warnings
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
        with warnings.catch_warnings():  # torch's note on an old pickle protocol: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: not a readable checkpoint: {_one_line(e)}") from e
    if not isinstance(state, dict) or state.get("format") != fmt or key not in state:
        raise RuntimeError(f"{path}: not a {fmt} {what}")
    return state


def _one_line(e: Exception) -> str:
    """torch.load's error in one line. Its refusal of a pickle that would run code spans a
    paragraph and suggests weights_only=False: keep only what the file tried to load."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        what = next((line.rstrip(".") for line in lines[1:] if "nsupported" in line), "")
        return "it holds Python objects that are not weights, refused unread" + (f" ({what})" if what else "")
    if isinstance(e, (EOFError, KeyError, IndexError)) or not lines:  # the unpickler ran off the data
        return "not a PyTorch file, or cut short"
    return lines[0].split(". ")[0]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return read_stamped(path, FORMAT, "model", "checkpoint", map_location)


def save_pretrain_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """A pretrained classifier, stamped with PRETRAIN_FORMAT, written atomically."""
    return atomic_save({"format": PRETRAIN_FORMAT, **state}, path)


def load_pretrain_checkpoint(path: str | Path) -> dict[str, Any]:
    return read_stamped(path, PRETRAIN_FORMAT, "classifier_state", "pretrain checkpoint (written by `retinanet pretrain`)")


def model_from_checkpoint(path_or_state: str | Path | dict[str, Any], use_ema: bool = True):
    """Rebuild the model a checkpoint was saved from (no backbone weights are fetched).
    ``model.conf_threshold`` is the checkpoint's F1-best confidence threshold, or None."""
    from .model import RetinaNet

    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    cfg: ModelConfig = from_dict(ModelConfig, state["config"]["model"], "model")
    cfg.backbone.weights = "checkpoint"  # every weight comes from the checkpoint
    model = RetinaNet(cfg, class_names=state.get("class_names"), category_ids=state.get("category_ids"))
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    model.load_state_dict(weights)
    threshold = state.get("conf_threshold")
    model.conf_threshold = float(threshold) if threshold is not None else None
    return model.eval()
