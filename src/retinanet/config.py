"""Typed configuration: every default is written once, here.

A config is a tree of dataclasses. It is read from a YAML file plus ``key=value``
overrides with dotted keys (``model.fpn.channels=256``); an unknown key fails with the
list of valid keys at that level. Values of an override are parsed as YAML scalars, so
``train.lr=0.01``, ``model.anchors.ratios=[0.5,1,2]`` and ``train.amp=false`` all work.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Paper values (Lin et al. 2017, "Focal Loss for Dense Object Detection", sec. 4 and 5.1).
PAPER_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)  # P3..P7
PAPER_ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # 3 scales per octave
PAPER_ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # height / width
PAPER_PRIOR_PROB = 0.01  # class-head bias = -log((1 - pi) / pi)


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied."""


@dataclass
class BackboneConfig:
    name: str = "mobilenet_v2"
    """mobilenet_v1 | mobilenet_v2 | mobilenet_v3_large | mobilenet_v3_small"""
    width: float = 1.0
    """Width multiplier of MobileNetV1 (1.0, 0.75, 0.5, 0.25); other backbones use 1.0."""
    weights: str = "imagenet"
    """'imagenet' (torchvision's ImageNet weights), a path to a .pth file, or 'none'
    ('checkpoint' is set when a detector checkpoint supplies every weight)."""
    freeze_stages: int = 2
    """Leading stages (1 = stride 2, 2 = up to stride 4, ...) left frozen: the generic low-level
    ImageNet features need no tuning, and skipping their backward halves the step time on a CPU."""
    freeze_bn: bool = True
    """Freeze the backbone's batch norm at its pretrained statistics (folded into the convs).
    Right for fine-tuning with small batches; turn off when training a backbone from scratch."""


@dataclass
class FPNConfig:
    channels: int = 128
    """Channels of every pyramid level."""
    lite: bool = True
    """Depthwise-separable 3x3 convs with batch norm and ReLU6 (FPNLite) instead of plain 3x3 convs."""
    min_level: int = 3
    """Finest pyramid level (P3 = stride 8)."""
    max_level: int = 7
    """Coarsest pyramid level (P7 = stride 128); levels above 5 are made by stride-2 convs."""


@dataclass
class AnchorConfig:
    sizes: tuple[float, ...] = PAPER_ANCHOR_SIZES
    """Base anchor side in pixels, one per level from min_level to max_level."""
    scales: tuple[float, ...] = PAPER_ANCHOR_SCALES
    """Multipliers of the base size at every position."""
    ratios: tuple[float, ...] = PAPER_ANCHOR_RATIOS
    """Aspect ratios (height / width) at every position."""


@dataclass
class HeadConfig:
    depth: int = 4
    """Conv layers in each of the class and box towers (paper: 4)."""
    lite: bool = True
    """Depthwise-separable convs in the towers and the final predictors."""
    norm: str = "bn"
    """Normalisation in the towers: 'bn' (one batch norm per level, shared convs), 'gn' or 'none'."""
    prior_prob: float = PAPER_PRIOR_PROB
    """Initial foreground probability of the class head (paper: 0.01)."""


@dataclass
class LossConfig:
    alpha: float = 0.25
    """Focal loss weight of the positive class (paper: 0.25)."""
    gamma: float = 2.0
    """Focal loss focusing parameter (paper: 2)."""
    box_loss: str = "smooth_l1"
    """'smooth_l1' on encoded deltas or 'giou' on decoded boxes."""
    smooth_l1_beta: float = 0.1
    """Transition point of smooth L1 (Detectron uses 0.11)."""
    box_weight: float = 1.0
    """Weight of the box loss relative to the class loss (GIoU usually wants 2)."""
    fg_iou: float = 0.5
    """Anchors with IoU >= fg_iou are foreground (paper: 0.5)."""
    bg_iou: float = 0.4
    """Anchors with IoU < bg_iou are background; in between they are ignored (paper: 0.4)."""
    low_quality_matches: bool = True
    """Every ground-truth box keeps its best anchor even below fg_iou."""
    crowd_ioa: float = 0.5
    """Background anchors covered this much (intersection / anchor area) by a crowd region are ignored."""
    normalizer_momentum: float = 0.9
    """Momentum of the running foreground count the losses are divided by (0 = this batch only)."""


