"""Training: optimiser, schedule, EMA, mixed precision, checkpoints, resume, torchrun.

The loop knows the model only through ``model(images)`` -> raw outputs,
``model.loss(outputs, image_hw, boxes, labels)`` -> dict of losses and
``model.freeze_backbone(flag)``; data comes as ``Batch`` objects from data/loader.py.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, RunConfig, TrainConfig, from_dict, save_yaml, to_dict
from .data.dataset import DetectionDataset
from .model import RetinaNet

FITNESS_KEY = "AP"  # checkpoint "best" = highest COCO AP@[.5:.95] on the validation split


# ----------------------------------------------------------------------------- processes and devices


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> Dist:
    """Join the process group torchrun describes in the environment (a no-op without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local)


def resolve_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available on this machine")
    if device.type == "cuda" and d.enabled:
        device = torch.device(f"cuda:{d.local_rank}")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision. 'auto' uses bf16 where the hardware has
    it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), and full precision elsewhere."""
    if mode == "off":
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA; use bf16 or off on a CPU")
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode != "auto":
        raise ValueError(f"train.amp must be auto, off, bf16 or fp16, not {mode!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None  # measured: bf16 autocast is slower than fp32 for depthwise convs on CPU (see BENCHMARKS.md)


# ----------------------------------------------------------------------------- optimiser, schedule, EMA


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv / linear weights only: decaying norms and biases only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', not {cfg.optimizer!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, warmup_factor: float, min_ratio: float) -> float:
    """Linear warmup from warmup_factor to 1, then cosine decay from 1 to min_ratio."""
    if step < warmup_steps:
        return warmup_factor + (1 - warmup_factor) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def ema_avg_fn(decay: float, tau: float) -> Callable:
    """multi_avg_fn for AveragedModel: EMA whose decay ramps up as decay * (1 - exp(-n / tau))
    (as YOLOv5 / timm do), so the average is usable after the first epochs; integer
    buffers (batch norm counters) are copied."""

    def fn(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        d = decay * (1 - math.exp(-float(num_averaged) / tau))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return fn


# ----------------------------------------------------------------------------- data


def load_split(cfg: RunConfig, split: str, progress: bool = True) -> DetectionDataset:
    source = cfg.data.source
    if source == "synthetic":
        from .data.synthetic import load_synthetic

        return load_synthetic(split, seed=0, progress=progress)
    from .data import load_dataset

    return load_dataset(source, split=split, check=True, drop_bad=cfg.data.drop_bad, progress=progress)


def resolve_val_split(cfg: RunConfig) -> str | None:
    """The split to validate on; 'auto' prefers a val split, then a test split, and falls
    back (with a warning) to the training images when the source defines neither."""
    name = cfg.data.val_split
    if name.lower() == "none":
        return None
    if name != "auto":
        return name
    if cfg.data.source == "synthetic":
        return "val"
    from .data import available_splits

    splits = available_splits(cfg.data.source)
    for prefix in ("val", "test"):
        for split in splits:
            if split.lower().startswith(prefix):
                return split
    tqdm.write(
        f"warning: {cfg.data.source} defines no val or test split; validating on the training images "
        "(the scores will be optimistic; set data.val_split)"
    )
    return cfg.data.train_split


def resolve_workers(n: int) -> int:
    if n >= 0:
        return n
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


def next_run_dir(out: str, name: str) -> Path:
    base = Path(out)
    if name:
        return base / name
    n = 1
    while (base / ("exp" if n == 1 else f"exp{n}")).exists():
        n += 1
    return base / ("exp" if n == 1 else f"exp{n}")


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_dir: Path
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    images_per_second: float = 0.0


class NonFiniteLossError(RuntimeError):
    pass


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [int(x) if not isinstance(x, np.ndarray) else x.tolist() for x in np.random.get_state()[1:]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run. ``fit()`` trains to ``cfg.train.epochs``; ``Trainer.resume(run_dir)``
    rebuilds a run from its last checkpoint and continues it exactly."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path | None = None,
        progress: bool = True,
        on_step: Callable[[Trainer], None] | None = None,
        train_data: DetectionDataset | None = None,
        val_data: DetectionDataset | None = None,
        load_backbone_weights: bool = True,
    ):
        self.cfg = cfg
        self.progress = progress
        self.on_step = on_step  # called after every optimiser step (tests use it to interrupt)
        t = cfg.train
        self.dist = setup_distributed(t.device)
        self.device = resolve_device(t.device, self.dist)
        self.amp = amp_dtype(t.amp, self.device)
        seed_everything(t.seed)

        main = self.dist.is_main
        # Rank 0 reads (and for the synthetic set, renders) the data first; the others follow.
        if main or train_data is not None:
            self.train_data = train_data or load_split(cfg, cfg.data.train_split, progress)
        self._barrier()
        if not main and train_data is None:
            self.train_data = load_split(cfg, cfg.data.train_split, progress=False)
        self.val_data = val_data
        val_split = resolve_val_split(cfg) if val_data is None and main else None
        if val_split is not None:
            self.val_data = load_split(cfg, val_split, progress)
        if len(self.train_data) == 0:
            raise ValueError(f"{cfg.data.source}: split {cfg.data.train_split!r} has no images")

        cfg.model.num_classes = self.train_data.num_classes
        model_cfg = copy.deepcopy(cfg.model)
        if not load_backbone_weights:
            model_cfg.backbone.weights = "checkpoint"  # a checkpoint will supply every weight
        self.model = RetinaNet(
            model_cfg, class_names=self.train_data.class_names, category_ids=self.train_data.category_ids
        ).to(self.device)
        if t.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = build_optimizer(self.model, t)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_avg_fn(t.ema_decay, t.ema_tau), use_buffers=True)
            if t.ema_decay > 0
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

        from .data.loader import build_loader

        self.loader = build_loader(
            self.train_data,
            cfg.model.input_size,
            train=True,
            batch_size=t.batch_size,
            workers=resolve_workers(cfg.data.workers),
            seed=t.seed,
            augment=cfg.data.augment,
            distributed=self.dist.enabled,
            drop_last=len(self.train_data) >= t.batch_size * self.dist.world_size,
        )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.warmup_steps = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, self.total_steps, self.warmup_steps, t.warmup_factor, t.min_lr_ratio),
        )
        self.epoch = 0  # completed epochs
        self.step = 0  # optimiser steps taken
        self.best_fitness = -1.0
        self.history: list[dict[str, float]] = []
        self.run_dir = self._make_run_dir(run_dir)
        self.ddp: nn.Module = self.model
        self._wrap()
        if main:
            self._report_data()

    def _report_data(self) -> None:
        """Say what the data checks fixed or warned about, and keep the full reports."""
        for split, ds in (("train", self.train_data), ("val", self.val_data)):
            report = getattr(ds, "report", None) if ds is not None else None
            if report is None:
                continue
            (self.run_dir / f"data_{split}.txt").write_text(report.to_text())
            notes = [i for i in report.issues if i.level != "error"]
            if report.dropped_images or report.dropped_boxes:
                tqdm.write(f"data {split}: dropped {report.dropped_images} images and {report.dropped_boxes} boxes")
            for issue in notes[:5]:
                tqdm.write(f"data {split}: {issue.level}: {issue.file}: {issue.reason}")
            if len(notes) > 5:
                tqdm.write(f"data {split}: ... {len(notes) - 5} more in {self.run_dir / f'data_{split}.txt'}")

    # -- helpers

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    def _make_run_dir(self, run_dir: Path | None) -> Path:
        path = [str(run_dir or next_run_dir(self.cfg.train.out, self.cfg.train.name))]
        if self.dist.enabled:
            dist.broadcast_object_list(path, src=0)
        out = Path(path[0])
        if self.dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_yaml(self.cfg, out / "config.yaml")
        return out

    def _wrap(self) -> None:
        """(Re)wrap in DDP: needed again whenever the set of trainable parameters changes."""
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    @property
    def eval_model(self) -> RetinaNet:
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints

    def state(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_fitness": self.best_fitness,
            "history": self.history,
            "rng": _rng_state(),
            "config": to_dict(self.cfg),
            "class_names": self.model.class_names,
            "category_ids": self.model.category_ids,
            "metrics": metrics,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(state.get("ema_updates", 0))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_fitness = float(state.get("best_fitness", -1.0))
        self.history = list(state.get("history") or [])
        _set_rng_state(state["rng"])

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs: Any) -> Trainer:
        run_dir = Path(run_dir)
        ckpt = run_dir / "last.pt" if run_dir.is_dir() else run_dir
        state = load_checkpoint(ckpt)
        raw = state["config"]
        cfg = RunConfig(
            model=from_dict(ModelConfig, raw["model"], "model"),
            data=from_dict(type(RunConfig().data), raw["data"], "data"),
            train=from_dict(TrainConfig, raw["train"], "train"),
        )
        trainer = cls(cfg, run_dir=ckpt.parent, load_backbone_weights=False, **kwargs)
        trainer.load_state(state)
        return trainer

    # -- training

    def _log_csv(self, row: dict[str, float]) -> None:
        from .evaluate import METRIC_NAMES

        path = self.run_dir / "results.csv"
        new = not path.exists()
        columns = [k for k in row if not k.startswith("val_")] + [f"val_{k}" for k in METRIC_NAMES]
        with open(path, "a", newline="") as f:
            # Fixed columns: epochs that skip validation leave the val_ fields empty.
            w = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def train_one_epoch(self) -> dict[str, float]:
        t, model = self.cfg.train, self.ddp
        frozen = self.epoch < t.freeze_backbone_epochs
        if getattr(self.model, "backbone_frozen", False) != frozen:
            self.model.freeze_backbone(frozen)
            self._wrap()
        self.model.train()
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        sums = {"loss": 0.0, "cls": 0.0, "box": 0.0}
        seen, bad_run, skipped = 0, 0, 0
        start = time.perf_counter()
        bar = tqdm(
            self.loader,
            desc=f"epoch {self.epoch + 1}/{t.epochs}",
            disable=not (self.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        for batch in bar:
            batch = batch.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                outputs = model(batch.images)
            losses = self.model.loss(outputs, batch.images.shape[-2:], batch.boxes, batch.labels)
            self.optimizer.zero_grad(set_to_none=True)
            # Backward even on a bad loss: under DDP every process must join the all-reduce.
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
            bad = torch.tensor(float(not (torch.isfinite(losses["loss"]) and torch.isfinite(norm))))
            if self.dist.enabled:
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            if bad.item() > 0:
                # Never train on NaN/inf: skip the step, and stop if it keeps happening.
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.update()
                bad_run += 1
                skipped += 1
                if bad_run >= t.max_nonfinite:
                    raise NonFiniteLossError(
                        f"training diverged: {bad_run} consecutive steps with a non-finite loss or gradient "
                        f"(epoch {self.epoch + 1}, step {self.step}, lr {self.optimizer.param_groups[0]['lr']:.2e}); "
                        "lower train.lr, raise train.warmup_epochs or check the data with `retinanet check-data`"
                    )
                continue
            bad_run = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            n = batch.images.shape[0]
            seen += n
            for k in sums:
                sums[k] += float(losses[k].detach()) * n
            rate = seen * self.dist.world_size / (time.perf_counter() - start)
            bar.set_postfix(
                loss=f"{sums['loss'] / seen:.3f}",
                cls=f"{sums['cls'] / seen:.3f}",
                box=f"{sums['box'] / seen:.3f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{rate:.1f}",
            )
            if self.on_step is not None:
                self.on_step(self)
        elapsed = time.perf_counter() - start
        means = {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}
        if self.dist.enabled:  # average over processes for the log
            vec = torch.tensor([means[k] for k in means] + [float(seen)])
            dist.all_reduce(vec)
            means = {k: float(v) / self.dist.world_size for k, v in zip(means, vec[:-1])}
            seen = int(vec[-1])
        else:
            seen = seen
        return {
            **means,
            "lr": self.optimizer.param_groups[0]["lr"],
            "skipped_steps": float(skipped),
            "images_per_second": seen / max(elapsed, 1e-9),
        }

    def validate(self, out_dir: Path | None = None, plots: bool = False) -> dict[str, float]:
        if self.val_data is None or not self.dist.is_main:
            return {}
        from .evaluate import evaluate

        return evaluate(
            self.eval_model,
            self.val_data,
            batch_size=self.cfg.train.batch_size,
            workers=resolve_workers(self.cfg.data.workers),
            out_dir=out_dir,
            plots=plots,
            progress=self.progress,
        )

    def fit(self) -> TrainResult:
        t = self.cfg.train
        last_metrics: dict[str, float] = {}
        rate = 0.0
        while self.epoch < t.epochs:
            stats = self.train_one_epoch()
            rate = stats["images_per_second"]
            self.epoch += 1
            do_eval = self.epoch % t.eval_every == 0 or self.epoch == t.epochs
            metrics = self.validate() if do_eval else {}
            if self.dist.is_main:
                last_metrics = metrics or last_metrics
                row = {"epoch": self.epoch, **stats, **{f"val_{k}": v for k, v in metrics.items()}}
                self.history.append(row)
                self._log_csv(row)
                fitness = metrics.get(FITNESS_KEY, -1.0) if metrics else -1.0
                improved = bool(metrics) and fitness > self.best_fitness
                if improved:
                    self.best_fitness = fitness
                state = self.state(metrics)
                save_checkpoint(state, self.run_dir / "last.pt")
                if improved or (self.val_data is None and self.epoch == t.epochs):
                    save_checkpoint(state, self.run_dir / "best.pt")
                if metrics:
                    tqdm.write(
                        f"epoch {self.epoch}/{t.epochs}: "
                        + ", ".join(f"{k} {metrics[k]:.3f}" for k in ("AP", "AP50", "AP75") if k in metrics)
                        + (" (best)" if improved else "")
                    )
            self._barrier()
        best = {}
        if self.dist.is_main and (self.run_dir / "best.pt").exists():
            best = load_checkpoint(self.run_dir / "best.pt").get("metrics") or {}
        return TrainResult(self.run_dir, best, last_metrics, self.epoch, rate)

    def close(self) -> None:
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()
