"""Pretraining configuration: the backbone's classification run and the object crops
that can feed it (``retinanet pretrain``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .io import ConfigError

OPTIMIZERS = ("sgd", "adamw")
# Defaults used when lr / weight_decay are left unset, per optimizer and start, for a batch
# of REFERENCE_BATCH images; the lr scales linearly with the batch size (Goyal et al. 2017).
# From scratch, SGD at 0.02 is torchvision's MobileNet recipe scale (0.045 at batch 256)
# with a little more for warmup + cosine. Pretrained features want half of it: on coco128
# object crops, ImageNet MobileNetV2 at twice this rate lost its validation accuracy
# mid-run. AdamW: the usual 1e-3, halved likewise. Weight decay 4e-5 as in the MobileNet
# papers; AdamW's decoupled decay 0.05.
REFERENCE_BATCH = 64
DEFAULT_LR = {"sgd": {"scratch": 0.02, "pretrained": 0.01}, "adamw": {"scratch": 1e-3, "pretrained": 5e-4}}
DEFAULT_WEIGHT_DECAY = {"sgd": 4e-5, "adamw": 0.05}

# Networks downsample by 32; a smaller input leaves no spatial extent for the last stage.
MIN_IMG_SIZE = 32


@dataclass
class PretrainConfig:
    """Settings of a pretraining run. Every default is written here once."""

    backbone: str = "mobilenet_v2"
    """A MobileNet of the backbone table (backbones.BACKBONES: V1, V2, V3-Large, V3-Small)."""
    width: float = 1.0
    """Width multiplier (MobileNetV1: 1.0, 0.75, 0.5, 0.25)."""
    weights: str = "imagenet"
    """Start from 'imagenet' (torchvision's weights, new head), 'none' (random) or a .pth file."""
    epochs: int = 30
    """Passes over the training images."""
    batch_size: int = 64
    """Images per step (the last incomplete batch of an epoch is dropped)."""
    optimizer: str = "sgd"
    """'sgd' (momentum, Nesterov) or 'adamw'."""
    lr: float | None = None
    """Peak learning rate after warmup; unset = DEFAULT_LR for the optimizer and start, times batch_size / 64."""
    momentum: float = 0.9
    """SGD momentum (AdamW's beta1 stays at 0.9)."""
    weight_decay: float | None = None
    """Weight decay of conv and linear weights (never of norms and biases); unset = 4e-5 SGD, 0.05 AdamW."""
    warmup_epochs: float = 1.0
    """Linear warmup from 0 to lr over this many epochs, then cosine decay."""
    final_lr_ratio: float = 0.01
    """The cosine ends at lr * final_lr_ratio."""
    label_smoothing: float = 0.1
    """Label smoothing of the training cross-entropy (validation loss is plain cross-entropy)."""
    clip_grad: float = 10.0
    """Maximum gradient norm (0 = no clipping)."""
    img_size: int = 224
    """Side of the square training crop (RandomResizedCrop) and of the eval centre crop."""
    val_split: float = 0.1
    """Fraction of each class held out for validation when DATA_DIR has no val/ folder (0 = none)."""
    workers: int = 4
    """DataLoader worker processes (0 = load in the main process)."""
    seed: int = 0
    """Seed of the initialisation, the validation split, shuffling and augmentation."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        start = "scratch" if self.weights.strip().lower() in ("none", "") else "pretrained"
        return DEFAULT_LR[self.optimizer][start] * self.batch_size / REFERENCE_BATCH

    def resolved_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[self.optimizer]

    def validate(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.batch_size >= 2, f"batch size must be at least 2 (batch norm needs 2 images), not {self.batch_size}"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)), f"lr must be a positive number, not {self.lr}"),
            (self.weight_decay is None or self.weight_decay >= 0, f"weight decay must be >= 0, not {self.weight_decay}"),
            (0 <= self.warmup_epochs, f"warmup epochs must be >= 0, not {self.warmup_epochs}"),
            (0 <= self.final_lr_ratio <= 1, f"final lr ratio must be in [0, 1], not {self.final_lr_ratio}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), not {self.label_smoothing}"),
            (self.clip_grad >= 0, f"clip grad must be >= 0, not {self.clip_grad}"),
            (
                self.img_size >= MIN_IMG_SIZE,
                f"image size must be at least {MIN_IMG_SIZE} (the network's stride), not {self.img_size}",
            ),
            (0 <= self.val_split < 1, f"val split must be in [0, 1), not {self.val_split}"),
            (self.workers >= 0, f"workers must be >= 0, not {self.workers}"),
            (self.width > 0, f"width must be positive, not {self.width}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("pretrain settings: " + "; ".join(problems))


@dataclass
class CropConfig:
    """How ``make_crops`` turns object boxes into classification images."""

    min_size: int = 32
    """Boxes narrower or shorter than this many pixels (in the original image) are skipped."""
    margin: float = 0.1
    """Context added on every side, as a fraction of the box's width / height (clipped to the image)."""
    min_per_class: int = 10
    """Classes with fewer usable boxes than this get no folder (too few to learn or validate)."""
    max_per_class: int = 0
    """Keep at most this many crops per class, the largest boxes first (0 = all)."""
    quality: int = 95
    """JPEG quality of the written crops."""