@dataclass
class PostprocessConfig:
    score_thresh: float = 0.05
    """Candidates below this class probability are dropped (paper: 0.05)."""
    topk: int = 1000
    """Candidates kept per level before NMS (paper: 1000)."""
    nms_iou: float = 0.5
    """IoU above which NMS suppresses a box of the same class (paper: 0.5)."""
    max_detections: int = 100
    """Detections kept per image (paper: 100)."""


@dataclass
class ModelConfig:
    """The detector: every field defaults to the paper's value or the default preset's."""

    preset: str = "default"
    """Name of the preset these values came from (for the record only)."""
    num_classes: int = 80
    """Number of object classes K (no background class)."""
    input_size: int = 320
    """Longest side images are letterboxed to (training and evaluation pad to the square)."""
    rect: bool = True
    """predict() and exported graphs pad the letterboxed image only up to a multiple of
    RECT_STRIDE instead of the full square (a 4:3 photo runs at 320 x 256). Training and
    evaluation stay square."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


@dataclass
class AugmentConfig:
    """Training augmentation (torchvision.transforms.v2, box-aware). Evaluation only letterboxes.

    Order: [IoU crop] -> resize (longer side = input_size * zoom) -> flip -> random crop /
    pad to input_size (or a 4-image mosaic) -> colour jitter -> clip boxes, drop tiny ones.
    See docs/augmentation.md.
    """

    hflip: float = 0.5
    """Probability of a horizontal flip."""
    scale: tuple[float, float] = (0.75, 1.25)
    """Random zoom range of the letterboxed image before the crop/pad back to input_size (1 = none)."""
    iou_crop: float = 0.0
    """Probability of torchvision's RandomIoUCrop (SSD-style) before resizing."""
    color_jitter: float = 0.2
    """Strength of brightness/contrast/saturation jitter (0 = off)."""
    hue: float = 0.0
    """Hue jitter (fraction of the colour wheel, as ColorJitter's hue); about 3 ms per 320 px image on a CPU core."""
    mosaic: float = 0.0
    """Probability of a 4-image mosaic (each image decoded and resized: about 4x the data cost)."""
    min_box_size: float = 2.0
    """Boxes narrower or shorter than this many input pixels after augmentation are dropped (>= 1)."""


@dataclass
class DataConfig:
    source: str = "synthetic"
    """Dataset folder, annotation file or spec YAML; 'synthetic' renders the built-in shapes dataset."""
    train_split: str = "train"
    """Split trained on."""
    val_split: str = "auto"
    """Split evaluated each epoch: a name, 'none', or 'auto' (val, else test, else the training images)."""
    workers: int = -1
    """DataLoader worker processes (0 = load in the main process; -1 = auto: none on a machine
    with 2 cores or fewer, where workers only take cores from the network, else up to 4)."""
    drop_bad: bool = False
    """Drop unusable images/boxes with a report instead of stopping."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    epochs: int = 30
    """Passes over the training split."""
    batch_size: int = 8
    """Images per step (per process under torchrun)."""
    optimizer: str = "sgd"
    """'sgd' (momentum, nesterov) or 'adamw'."""
    lr: float = 0.01
    """Peak learning rate after warmup."""
    momentum: float = 0.9
    """SGD momentum / AdamW beta1."""
    weight_decay: float = 1e-4
    """Applied to conv and linear weights only, not to norms and biases."""
    warmup_epochs: float = 1.0
    """Linear warmup from warmup_factor * lr to lr over this many epochs."""
    warmup_factor: float = 0.001
    """Learning rate at the first step, relative to lr."""
    min_lr_ratio: float = 0.01
    """Cosine decay ends at lr * min_lr_ratio."""
    grad_clip: float = 10.0
    """Max global gradient norm (0 = off)."""
    ema_decay: float = 0.9998
    """Decay of the weight EMA used for evaluation and the saved model (0 = no EMA)."""
    ema_tau: float = 500.0
    """The EMA decay ramps up as decay * (1 - exp(-updates / tau)) so early epochs are usable."""
    amp: str = "auto"
    """'auto' (bf16 on CUDA/CPUs with native bf16, else off), 'off', 'bf16' or 'fp16' (CUDA only)."""
    freeze_backbone_epochs: int = 0
    """Keep the backbone frozen (weights and batch norm) for this many first epochs."""
    seed: int = 0
    """Seed of weights init, data order and augmentation."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    sync_bn: bool = False
    """Convert batch norm to SyncBatchNorm under torchrun (CUDA only)."""
    eval_every: int = 1
    """Validate every this many epochs (and always after the last)."""
    max_nonfinite: int = 20
    """Stop with an error after this many consecutive steps with a non-finite loss or gradient."""
    out: str = "runs/train"
    """Folder that holds one sub-folder per run."""
    name: str = ""
    """Run folder name under out (default: exp, exp2, ...)."""


