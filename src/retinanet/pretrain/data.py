"""The classification data of pretraining: a folder of class-named subfolders (ImageNet
layout, read by torchvision's ImageFolder), split into training and validation images,
with ImageNet-style transforms."""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from ..data.images import open_image
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

# Eval resize: the centre crop covers 87.5% of the shorter side (the ImageNet convention, 224 of 256).
EVAL_CROP_FRACTION = 0.875


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

