"""`retinanet pretrain`: train a MobileNet as an image classifier, the backbone's first stage.

The classifier learns on a folder of class-named subfolders (ImageNet layout, read by
torchvision's ImageFolder), from scratch or continuing from torchvision's ImageNet
weights with a new head. Its output file is a plain dict that the detector starts from
through ``model.backbone.weights=PATH``:

    {"format", "classifier_state", "backbone", "width", "class_names", "epoch",
     "optimizer", "scheduler", "metrics", "best", "history", "config"}

``make_crops`` turns a detection dataset into such a folder (one crop per object), so a
user can pretrain on the objects of their own domain.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2
from tqdm import tqdm

from .backbones import build_classifier, imagenet_state_dict, load_weights_file
from .checkpoint import atomic_save, read_stamped
from .config import ConfigError, from_dict, preset, to_dict
from .data import load_dataset
from .data.dataset import DetectionDataset
from .data.images import ImageError, open_image
from .preprocess import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "retinanet-mobilenet-pretrain/1"

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

# Eval resize: the centre crop covers 87.5% of the shorter side (the ImageNet convention, 224 of 256).
EVAL_CROP_FRACTION = 0.875
# Networks downsample by 32; a smaller input leaves no spatial extent for the last stage.
MIN_IMG_SIZE = 32
TOPK = 5


@dataclass
class PretrainConfig:
    """Settings of a pretraining run. Every default is written here once."""

    backbone: str = "mobilenet_v2"
    """mobilenet_v1 | mobilenet_v2 | mobilenet_v3_large | mobilenet_v3_small"""
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
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 2:
            problems.append(f"batch size must be at least 2 (batch norm needs 2 images), not {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, not {self.lr}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            problems.append(f"weight decay must be >= 0, not {self.weight_decay}")
        if not 0 <= self.warmup_epochs:
            problems.append(f"warmup epochs must be >= 0, not {self.warmup_epochs}")
        if not 0 <= self.final_lr_ratio <= 1:
            problems.append(f"final lr ratio must be in [0, 1], not {self.final_lr_ratio}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label smoothing must be in [0, 1), not {self.label_smoothing}")
        if not self.clip_grad >= 0:
            problems.append(f"clip grad must be >= 0, not {self.clip_grad}")
        if self.img_size < MIN_IMG_SIZE:
            problems.append(f"image size must be at least {MIN_IMG_SIZE} (the network's stride), not {self.img_size}")
        if not 0 <= self.val_split < 1:
            problems.append(f"val split must be in [0, 1), not {self.val_split}")
        if self.workers < 0:
            problems.append(f"workers must be >= 0, not {self.workers}")
        if self.width <= 0:
            problems.append(f"width must be positive, not {self.width}")
        if problems:
            raise ConfigError("pretrain settings: " + "; ".join(problems))


class NonFiniteError(RuntimeError):
    """The loss or the gradient stopped being a finite number: training stops instead of learning NaN."""


# ----------------------------------------------------------------------------- data


def train_transform(img_size: int) -> v2.Compose:
    """ImageNet-style augmentation: random resized crop, horizontal flip, ImageNet normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(img_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(img_size: int) -> v2.Compose:
    """Resize the shorter side to img_size / 0.875, then a centre crop of img_size."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(img_size / EVAL_CROP_FRACTION), antialias=True),
            v2.CenterCrop(img_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ClassFolder(ImageFolder):
    """torchvision's ImageFolder that decodes through ``open_image`` (EXIF rotation, 16-bit,
    alpha; errors name the file), skips hidden folders and can be given its class list
    (so a val/ folder lacking a class keeps the train/ folder's label numbers)."""

    def __init__(self, root: str | Path, classes: list[str] | None = None, transform=None, allow_empty: bool = False):
        self._fixed_classes = list(classes) if classes is not None else None
        super().__init__(str(root), transform=transform, loader=open_image, allow_empty=allow_empty)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        if self._fixed_classes is not None:
            classes = self._fixed_classes
        else:
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        return classes, {c: i for i, c in enumerate(classes)}


@dataclass
class ClassificationData:
    train: Dataset
    val: Dataset | None
    class_names: list[str]
    root: Path
    layout: str
    """'train/val' (DATA_DIR/train and DATA_DIR/val) or 'split' (val held out from class folders)."""
    train_targets: list[int] = field(default_factory=list)


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path, classes: list[str] | None, transform, allow_empty: bool) -> ClassFolder:
    dirs = _class_dirs(root)
    if classes is None and not dirs:
        images = [p for p in root.iterdir() if p.suffix.lower() in IMG_EXTENSIONS]
        if images:
            raise ValueError(
                f"{root}: holds {len(images)} images but no class subfolders; put each class's images "
                f"in its own folder, {root}/<class name>/*.jpg"
            )
        raise ValueError(f"{root}: no class subfolders found (expected {root}/<class name>/*.jpg, ImageNet layout)")
    try:
        return ClassFolder(root, classes=classes, transform=transform, allow_empty=allow_empty)
    except FileNotFoundError as e:  # torchvision's message names the classes without images
        raise ValueError(f"{root}: {e}") from None


