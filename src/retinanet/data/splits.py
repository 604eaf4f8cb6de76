"""Which splits a training run reads: the training split, and the split it validates on."""

from __future__ import annotations

from tqdm import tqdm

from ..config import DataConfig
from .dataset import DetectionDataset
from .spec import available_splits, load_dataset
from .synthetic import load_synthetic


def load_split(data: DataConfig, split: str, progress: bool = True) -> DetectionDataset:
    """One split of the training source: the built-in synthetic set or a dataset on disk."""
    source = data.source
    if source == "synthetic":
        return load_synthetic(split, seed=0, progress=progress)
    return load_dataset(source, split=split, check=True, drop_bad=data.drop_bad, progress=progress)


def resolve_val_split(data: DataConfig) -> str | None:
    """The split to validate on; 'auto' prefers a val split, then a test split, and falls
    back (with a warning) to the training images when the source defines neither."""
    name = data.val_split
    if name.lower() == "none":
        return None
    if name != "auto":
        return name
    if data.source == "synthetic":
        return "val"
    splits = available_splits(data.source)
    for prefix in ("val", "test"):
        for split in splits:
            if split.lower().startswith(prefix):
                return split
    tqdm.write(
        f"warning: {data.source} defines no val or test split; validating on the training images "
        "(the scores will be optimistic; set data.val_split)"
    )
    return data.train_split
