"""Validation during training: the EMA weights' batch-norm statistics recomputed on a fixed
set of training images (precise BN, train.precise_bn), then their COCO metrics on the
validation split and, from the same detections, the confidence threshold with the best F1
(evaluation/threshold.py); from the same forward pass, the training loss on the split (the
model in eval mode, letterboxed images without augmentation, no gradient), so the curves
show when the model starts to overfit. The epoch that writes best.pt stores that threshold in it, so
it always belongs to best.pt's weights; a best.pt that lacks one (a run saved before
thresholds) gets it at the end of training from one more pass over the split. Early
stopping (train.patience) is decided on the same validation AP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config.evaluation import EvalConfig
from .data.dataset import DetectionDataset, Record
from .data.labels import CROWD_LABEL, PAD_LABEL
from .evaluation import score_detections
from .evaluation.loop import LetterboxedImages, OutputsHook, label_mapping, predict_dataset, remap_labels, score_floor
from .evaluation.threshold import F1Threshold, threshold_on
from .history import LOSS_KEYS
from .losses import DetectionLoss
from .postprocess import Detections
from .run_state import FITNESS_KEY, threshold_entries
from .runtime import batches


@dataclass
class Validation:
    """One validation of the EMA weights."""

    metrics: dict[str, float]
    """The 12 COCO numbers."""
    threshold: F1Threshold
    """The F1-best confidence threshold of the same detections."""
    losses: dict[str, float] = field(default_factory=dict)
    """The training loss on the split: loss, cls, box, each a mean per image."""
    per_class: list[dict[str, Any]] = field(default_factory=list)
    """The per-class table (AP, AP50, ... per class) of the same evaluation."""
    detections: list[Detections] = field(default_factory=list)
    """One per validation image, labels in the dataset's."""


class _OwnCount:
    """The model's loss, normalised by each batch's own foreground count: what the loss
    does in eval mode, without the count's all-reduce under torchrun (validation runs in
    the main process alone)."""

    def __init__(self, criterion: DetectionLoss):
        self._criterion = criterion

    def __getattr__(self, name: str) -> Any:
        return getattr(self._criterion, name)

    @staticmethod
    def normalizer(num_fg: Tensor) -> Tensor:
        return num_fg.clamp(min=1.0)


def targets(records: Sequence[Record], scales: Tensor) -> tuple[Tensor, Tensor]:
    """Padded boxes (N, G, 4) in letterboxed input pixels and labels (N, G) (CROWD_LABEL for
    an ignore region, PAD_LABEL for padding) of records letterboxed by ``scales`` (N,)."""
    g = max([len(r.labels) for r in records] + [0])
    boxes, labels = torch.zeros(len(records), g, 4), torch.full((len(records), g), PAD_LABEL, dtype=torch.long)
    for i, (r, scale) in enumerate(zip(records, scales.tolist())):
        k = len(r.labels)
        boxes[i, :k] = torch.from_numpy(np.asarray(r.boxes, np.float32).reshape(-1, 4)) * scale
        labels[i, :k] = torch.from_numpy(np.where(np.asarray(r.ignore, bool), CROWD_LABEL, np.asarray(r.labels))).long()
    return boxes, labels


class LossMeter:
    """An OutputsHook: sums the loss of each validation batch; ``means()`` per image."""

    def __init__(self, model: torch.nn.Module, records: Sequence[Record]):
        self.model, self.records = model, records
        self.sums, self.seen = dict.fromkeys(LOSS_KEYS, 0.0), 0

    def __call__(self, start: int, outputs: tuple[Tensor, Tensor], image_hw: tuple[int, int], scales: Tensor) -> None:
        n = outputs[0].shape[0]
        device = outputs[0].device
        boxes, labels = targets(self.records[start : start + n], scales)
        anchors, counts = self.model.anchors(image_hw)
        losses = DetectionLoss.forward(_OwnCount(self.model.criterion), *outputs, anchors, boxes.to(device), labels.to(device), counts)
        for k in self.sums:
            self.sums[k] += float(losses[k]) * n
        self.seen += n

    def means(self) -> dict[str, float]:
        return {k: v / self.seen for k, v in self.sums.items()} if self.seen else {}


def trained_norms(model: torch.nn.Module) -> set[str]:
    """Names of ``model``'s batch norms in training mode (a frozen backbone's are not)."""
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training}