def split_indices(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified split: round(n * val_fraction) images of every class go to validation,
    at least one when the class has two or more images and val_fraction > 0."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    rng = random.Random(seed)
    train, val = [], []
    for t in sorted(by_class):
        idx = by_class[t][:]
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def load_image_folder(data_dir: str | Path, img_size: int, val_split: float = 0.1, seed: int = 0) -> ClassificationData:
    """Training and validation sets of ``data_dir``.

    ``data_dir/train`` and ``data_dir/val`` with class subfolders are used as they are;
    otherwise ``data_dir``'s class subfolders are split, ``val_split`` of each class held out.
    """
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data folder not found")
    if not root.is_dir():
        raise ValueError(f"{root}: is a file; expected a folder of class subfolders (ImageNet layout)")
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and _class_dirs(train_dir):
        train = _scan(train_dir, None, train_transform(img_size), allow_empty=False)
        val = None
        if val_dir.is_dir():
            extra = sorted({p.name for p in _class_dirs(val_dir)} - set(train.classes))
            if extra:
                raise ValueError(f"{val_dir}: classes {', '.join(extra)} are not in {train_dir}")
            val = _scan(val_dir, train.classes, eval_transform(img_size), allow_empty=True)
            if len(val) == 0:
                raise ValueError(f"{val_dir}: no images in its class folders")
        data = ClassificationData(train, val, list(train.classes), root, "train/val", list(train.targets))
        if val is None and val_split > 0:  # train/ without val/: hold out from train/
            data = _held_out(train, root, img_size, val_split, seed)
    else:
        data = _held_out(_scan(root, None, train_transform(img_size), allow_empty=False), root, img_size, val_split, seed)
    if len(data.class_names) < 2:
        raise ValueError(f"{root}: found {len(data.class_names)} class folder ({data.class_names}); a classifier needs at least 2")
    return data


def _held_out(full: ClassFolder, root: Path, img_size: int, val_split: float, seed: int) -> ClassificationData:
    if val_split <= 0:
        return ClassificationData(full, None, list(full.classes), root, "split", list(full.targets))
    # One scan of the folder, two views: the same samples with the eval transform.
    evaluated = copy.copy(full)
    evaluated.transform = eval_transform(img_size)
    train_idx, val_idx = split_indices(full.targets, val_split, seed)
    return ClassificationData(
        Subset(full, train_idx),
        Subset(evaluated, val_idx) if val_idx else None,
        list(full.classes),
        root,
        "split",
        [full.targets[i] for i in train_idx],
    )


# ----------------------------------------------------------------------------- model


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier's last Linear layer: the part that depends on the classes."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear classifier layer")
    return {f"{last}.weight", f"{last}.bias"}


def _read_weights(path: str) -> tuple[dict[str, Tensor], list[str] | None]:
    """State dict from a file, plus the class names when it is our own pretrain output."""
    p = Path(path)
    if p.is_file():
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"{p}: not a readable PyTorch weights file: {e}") from e
        if isinstance(obj, dict) and "classifier_state" in obj:
            return obj["classifier_state"], obj.get("class_names")
    return load_weights_file(p), None


