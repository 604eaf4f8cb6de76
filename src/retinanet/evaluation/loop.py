"""Running a detector over a dataset's images, batched as training validates: one
Detections per record, in original pixels, and the model's labels mapped to the dataset's."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from ..config.evaluation import EvalConfig
from ..config.model import PostprocessConfig
from ..data.dataset import DetectionDataset, Record
from ..data.images import read_image
from ..postprocess import Detections
from ..preprocess import letterbox
from ..runtime import batches


class LetterboxedImages(torch.utils.data.Dataset):
    """Decodes and letterboxes one record's image (in a DataLoader worker when workers > 0)."""

    def __init__(self, records: Sequence[Record], size: int):
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        batch, scales, sizes = letterbox([read_image(self.records[i].image_path)], self.size)
        return batch[0], scales[0], sizes[0]  # (3, S, S), (), (2,) as (H, W)


def _size_mismatches(records: Sequence[Record], sizes: Tensor) -> list[str]:
    """Records whose image decoded (sizes (N, 2) as (H, W)) to another size than annotated."""
    return [
        f"{rec.image_path} ({w}x{h} decoded, {rec.width}x{rec.height} annotated)"
        for rec, (h, w) in zip(records, sizes.tolist())
        if (h, w) != (rec.height, rec.width)
    ]


def _postprocess_config(model: torch.nn.Module, cfg: EvalConfig) -> PostprocessConfig:
    """The model's post-processing with cfg.conf as score threshold and cfg.agnostic as its
    NMS mode (when set), for this run only."""
    changes: dict[str, object] = {}
    if cfg.conf is not None:
        changes["score_thresh"] = cfg.conf
    if cfg.agnostic is not None:
        changes["agnostic"] = cfg.agnostic
    return dataclasses.replace(model.cfg.postprocess, **changes)  # type: ignore[arg-type]


# Called with each batch's first record index, the model's raw outputs, the input (H, W)
# and the scales (N,): training's validation computes its loss from the same forward pass.
OutputsHook = Callable[[int, tuple[Tensor, Tensor], tuple[int, int], Tensor], None]


def score_floor(model: torch.nn.Module, cfg: EvalConfig) -> float:
    """The lowest score a detection of this evaluation can have."""
    return cfg.conf if cfg.conf is not None else model.cfg.postprocess.score_thresh


def predict_dataset(
    model: torch.nn.Module,
    records: Sequence[Record],
    cfg: EvalConfig | None = None,
    progress: bool = True,
    on_outputs: OutputsHook | None = None,
) -> list[Detections]:
    """Run ``model`` (a RetinaNet) over the records' images; one Detections per record,
    boxes in original pixels, on the CPU, labels in the model's 0..K-1. The model's
    training mode is restored and its config left unchanged. ``on_outputs`` sees every
    batch's raw outputs (under no_grad, the model in eval mode)."""
    cfg = cfg or EvalConfig()
    if cfg.batch_size < 1 or cfg.workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {cfg.batch_size} and {cfg.workers}")
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        LetterboxedImages(records, model.cfg.input_size),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    post = _postprocess_config(model, cfg)
    detections: list[Detections] = []
    mismatched: list[str] = []
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: the model caches anchors, and inference tensors in that
        # cache would break later in-place use of them (training continues on this model).
        bar = tqdm(total=len(records), desc="eval", unit="img", disable=not progress)
        with torch.no_grad(), bar:
            for images, scales, sizes in batches(loader):  # (N, 3, S, S), (N,), (N, 2)
                mismatched += _size_mismatches(records[len(detections) : len(detections) + len(images)], sizes)
                images = images.to(device, non_blocking=True)
                image_hw = tuple(images.shape[-2:])
                outputs = model(images)
                if on_outputs is not None:
                    on_outputs(len(detections), outputs, image_hw, scales)
                out = model.postprocess(outputs, image_hw, scales.to(device), sizes.to(device), post=post)
                detections.extend(Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in out)
                bar.update(len(images))
    finally:
        model.train(was_training)
    if mismatched:
        warnings.warn(
            f"{len(mismatched)} image(s) decode to a size other than the annotation's, so boxes may not line up: "
            + "; ".join(mismatched[:3]),
            stacklevel=2,
        )
    return detections


def label_mapping(model_names: Sequence[str], dataset: DetectionDataset) -> list[int]:
    """Dataset label of each model label, matched by class name.

    A model with the same class list maps one to one; a model whose classes are a subset
    of the dataset's maps by name; an unnamed model (names '0'..'K-1', e.g. freshly built)
    with as many classes as the dataset maps one to one. Anything else raises ValueError.
    """
    names = list(dataset.class_names)
    model_names = list(model_names)
    if model_names == names:
        return list(range(len(names)))
    index = {n: i for i, n in enumerate(names)}
    if all(n in index for n in model_names):
        return [index[n] for n in model_names]
    if model_names == [str(i) for i in range(len(model_names))] and len(model_names) == len(names):
        return list(range(len(names)))
    missing = [n for n in model_names if n not in index]
    raise ValueError(
        f"the model's classes do not match the dataset's: {len(missing)} model class(es) not in the dataset "
        f"({', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}); dataset classes: "
        f"{', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''}"
    )


def remap_labels(detections: Iterable[Detections], mapping: Sequence[int]) -> list[Detections]:
    """Detections with label l replaced by mapping[l] (e.g. model labels -> dataset labels)."""
    lut = torch.as_tensor(list(mapping), dtype=torch.long)
    return [Detections(d.boxes, d.scores, lut[d.labels.long()]) for d in detections]
