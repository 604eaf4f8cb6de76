"""The model's configuration: backbone, pyramid, anchors, heads, losses, post-processing,
and the named presets of DESIGN.md. Every default is the paper's value or the default preset's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .io import ConfigError, apply_overrides

# Paper values (Lin et al. 2017, "Focal Loss for Dense Object Detection", sec. 4 and 5.1).
PAPER_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)  # P3..P7
PAPER_ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # 3 scales per octave
PAPER_ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # height / width
PAPER_PRIOR_PROB = 0.01  # class-head bias = -log((1 - pi) / pi)


BACKBONE_NAMES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
"""The keys of backbones.BACKBONES, here so the command line can list them without importing torchvision."""


@dataclass
class BackboneConfig:
    name: str = "mobilenet_v2"
    """A MobileNet of the backbone table (backbones.BACKBONES: V1, V2, V3-Large, V3-Small)."""
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
    """Finest pyramid level: 3 (P3, stride 8), or 2 for tiny objects (P2, stride 4, from the
    backbone's stride-4 features; give model.anchors.sizes one more entry, e.g. 16 first)."""
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
    fit: bool = True
    """At the start of training, fit each level's size to the data when the anchors cover its
    boxes poorly (coverage.py); the coverage check runs and reports either way."""


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
    assigner: str = "paper"
    """'paper' (the fixed thresholds fg_iou / bg_iou) or 'atss' (a threshold per box from the IoUs of
    its nearest anchors; Zhang et al. 2020)."""
    atss_topk: int = 9
    """ATSS candidate locations per level and box, nearest by centre distance (paper: 9)."""
    cls_loss: str = "focal"
    """'focal' (Lin et al. 2017) or 'quality_focal' (GFL, Li et al. 2020: the class target is the
    predicted box's IoU with its ground truth)."""
    qfl_beta: float = 2.0
    """Focusing exponent beta of the quality focal loss (GFL paper: 2)."""


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
    agnostic: bool = False
    """Class-agnostic NMS: a box also suppresses overlapping boxes of other classes (off: per class, the paper)."""


@dataclass
class ModelConfig:
    """The detector: every field defaults to the paper's value or the default preset's."""

    preset: str = "default"
    """Name of the preset these values came from (for the record only)."""
    num_classes: int = 80
    """Number of object classes K (no background class)."""
    input_size: int | str = 320
    """Longest side images are letterboxed to (training and evaluation pad to the square);
    'auto' picks 320, 416, 512 or 640 from the training boxes' sizes when training starts."""
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
