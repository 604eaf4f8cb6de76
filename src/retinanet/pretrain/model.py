"""The classifier that pretraining trains: a MobileNet from the backbone table with a
head sized for the classes, started from random weights, ImageNet or a file."""

from __future__ import annotations

from torch import Tensor, nn

from ..backbones import build_classifier, imagenet_state_dict, read_weights_file


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier's last Linear layer: the part that depends on the classes."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear classifier layer")
    return {f"{last}.weight", f"{last}.bias"}


def _check_features(state: dict[str, Tensor], own: dict[str, Tensor], source: str, name: str, width: float) -> None:
    """Every feature tensor of the model must be in ``state`` with the model's shape."""
    missing = [k for k in own if k.startswith("features.") and k not in state]
    wrong = [k for k in own if k.startswith("features.") and k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        detail = f"missing e.g. {missing[:3]}" if missing else (
            f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        )
        raise RuntimeError(f"{source}: does not hold {name} (width {width}) features; {detail}")


def build_pretrain_model(name: str, width: float, weights: str, class_names: list[str]) -> nn.Module:
    """A classifier for ``class_names``: random, or its features (and every layer whose shape
    fits) from ImageNet or a file. The last Linear layer is new unless the file was
    pretrained on exactly these classes, in this order."""
    model = build_classifier(name, width, num_classes=len(class_names))
    source = (weights or "none").strip()
    if source.lower() in ("none", ""):
        return model
    if source.lower() == "imagenet":
        state, source_classes = imagenet_state_dict(name, width), None
    else:
        state, source_classes = read_weights_file(source)
    own = model.state_dict()
    _check_features(state, own, source, name, width)
    keep_head = source_classes is not None and list(source_classes) == list(class_names)
    head = head_keys(model)
    fitting = {
        k: v for k, v in state.items() if k in own and v.shape == own[k].shape and (keep_head or k not in head)
    }
    model.load_state_dict(fitting, strict=False)
    return model