def build_pretrain_model(name: str, width: float, weights: str, class_names: list[str]) -> nn.Module:
    """A classifier for ``class_names``: random, or its features (and every layer whose shape
    fits) from ImageNet or a file. The last Linear layer is new unless the file was
    pretrained on exactly these classes, in this order."""
    model = build_classifier(name, width, num_classes=len(class_names))
    source = (weights or "none").strip()
    if source.lower() in ("none", ""):
        return model
    if source.lower() == "imagenet":
        if width != 1.0:
            raise ValueError(f"ImageNet weights exist for width 1.0 only, not {width}; use --weights none or a file")
        state, source_classes = imagenet_state_dict(name), None
    else:
        state, source_classes = _read_weights(source)
    if state and not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}  # a bare features state dict
    own = model.state_dict()
    missing = [k for k in own if k.startswith("features.") and k not in state]
    wrong = [k for k in own if k.startswith("features.") and k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        detail = f"missing e.g. {missing[:3]}" if missing else (
            f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        )
        raise RuntimeError(f"{source}: does not hold {name} (width {width}) features; {detail}")
    keep_head = source_classes is not None and list(source_classes) == list(class_names)
    head = head_keys(model)
    fitting = {
        k: v for k, v in state.items() if k in own and v.shape == own[k].shape and (keep_head or k not in head)
    }
    model.load_state_dict(fitting, strict=False)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: conv / linear weights with weight decay, norms and biases (1-d) without,
    since decaying a norm's scale or a bias only fights the normalisation."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.resolved_weight_decay())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.resolved_lr(), momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.resolved_lr(), betas=(cfg.momentum, 0.999))


def lr_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step`` (0-based, the step about to be taken): linear
    warmup to 1 over ``warmup_steps``, then a cosine from 1 down to ``final_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total, cfg.final_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- loops


def _batches(loader: DataLoader):
    """The loader's batches; an undecodable image stops with a one-line error naming the file.

    A DataLoader worker's exception reaches the main process with the worker's traceback
    in its message; its last line is the original ``module.ImageError: message``."""
    try:
        yield from loader
    except ImageError as e:
        last = str(e).strip().splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        raise ImageError(last[len(prefix):] if last.startswith(prefix) else str(e)) from None


def _to_input(images: Tensor, device: torch.device) -> Tensor:
    # Depthwise convs run about twice as fast channels-last on CPU (as the detector does).
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    device: torch.device,
    clip_grad: float = 0.0,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and accuracy of the training batches.

    Stops with NonFiniteError at the first non-finite loss or gradient norm, before the
    optimiser step, so the weights never take a NaN."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(_batches(loader), desc=desc, total=len(loader), unit="batch", dynamic_ncols=True, disable=not progress)
    for step, (images, targets) in enumerate(bar):
        images, targets = _to_input(images, device), targets.to(device)
        logits = model(images)  # (N, K)
        loss = criterion(logits, targets)
        lr = optimizer.param_groups[0]["lr"]
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"{desc}: non-finite loss ({loss.item()}) at step {step + 1}/{len(loader)} (lr {lr:.3g}); "
                "training stopped, the last checkpoint is from the previous epoch. Lower --lr, "
                "or check the --weights file and the images"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
            if not torch.isfinite(norm):
                raise NonFiniteError(
                    f"{desc}: non-finite gradient norm at step {step + 1}/{len(loader)} (lr {lr:.3g}); "
                    "training stopped. Lower --lr"
                )
        optimizer.step()
        scheduler.step()
        n = targets.shape[0]
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == targets).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2e}")
    if seen == 0:
        raise ValueError("the training loader produced no batch")
    return {"train_loss": total_loss / seen, "train_acc": correct / seen}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "val", progress: bool = True) -> dict[str, float]:
    """Plain cross-entropy, top-1 and top-k accuracy (k = min(5, classes)) over ``loader``."""
    model.eval()
    total_loss, top1, topk, seen = 0.0, 0, 0, 0
    bar = tqdm(_batches(loader), desc=desc, total=len(loader), unit="batch", leave=False, dynamic_ncols=True, disable=not progress)
    for images, targets in bar:
        images, targets = _to_input(images, device), targets.to(device)
        logits = model(images)  # (N, K)
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(TOPK, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == targets[:, None]  # (N, k)
        top1 += int(hits[:, 0].sum())
        topk += int(hits.any(1).sum())
        seen += targets.shape[0]
    if seen == 0:
        raise ValueError("the validation loader produced no image")
    return {"val_loss": total_loss / seen, "val_top1": top1 / seen, "val_top5": topk / seen}


# ----------------------------------------------------------------------------- files


def save_pretrain_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (stamped with FORMAT) atomically: a kill never leaves a broken file."""
    return atomic_save({"format": FORMAT, **state}, path)


def load_pretrain_checkpoint(path: str | Path) -> dict[str, Any]:
    return read_stamped(path, FORMAT, "classifier_state", "pretrain checkpoint (written by `retinanet pretrain`)")


CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "seconds")


def write_csv(history: list[dict[str, float]], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in CSV_COLUMNS})


def plot_history(history: list[dict[str, float]], path: str | Path) -> None:
    """Loss and accuracy per epoch, as a PNG (Agg canvas: no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, keys, title in (
        (ax_loss, (("train_loss", "train (smoothed CE)"), ("val_loss", "val")), "loss"),
        (ax_acc, (("train_acc", "train"), ("val_top1", "val top-1"), ("val_top5", "val top-5")), "accuracy"),
    ):
        for key, label in keys:
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key, float("nan")) for r in history], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- pretraining