@dataclass
class RunConfig:
    """Everything `retinanet train` needs; saved as config.yaml in the run folder and in checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS = ("default", "full", "v1", "v3", "v3_small")


def preset(name: str = "default", num_classes: int = 80, **overrides: Any) -> ModelConfig:
    """The model presets of DESIGN.md, by name.

    default   MobileNetV2 + lite FPN/heads (128 ch, separable convs), 320 px
    full      MobileNetV2 + the paper's FPN/heads (256 ch, plain 3x3 convs), 640 px
    v1        MobileNetV1 (width 1.0; set backbone.width for 0.75/0.5/0.25), 256 ch, 640 px
    v3        MobileNetV3-Large + lite, 320 px
    v3_small  MobileNetV3-Small + lite, 320 px
    """
    if name == "default":
        cfg = ModelConfig()
    elif name == "full":
        cfg = ModelConfig(
            input_size=640,
            fpn=FPNConfig(channels=256, lite=False),
            head=HeadConfig(lite=False, norm="gn"),
        )
    elif name == "v1":
        cfg = ModelConfig(
            input_size=640,
            # No ImageNet MobileNetV1 ships with torchvision: start from `retinanet pretrain` output.
            backbone=BackboneConfig(name="mobilenet_v1", weights="none", freeze_bn=False, freeze_stages=0),
            fpn=FPNConfig(channels=256, lite=False),
            head=HeadConfig(lite=False, norm="gn"),
        )
    elif name in ("v3", "v3_small"):
        backbone = "mobilenet_v3_large" if name == "v3" else "mobilenet_v3_small"
        # ImageNet V3 weights come from torchvision's cache or a user-given file; none ship offline.
        cfg = ModelConfig(backbone=BackboneConfig(name=backbone, weights="none", freeze_bn=False, freeze_stages=0))
    else:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg.preset = name
    cfg.num_classes = num_classes
    if overrides:
        apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])
    return cfg


# ----------------------------------------------------------------------------- generic I/O


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (lists for tuples) that YAML and torch.load(weights_only=True) accept."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (elem, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (elem,) = typing.get_args(tp)
        return [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return "none"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys fail naming the valid ones."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def merge(cfg: Any, data: dict[str, Any], where: str = "") -> Any:
    """Apply a (possibly partial, nested) mapping onto an existing dataclass instance."""
    types_ = _field_types(type(cfg))
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in types_:
            raise ConfigError(
                f"unknown key {path!r}; valid keys{' under ' + where if where else ''}: {', '.join(types_)}"
            )
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            merge(current, value, path)
        else:
            setattr(cfg, key, _coerce(value, types_[key], path))
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: Any, items: list[str]) -> Any:
    return merge(cfg, parse_overrides(items))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
