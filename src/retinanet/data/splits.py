"""Which splits a training run reads: the training split, and the split it validates on."""

from __future__ import annotations

from ..config import DataConfig
from .dataset import DetectionDataset
from .spec import available_splits, load_dataset
from .synthetic import load_synthetic


def load_split(data: DataConfig, split: str, progress: bool = True) -> DetectionDataset:
    """One split of the training source: the built-in synthetic set or a dataset on disk."""
    source = data.source
    if source == "synthetic":
        return load_synthetic(split, seed=0, progress=progress)
    return load_dataset(source, split=split, check=True, drop_bad=data.drop_bad,
                        allow_outside_root=data.allow_outside_root, progress=progress)


HOLDOUT = "holdout"  # resolve_val_split's answer when the validation images come out of train


def resolve_val_split(data: DataConfig) -> str | None:
    """The split to validate on: a named one, None for 'none', or for 'auto' the source's
    val split and else HOLDOUT (a part of the training split). A test split is never
    chosen: best.pt would then be picked on the data the model is judged on."""
    name = data.val_split
    if name.lower() == "none":
        return None
    if name != "auto":
        return name
    if data.source == "synthetic":
        return "val"
    for split in available_splits(data.source):
        if split.lower().startswith("val"):
            return split
    return HOLDOUT


def hold_out(train: DetectionDataset, fraction: float) -> tuple[DetectionDataset, DetectionDataset]:
    """(train, val): every round(1 / fraction)-th image by file name goes to val, so the
    same images are held out in every run, whatever the seed."""
    if not 0 < fraction < 1:
        raise ValueError(f"data.holdout must be between 0 and 1, got {fraction}")
    step = max(2, round(1 / fraction))
    ordered = sorted(train.records, key=lambda r: (r.image_path.name, str(r.image_path)))
    held = {id(r) for i, r in enumerate(ordered) if i % step == step - 1}
    if not held or len(held) == len(ordered):
        raise ValueError(f"{len(ordered)} training images are too few to hold out a validation part; set data.val_split")
    kept = [r for r in train.records if id(r) not in held]
    val = [r for r in train.records if id(r) in held]
    return (
        DetectionDataset(kept, train.class_names, train.category_ids, train.root, train.format, report=train.report),
        DetectionDataset(val, train.class_names, train.category_ids, train.root, train.format),
    )


def choose_validation(
    train: DetectionDataset, data: DataConfig, load: bool = True, progress: bool = True
) -> tuple[DetectionDataset, DetectionDataset | None, str | None]:
    """(training set, validation set, what to tell the user) for ``data.val_split``. With
    ``load`` False (the other processes of a torchrun) a named split is not read, but a
    held-out part is still taken out of train, so every process trains on the same images."""
    split = resolve_val_split(data)
    if split is None:
        return train, None, None
    if split != HOLDOUT:
        return train, load_split(data, split, progress) if load else None, None
    try:
        kept, held = hold_out(train, data.holdout)
    except ValueError:
        return train, train, (
            f"warning: {data.source} has no val split and its {len(train)} training images are too few to hold "
            "some out; validating on the training images (the scores will be optimistic; set data.val_split)"
        )
    return kept, held, (
        f"{data.source} has no val split: validating on {len(held)} of the training images, held out by file "
        f"name (data.holdout={data.holdout:g}); a test split is never used to pick best.pt"
    )


def saved_val_split(data: DataConfig) -> str:
    """The split a run saved before held-out validation existed validated on ('auto' then
    meant val, else test, else the training images), so that it resumes on the same images."""
    if data.val_split != "auto" or data.source == "synthetic":
        return data.val_split
    splits = available_splits(data.source)
    for prefix in ("val", "test"):
        for split in splits:
            if split.lower().startswith(prefix):
                return split
    return data.train_split