@dataclass
class PretrainResult:
    out_dir: Path
    best_path: Path
    last_path: Path
    class_names: list[str]
    history: list[dict[str, float]]
    model: nn.Module


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def _score(metrics: dict[str, float]) -> float:
    """What `best` maximises: validation top-1, or training accuracy when there is no validation."""
    return metrics.get("val_top1", metrics["train_acc"])


# The detector preset built on each backbone (config.preset), for the hint printed at the end.
DETECTOR_PRESET = {"mobilenet_v1": "v1", "mobilenet_v2": "default", "mobilenet_v3_large": "v3", "mobilenet_v3_small": "v3_small"}


def train_command(cfg: PretrainConfig, weights: str | Path) -> str:
    """The `retinanet train` line that starts a detector from ``weights``. Presets whose
    backbone starts untrained train its batch norm; with pretrained weights, freeze it as
    the ImageNet presets do (fine-tuning with small batches)."""
    name = DETECTOR_PRESET[cfg.backbone]
    parts = [f"retinanet train --data DATA --preset {name}"]
    if cfg.width != 1.0:
        parts.append(f"model.backbone.width={cfg.width:g}")
    if not preset(name).backbone.freeze_bn:
        parts.append("model.backbone.freeze_bn=true")
    parts.append(f"model.backbone.weights={weights}")
    return " ".join(parts)


# Settings that may change when a run is resumed; any other must match the saved run.
RESUMABLE_CHANGES = ("epochs", "workers", "device")


