"""Starting a run from a trained detector (``train.weights``, ``retinanet train --weights``).

The run builds its own model as usual (its preset, its data's classes), then takes from
the checkpoint every tensor whose name and shape match. The class predictor's final conv
starts afresh when the class count differs (its shape depends on it: normal init and the
focal-loss prior bias, as a new head does); the lite head's depthwise conv before it does
not depend on the class count and is loaded. The checkpoint's anchors replace the
config's before the model is built: the head learned to predict offsets from exactly
those anchors, so they are measured on the new data but never refitted. What was loaded, skipped and re-initialised is printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint
from .config import AnchorConfig, ConfigError, ModelConfig, from_dict, to_dict

CLS_PREDICTOR = "head.cls_pred."
# Settings that change the shapes or the meaning of the weights: named when tensors are skipped.
ARCHITECTURE = {
    "backbone": ("name", "width", "freeze_bn"),
    "fpn": ("channels", "lite", "min_level", "max_level"),
    "head": ("depth", "lite", "norm"),
}
SHOWN = 3  # skipped tensors named in the output


def wants_weights(value: str) -> bool:
    """Whether ``train.weights`` names a checkpoint ('' and 'none' do not)."""
    return bool(value) and value.strip().lower() not in ("", "none")


def read_detector(path: str | Path) -> dict[str, Any]:
    """The detector checkpoint at ``path``, read with weights_only=True; a missing or
    foreign file raises one line naming it."""
    try:
        return load_checkpoint(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"train.weights: {e}") from None
    except RuntimeError as e:
        raise RuntimeError(
            f"train.weights: {e} (it takes a detector's best.pt or last.pt; backbone weights go in model.backbone.weights)"
        ) from None


def detector_anchors(state: dict[str, Any], cfg: ModelConfig, source: str | Path) -> AnchorConfig:
    """The checkpoint's anchors for a model of ``cfg``'s pyramid, marked not to be refitted."""
    anchors = from_dict(AnchorConfig, dict(state["config"]["model"]["anchors"]), "model.anchors")
    anchors.fit = False
    levels = cfg.fpn.max_level - cfg.fpn.min_level + 1
    if len(anchors.sizes) != levels:
        raise ConfigError(
            f"train.weights: {source}: its anchors have {len(anchors.sizes)} pyramid levels, this model has {levels} "
            f"(P{cfg.fpn.min_level}-P{cfg.fpn.max_level}); set model.fpn.min_level and max_level as the checkpoint's"
        )
    return anchors


def start_weights(cfg: Any, fresh: bool) -> dict[str, Any] | None:
    """The detector checkpoint of ``cfg.train.weights`` (None without one, or when the run
    is resumed: ``fresh`` False), its anchors put in ``cfg.model``: the head learned them."""
    source = cfg.train.weights
    if not (fresh and wants_weights(source)):
        return None
    state = read_detector(source)
    cfg.model.anchors = detector_anchors(state, cfg.model, source)
    return state


def _source_classes(state: dict[str, Any]) -> int:
    names = state.get("class_names")
    return len(names) if names else int(state["config"]["model"]["num_classes"])


def load_detector_weights(model: nn.Module, state: dict[str, Any], source: str | Path) -> list[str]:
    """Copy every tensor of the checkpoint (its EMA weights when it has them) whose name and
    shape match into ``model``. With another class count, the class predictor's tensors whose
    shape differs (the final conv's weight and bias) keep their fresh init, unreported as
    skipped. Returns the lines that say what was loaded, skipped and re-initialised."""
    weights = state["ema"] if state.get("ema") else state["model"]
    own = model.state_dict()
    theirs = _source_classes(state)
    fresh_head = theirs != model.num_classes
    taken: dict[str, Any] = {}
    skipped: list[str] = []
    for name, tensor in own.items():
        src = weights.get(name)
        if src is None:
            skipped.append(f"{name} (not in the checkpoint)")
        elif tuple(src.shape) != tuple(tensor.shape):
            if fresh_head and name.startswith(CLS_PREDICTOR):
                continue  # the final class conv: its shape follows the class count; re-initialised
            skipped.append(f"{name} ({tuple(src.shape)} there, {tuple(tensor.shape)} here)")
        else:
            taken[name] = src
    model.load_state_dict(taken, strict=False)
    by_part = {part: sum(1 for k in taken if k.startswith(part + ".")) for part in ("backbone", "fpn", "head")}
    lines = [
        f"fine-tuning from {source} ({theirs} classes, epoch {state.get('epoch', '?')}): loaded {len(taken)} of {len(own)} "
        f"tensors (" + ", ".join(f"{part} {n}" for part, n in by_part.items()) + ")"
    ]
    if fresh_head:
        prior = model.cfg.head.prior_prob
        lines.append(
            f"class predictor re-initialised: {model.num_classes} classes here, {theirs} in the checkpoint "
            f"(bias at the prior probability {prior:g})"
        )
    elif list(state.get("class_names") or []) != list(model.class_names):
        lines.append(f"class predictor kept ({theirs} classes in both); it learns this data's class names from here")
    if skipped:
        lines.append(f"skipped {len(skipped)}: " + "; ".join(skipped[:SHOWN]) + ("; ..." if len(skipped) > SHOWN else ""))
        lines += _differences(state, model.cfg)
    unused = len([k for k in weights if k not in own])
    if unused:
        lines.append(f"{unused} tensors of the checkpoint have no place in this model")
    return lines


def _differences(state: dict[str, Any], cfg: ModelConfig) -> list[str]:
    """The model settings in which the checkpoint differs from this run, as a hint."""
    theirs, ours = state["config"]["model"], to_dict(cfg)
    diff = [
        f"model.{section}.{key}={str(theirs[section][key]).lower() if isinstance(theirs[section][key], bool) else theirs[section][key]}"
        for section, keys in ARCHITECTURE.items()
        for key in keys
        if section in theirs and key in theirs[section] and theirs[section][key] != ours[section][key]
    ]
    if theirs.get("preset", cfg.preset) != cfg.preset:
        diff.insert(0, f"--preset {theirs['preset']}")
    if not diff:
        return []
    return [f"the checkpoint's model differs from this run's; to load every layer, train with {' '.join(diff)}"]