def recalibrate_bn(model: torch.nn.Module, records: Sequence[Record], images: int, cfg: EvalConfig, names: set[str]) -> int:
    """Precise batch norm (Wu and Johnson 2021, "Rethinking 'Batch' in BatchNorm"): the running
    statistics of ``model``'s batch norms named in ``names`` become the mean of their batch
    statistics over ``images`` training images (each batch weighted by its image count),
    picked evenly across ``records`` and letterboxed as validation sees them; no weight
    changes. Running averages lag weights that move fast: on aquarium after two epochs
    they made the validation class loss 14.5 where the same weights score 0.94 with
    recomputed statistics. On an error the statistics are put back. Returns the number of
    images used (0: nothing to do)."""
    norms = [m for n, m in model.named_modules() if n in names and isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    k = min(images, len(records))
    if not norms or k < 2:  # one image: a 1x1 level has a single value per channel
        return 0
    picked = [records[i * len(records) // k] for i in range(k)]
    chunks = [list(range(i, min(i + cfg.batch_size, k))) for i in range(0, k, cfg.batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:  # no batch of one image (see above)
        lone = chunks.pop()
        chunks[-1] += lone
    # Its own generator: the loader's seed draw leaves the training's random state alone.
    loader = torch.utils.data.DataLoader(
        LetterboxedImages(picked, model.cfg.input_size), batch_sampler=chunks, num_workers=cfg.workers, generator=torch.Generator()
    )
    device = next(model.parameters()).device
    was_training = model.training
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    seen = 0
    model.eval()
    for m in norms:
        m.train()
    done = False
    try:
        with torch.no_grad():
            for batch, _, _ in batches(loader):
                for m in norms:  # running = (seen * running + n * batch) / (seen + n); the first batch replaces
                    m.momentum = len(batch) / (seen + len(batch))
                model(batch.to(device))
                seen += len(batch)
        done = True
    finally:
        for m, (momentum, mean, var, count) in zip(norms, saved):
            m.momentum = momentum
            if not done:
                for buffer, value in ((m.running_mean, mean), (m.running_var, var), (m.num_batches_tracked, count)):
                    buffer.copy_(value)
        model.train(was_training)
    return k


def _detections(
    model: torch.nn.Module, dataset: DetectionDataset, cfg: EvalConfig, progress: bool, on_outputs: OutputsHook | None = None
) -> list:
    """The model's detections of every validation image, labels in the dataset's."""
    found = predict_dataset(model, dataset.records, cfg, progress, on_outputs)
    return remap_labels(found, label_mapping(model.class_names, dataset))


def validate(model: torch.nn.Module, dataset: DetectionDataset, cfg: EvalConfig, progress: bool) -> Validation:
    """COCO metrics of ``model`` on ``dataset``, the F1-best threshold of the same
    detections and the training loss on the split."""
    meter = LossMeter(model, dataset.records)
    detections = _detections(model, dataset, cfg, progress, meter)
    report = score_detections(dataset, detections, cfg, plots=False)
    found = threshold_on(dataset.records, detections, floor=score_floor(model, cfg))
    return Validation(report.metrics, found, meter.means(), report.per_class, detections)


def add_threshold(best: Path, dataset: DetectionDataset, cfg: EvalConfig, device: torch.device, progress: bool) -> dict[str, Any]:
    """best.pt's state, with a threshold computed from its weights on ``dataset`` (and
    written back, atomically) when it has none yet."""
    state = load_checkpoint(best)
    if "conf_threshold" in state:
        return state
    model = model_from_checkpoint(state).to(device)
    found = threshold_on(dataset.records, _detections(model, dataset, cfg, progress), floor=score_floor(model, cfg))
    state = {**state, **threshold_entries(found)}
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, best)
    return state


def threshold_line(state: dict[str, Any], path: Path) -> str:
    """What to print about best.pt's confidence threshold."""
    if "conf_threshold" not in state:
        return f"{path}: no confidence threshold (no validation split to choose one on)"
    t, stats = state["conf_threshold"], state.get("conf_threshold_f1") or {}
    if t is None:
        return f"{path}: no confidence threshold: no detection matched a validation box; predict keeps its default"
    return (
        f"confidence threshold {t:.3f}: F1 {stats.get('f1', 0.0):.3f} (precision {stats.get('precision', 0.0):.3f}, "
        f"recall {stats.get('recall', 0.0):.3f}) over all classes at IoU {stats.get('iou', 0.5):g} on the validation split; "
        f"stored in {path} as conf_threshold"
    )


def final_best(trainer: Any) -> dict[str, Any]:
    """At the end of training (rank 0): best.pt's state, its threshold added if it lacks
    one and there is a validation split, and the threshold printed."""
    best = trainer.folder.best
    if trainer.val_data is None:
        return load_checkpoint(best)
    state = add_threshold(best, trainer.val_data, trainer.eval_config, trainer.device, trainer.progress)
    tqdm.write(threshold_line(state, best))
    return state


def out_of_patience(trainer: Any) -> bool:
    """Whether the validation AP has not improved for train.patience epochs (decided by
    rank 0, where validation runs, for every process); sets ``trainer.stopped`` and says so."""
    reason = [patience_reason(trainer) if trainer.dist.is_main else ""]
    if trainer.dist.enabled:
        dist.broadcast_object_list(reason, src=0)
    trainer.stopped = reason[0]
    if trainer.stopped and trainer.dist.is_main:
        tqdm.write(trainer.stopped)
    return bool(trainer.stopped)


def patience_reason(trainer: Any) -> str:
    """Why the run stops now (train.patience epochs since the best validation AP, counted
    at a validated epoch), or '' to go on."""
    t, history = trainer.cfg.train, trainer.history
    if t.patience <= 0 or not history or f"val_{FITNESS_KEY}" not in history[-1]:
        return ""
    # Epochs since the best, or since a resume that extended the run (run_state.replan).
    waited = trainer.epoch - max(trainer.best_epoch, getattr(trainer, "patience_from", 0))
    if waited < t.patience:
        return ""
    return (
        f"stopped early after epoch {trainer.epoch}/{t.epochs}: the validation {FITNESS_KEY} has not improved for "
        f"{waited} epochs (train.patience={t.patience}); best {FITNESS_KEY} {trainer.best_fitness:.3f} at epoch {trainer.best_epoch}"
    )