def pretrain(
    data_dir: str | Path,
    cfg: PretrainConfig | None = None,
    out_dir: str | Path = "runs/pretrain/run",
    resume: bool | str | Path = False,
    model: nn.Module | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train a classifier on ``data_dir``; write ``best.pth``, ``last.pth``, ``results.csv``
    and ``results.png`` into ``out_dir``.

    ``resume``: True continues from ``out_dir/last.pth``, a path from that file; the saved
    settings are used (``cfg`` may only change epochs, workers and device). ``model`` may
    be passed in built (it must match ``cfg.backbone`` and the classes); by default it is
    ``build_pretrain_model(cfg.backbone, cfg.width, cfg.weights, classes)``.
    """
    cfg = copy.deepcopy(cfg)
    out_dir = Path(out_dir)
    saved = None
    if resume:
        resume_path = out_dir / "last.pth" if resume is True else Path(resume)
        saved = load_pretrain_checkpoint(resume_path)
        saved_cfg = from_dict(PretrainConfig, saved["config"], "config")
        if cfg is None:
            cfg = saved_cfg
        changed = [
            f"{f.name} {getattr(cfg, f.name)} (saved: {getattr(saved_cfg, f.name)})"
            for f in fields(PretrainConfig)
            if f.name not in RESUMABLE_CHANGES and getattr(cfg, f.name) != getattr(saved_cfg, f.name)
        ]
        if changed:
            raise ValueError(
                f"{resume_path}: a resumed run keeps its settings (only {', '.join(RESUMABLE_CHANGES)} may change); "
                f"cannot change {', '.join(changed)}"
            )
    cfg = cfg if cfg is not None else PretrainConfig()
    cfg.validate()
    device = resolve_device(cfg.device)

    data = load_image_folder(data_dir, cfg.img_size, cfg.val_split, cfg.seed)
    classes = data.class_names
    if saved is not None and list(saved["class_names"]) != classes:
        raise ValueError(
            f"{data_dir}: classes {classes[:5]}... differ from the resumed run's {list(saved['class_names'])[:5]}..."
        )
    if len(data.train) < cfg.batch_size:
        raise ValueError(
            f"{data.root}: {len(data.train)} training images, fewer than one batch of {cfg.batch_size}; lower --batch-size"
        )

    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_pretrain_model(cfg.backbone, cfg.width, "none" if saved else cfg.weights, classes)
    model.to(device).to(memory_format=torch.channels_last)

    loader_rng = torch.Generator()
    train_loader = DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,  # a last batch of one image would break batch norm
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        generator=loader_rng,
    )
    val_loader = None
    if data.val is not None:
        val_loader = DataLoader(
            data.val, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers, pin_memory=device.type == "cuda"
        )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    start_epoch, history, best = 1, [], {"epoch": 0, "score": -math.inf}
    if saved is not None:
        try:
            model.load_state_dict(saved["classifier_state"])
        except RuntimeError as e:
            raise RuntimeError(f"{resume_path}: does not fit {cfg.backbone} (width {cfg.width}): {str(e)[:300]}") from None
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch = int(saved["epoch"]) + 1
        history = [dict(r) for r in saved.get("history", []) if r["epoch"] < start_epoch]
        best = dict(saved.get("best", best))
    out_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out_dir / "best.pth", out_dir / "last.pth"

    if progress:
        n_val = len(data.val) if data.val is not None else 0
        start = "resumed at epoch " + str(start_epoch) if saved else f"weights {cfg.weights}"
        print(
            f"pretrain {cfg.backbone} (width {cfg.width}, {start}) on {data.root}: {len(classes)} classes, "
            f"{len(data.train)} train / {n_val} val images, {cfg.img_size} px, {device} -> {out_dir}"
        )
    if start_epoch > cfg.epochs:
        print(f"{last_path}: already trained for {start_epoch - 1} of {cfg.epochs} epochs; raise --epochs to continue")

    for epoch in range(start_epoch, cfg.epochs + 1):
        # Every epoch's randomness (shuffle, crops, flips, dropout) depends on (seed, epoch)
        # only, so a resumed run repeats exactly what an uninterrupted one would have done.
        torch.manual_seed(cfg.seed + epoch)
        loader_rng.manual_seed(cfg.seed + epoch)
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        metrics = train_one_epoch(
            model, train_loader, optimizer, scheduler, criterion, device, cfg.clip_grad,
            desc=f"epoch {epoch}/{cfg.epochs}", progress=progress,
        )  # fmt: skip
        if val_loader is not None:
            metrics.update(evaluate(model, val_loader, device, desc=f"val {epoch}/{cfg.epochs}", progress=progress))
        row = {"epoch": epoch, "lr": lr, **metrics, "seconds": time.perf_counter() - t0}
        history.append(row)
        is_best = _score(metrics) > best["score"]
        if is_best:
            best = {"epoch": epoch, "score": _score(metrics)}
        state = {
            "classifier_state": model.state_dict(),
            "backbone": cfg.backbone,
            "width": cfg.width,
            "class_names": list(classes),
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "metrics": metrics,
            "best": best,
            "history": history,
            "config": to_dict(cfg),
        }
        save_pretrain_checkpoint(state, last_path)
        if is_best:
            save_pretrain_checkpoint(state, best_path)
        write_csv(history, out_dir / "results.csv")
        plot_history(history, out_dir / "results.png")
        if progress:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"epoch {epoch}/{cfg.epochs}: {shown}{'  (best)' if is_best else ''}")
    if progress and best_path.is_file():
        print(f"best epoch {best['epoch']} -> {best_path}\nstart the detector from it: {train_command(cfg, best_path)}")
    return PretrainResult(out_dir, best_path, last_path, list(classes), history, model)


# ----------------------------------------------------------------------------- crops


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


CROPS_MANIFEST = "crops.json"


def _folder_name(class_name: str) -> str:
    """A class name as a folder name: path separators and odd characters become '_'."""
    name = re.sub(r"[^\w\-. +]+", "_", class_name).strip(" .")
    return name or "_"


def make_crops(
    dataset: DetectionDataset,
    out_dir: str | Path,
    cfg: CropConfig | None = None,
    classes: list[str] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write one JPEG per object of ``dataset`` into ``out_dir/<class name>/`` (ImageNet layout)
    and a ``crops.json`` manifest; return the number of crops per class.

    Ignored boxes (COCO crowd, VOC difficult) and boxes smaller than ``cfg.min_size`` are
    skipped; ``classes`` restricts the output to those class names.
    """
    cfg = cfg or CropConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: crop folder exists and is not empty; choose a new folder or delete it")
    if classes is not None:
        unknown = sorted(set(classes) - set(dataset.class_names))
        if unknown:
            raise ValueError(f"classes {', '.join(unknown)} are not in the dataset (it has {', '.join(dataset.class_names)})")
    wanted = set(range(dataset.num_classes)) if classes is None else {dataset.class_names.index(c) for c in classes}

    # Choose the boxes first (cheap, from the annotations), then decode each image once.
    chosen: dict[int, list[tuple[float, int, int]]] = {}  # label -> [(area, record index, box index)]
    for ri, rec in enumerate(dataset.records):
        wh = rec.boxes[:, 2:] - rec.boxes[:, :2]  # (G, 2)
        for bi, label in enumerate(rec.labels.tolist()):
            if label in wanted and not rec.ignore[bi] and wh[bi].min() >= cfg.min_size:
                chosen.setdefault(label, []).append((float(wh[bi, 0] * wh[bi, 1]), ri, bi))
    kept: dict[int, list[tuple[float, int, int]]] = {}
    for label, items in chosen.items():
        if len(items) < cfg.min_per_class:
            continue
        if cfg.max_per_class > 0:
            items = sorted(items, key=lambda t: -t[0])[: cfg.max_per_class]
        kept[label] = items
    if len(kept) < 2:
        raise ValueError(
            f"{dataset.root or 'dataset'}: only {len(kept)} class(es) have {cfg.min_per_class}+ boxes of at least "
            f"{cfg.min_size} px; a classifier needs 2 (lower min_size / min_per_class)"
        )
    folders = {label: _folder_name(dataset.class_names[label]) for label in kept}
    if len(set(folders.values())) != len(folders):
        raise ValueError(f"class names {sorted(folders.values())} collide once made into folder names")

    by_record: dict[int, list[tuple[int, int]]] = {}
    for label, items in kept.items():
        for _, ri, bi in items:
            by_record.setdefault(ri, []).append((bi, label))
    counts = {dataset.class_names[label]: 0 for label in sorted(kept)}
    for label in kept:
        (out_dir / folders[label]).mkdir(parents=True, exist_ok=True)
    for ri in tqdm(sorted(by_record), desc="crops", unit="image", disable=not progress):
        rec = dataset.records[ri]
        img = open_image(rec.image_path)
        for bi, label in by_record[ri]:
            x1, y1, x2, y2 = rec.boxes[bi].tolist()
            mx, my = cfg.margin * (x2 - x1), cfg.margin * (y2 - y1)
            box = (
                max(0, math.floor(x1 - mx)),
                max(0, math.floor(y1 - my)),
                min(img.width, math.ceil(x2 + mx)),
                min(img.height, math.ceil(y2 + my)),
            )
            img.crop(box).save(out_dir / folders[label] / f"{rec.image_id}_{bi}.jpg", quality=cfg.quality)
            counts[dataset.class_names[label]] += 1
    manifest = {
        "source": str(dataset.root) if dataset.root else None,
        "format": dataset.format,
        "settings": to_dict(cfg),
        "counts": counts,
        "folders": {dataset.class_names[k]: v for k, v in sorted(folders.items())},
    }
    (out_dir / CROPS_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return counts


# ----------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    D = PretrainConfig
    p.add_argument("data_dir", nargs="?", help="folder of class subfolders, or with train/ and val/ subfolders of that form")
    p.add_argument("--backbone", default=None, help=f"mobilenet_v1 | mobilenet_v2 | mobilenet_v3_large | mobilenet_v3_small (default: {D.backbone})")
    p.add_argument("--width", type=float, default=None, help=f"width multiplier of MobileNetV1 (default: {D.width})")
    p.add_argument("--weights", default=None, help=f"imagenet | none | PATH to start from (default: {D.weights})")
    p.add_argument("--epochs", type=int, default=None, help=f"default: {D.epochs}")
    p.add_argument("--batch-size", type=int, default=None, help=f"default: {D.batch_size}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"default: {D.optimizer}")
    p.add_argument("--lr", type=float, default=None, help=(
        f"peak learning rate; default for batch {REFERENCE_BATCH} (scaled linearly with --batch-size): "
        + ", ".join(f"{o} {d['pretrained']:g} / {d['scratch']:g}" for o, d in DEFAULT_LR.items())
        + " (from weights / from scratch)"))
    p.add_argument("--weight-decay", type=float, default=None, help=f"default: {DEFAULT_WEIGHT_DECAY['sgd']} sgd, {DEFAULT_WEIGHT_DECAY['adamw']} adamw")
    p.add_argument("--warmup-epochs", type=float, default=None, help=f"default: {D.warmup_epochs}")
    p.add_argument("--label-smoothing", type=float, default=None, help=f"default: {D.label_smoothing}")
    p.add_argument("--clip-grad", type=float, default=None, help=f"max gradient norm, 0 = off (default: {D.clip_grad})")
    p.add_argument("--img-size", type=int, default=None, help=f"default: {D.img_size}")
    p.add_argument("--val-split", type=float, default=None, help=f"held-out fraction when DATA_DIR has no val/ (default: {D.val_split})")
    p.add_argument("--workers", type=int, default=None, help=f"data loading processes (default: {D.workers})")
    p.add_argument("--seed", type=int, default=None, help=f"default: {D.seed}")
    p.add_argument("--device", default=None, help=f"auto | cpu | cuda | cuda:N (default: {D.device})")
    p.add_argument("--out", default=None, help="output folder (default: runs/pretrain/BACKBONE, numbered if taken)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue the run in --out (its last.pth) or from PATH; only --epochs/--workers/--device may change")  # fmt: skip
    g = p.add_argument_group("crops from a detection dataset")
    C = CropConfig
    g.add_argument("--from-detection", metavar="SOURCE", help="detection dataset (COCO json, VOC or YOLO folder) whose object crops are the classes")
    g.add_argument("--from-split", default="train", help="split of SOURCE to crop; keep the detector's val/test images out (default: train)")
    g.add_argument("--crops-out", metavar="DIR", help="where the crop folder is written (default: OUT/crops); an existing crop folder is reused")
    g.add_argument("--classes", nargs="+", metavar="NAME", help="only these classes of the detection dataset")
    g.add_argument("--min-crop", type=int, default=C.min_size, help=f"skip boxes smaller than this many pixels (default: {C.min_size})")
    g.add_argument("--crop-margin", type=float, default=C.margin, help=f"context around each box, fraction of its size (default: {C.margin})")
    g.add_argument("--min-per-class", type=int, default=C.min_per_class, help=f"drop classes with fewer crops (default: {C.min_per_class})")
    g.add_argument("--max-per-class", type=int, default=C.max_per_class, help="keep at most this many crops per class, largest first (default: all)")
    g.add_argument("--crops-only", action="store_true", help="write the crop folder and stop")


CONFIG_ARGS = tuple(f.name for f in fields(PretrainConfig))


def _next_free(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... the first that holds no run yet."""
    candidate, n = base, 1
    while (candidate / "last.pth").exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _crops_from_detection(args: argparse.Namespace, out_dir: Path) -> Path:
    crops = Path(args.crops_out) if args.crops_out else out_dir / "crops"
    if (crops / CROPS_MANIFEST).is_file():
        print(f"using the existing crops in {crops} ({CROPS_MANIFEST} found)")
        return crops
    dataset = load_dataset(args.from_detection, args.from_split)
    cfg = CropConfig(
        min_size=args.min_crop, margin=args.crop_margin, min_per_class=args.min_per_class, max_per_class=args.max_per_class
    )
    counts = make_crops(dataset, crops, cfg, classes=args.classes)
    print(f"{sum(counts.values())} crops of {len(counts)} classes -> {crops}")
    return crops


def run(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in CONFIG_ARGS if getattr(args, name, None) is not None}
    saved_path = None
    if args.resume:
        if args.resume is not True:
            saved_path = Path(args.resume)
        elif args.out:
            saved_path = Path(args.out) / "last.pth"
        else:
            raise ValueError("--resume needs --out (the run's folder) or the path of its last.pth")
        # The saved settings, with what the command line gives on top (pretrain() refuses
        # changes other than epochs / workers / device).
        saved_config = load_pretrain_checkpoint(saved_path)["config"]
        cfg = from_dict(PretrainConfig, {**saved_config, **given}, "config")
        out_dir = Path(args.out) if args.out else saved_path.parent
    else:
        cfg = PretrainConfig(**given)
        if args.out:
            out_dir = Path(args.out)
            if (out_dir / "last.pth").exists():
                raise ValueError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
        else:
            name = cfg.backbone if cfg.width == 1.0 else f"{cfg.backbone}_{cfg.width:g}"
            out_dir = _next_free(Path("runs") / "pretrain" / name)

    if args.from_detection:
        if args.data_dir:
            raise ValueError("give either DATA_DIR or --from-detection SOURCE, not both")
        data_dir = _crops_from_detection(args, out_dir)
        if args.crops_only:
            return 0
    elif args.data_dir:
        if args.crops_only:
            raise ValueError("--crops-only needs --from-detection SOURCE")
        data_dir = Path(args.data_dir)
    else:
        raise ValueError("give DATA_DIR (a folder of class subfolders) or --from-detection SOURCE")

    pretrain(data_dir, cfg, out_dir, resume=saved_path or False)
    return 0
