"""The detector's training run: the Trainer assembles model, data, optimiser, schedule,
EMA, mixed precision, checkpoints, resume and torchrun from the shared stack
(optim.py, runtime.py, checkpoint.py, run_folder.py, stop.py) and runs the epochs.

The loop knows the model only through ``model(images)`` -> raw outputs,
``model.loss(outputs, image_hw, boxes, labels)`` -> dict of losses and
``model.freeze_backbone(flag)``; data comes as ``Batch`` objects from data/loader.py.
"""

from __future__ import annotations

import copy
import signal
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .config import EvalConfig, RunConfig, save_yaml
from .coverage import FitResult, fit_to_data
from .data.dataset import DetectionDataset
from .data.splits import choose_validation, load_split
from .finetune import load_detector_weights, start_weights
from .history import LOSS_KEYS  # of model.loss, averaged over an epoch's images into train_*
from .loggers import RunLoggers, check_loggers
from .model import RetinaNet
from .optim import NonFiniteLossError, build_optimizer, clip_gradients, ema_avg_fn, non_finite, warmup_cosine
from .run_folder import RunFolder, next_run_dir
from .run_state import FITNESS_KEY, inference_state, replan, resume_changes, restore, saved_config, training_state
from .runtime import amp_dtype, resolve_device, resolve_workers, seed_everything, setup_distributed
from .stop import StopSignals, TrainingInterrupted
from .validation import final_best, out_of_patience, recalibrate_bn, trained_norms, validate


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_dir: Path
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    images_per_second: float = 0.0
    stopped: str = ""  # why the run stopped before its last epoch (train.patience), else empty
    conf_threshold: float | None = None  # best.pt's F1-best confidence threshold on the validation split


class Trainer:
    """One training run. ``fit()`` trains to ``cfg.train.epochs`` (or until the validation AP
    stops improving, ``train.patience``); ``Trainer.resume(run_dir)`` rebuilds a run from
    its last checkpoint and continues it exactly, or longer. With ``train.weights`` the
    model starts from a trained detector (finetune.py).

    The Trainer works on a copy of ``cfg`` (it fills in the dataset's class count, and the
    input size and anchors coverage.py fits to the data), so the caller's config is left
    as it was; the run's config.yaml and checkpoints hold the copy.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path | None = None,
        progress: bool = True,
        on_step: Callable[[Trainer], None] | None = None,
        train_data: DetectionDataset | None = None,
        val_data: DetectionDataset | None = None,
        load_backbone_weights: bool = True,
        refit: bool = True,
    ):
        self.cfg = cfg = copy.deepcopy(cfg)
        self.progress = progress
        self.on_step = on_step  # called after every optimiser step (tests use it to interrupt)
        t = cfg.train
        self.dist = setup_distributed(t.device)
        self.device = resolve_device(t.device, self.dist, setting="train.device")
        self.amp = amp_dtype(t.amp, self.device)
        for key in ("patience", "precise_bn"):  # epochs, images
            if getattr(t, key) < 0:
                raise ValueError(f"train.{key} must be 0 (off) or more, not {getattr(t, key)}")
        check_loggers(t.loggers)  # a tracker that is not installed fails now, not after the data loads
        seed_everything(t.seed)
        start = start_weights(cfg, fresh=load_backbone_weights)  # a trained detector to start from
        self._load_data(train_data, val_data)
        cfg.model.num_classes = self.train_data.num_classes
        self.coverage = self._fit_to_data(refit and cfg.model.anchors.fit, t.weights if start else "")
        cfg.model = self.coverage.cfg
        self.model = self._build_model(load_backbone_weights)
        self.start_lines = load_detector_weights(self.model, start, t.weights) if start else []
        self.optimizer = build_optimizer(self.model, t.optimizer, t.lr, t.momentum, t.weight_decay, setting="train.optimizer")
        ema_fn = ema_avg_fn(t.ema_decay, t.ema_tau)
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_fn, use_buffers=True) if t.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.loader = self._build_loader()
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.warmup_steps = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.scheduler = warmup_cosine(self.optimizer, self.total_steps, self.warmup_steps, t.warmup_factor, t.min_lr_ratio)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimiser steps taken
        self.best_fitness = -1.0
        self.best_epoch = 0  # the epoch best.pt holds (0: none yet)
        self.val_threshold = None  # evaluation.threshold.F1Threshold of the last validation
        self.validation = None  # validation.Validation of this epoch (metrics, threshold, losses, ...)
        self.loggers = RunLoggers()  # steps.csv, previews, TensorBoard, MLflow: opened by fit()
        self.stopped = ""  # why the run stopped early
        self.history: list[dict[str, float]] = []
        self.position: dict[str, Any] | None = None  # where in the epoch an interrupted run stopped
        self._stop: StopSignals | None = None
        self.run_dir = self._make_run_dir(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.ddp: nn.Module = self.model
        self._wrap()
        if self.dist.is_main:
            for line in self.start_lines:
                tqdm.write(line)
            self.folder.report_data(self.coverage, self.train_data, self.val_data)

    # -- building

    def _load_data(self, train_data: DetectionDataset | None, val_data: DetectionDataset | None) -> None:
        """Rank 0 reads (and for the synthetic set, renders) the data first; the others follow."""
        cfg, main = self.cfg, self.dist.is_main
        if main or train_data is not None:
            self.train_data = train_data or load_split(cfg.data, cfg.data.train_split, self.progress)
        self._barrier()
        if not main and train_data is None:
            self.train_data = load_split(cfg.data, cfg.data.train_split, progress=False)
        self.val_data = val_data
        if val_data is None:
            self.train_data, held, note = choose_validation(self.train_data, cfg.data, load=main, progress=self.progress)
            self.val_data = held if main else None
            if note and main:
                tqdm.write(note)
        if len(self.train_data) == 0:
            raise ValueError(f"{cfg.data.source}: split {cfg.data.train_split!r} has no images")

    def _fit_to_data(self, fit: bool, kept_from: str = "") -> FitResult:
        """Input size and anchors fitted to the training data before the model is built
        (coverage.py; the anchors of a resumed or fine-tuning run are only measured). The
        main process decides and the others receive its result, so every process trains
        with the same anchors."""
        cfg, seed = self.cfg.model, self.cfg.train.seed
        result = [fit_to_data(cfg, self.train_data, fit=fit, seed=seed, kept_from=kept_from) if self.dist.is_main else None]
        if self.dist.enabled:
            dist.broadcast_object_list(result, src=0)
        return result[0]

    def _build_model(self, load_backbone_weights: bool) -> RetinaNet:
        model_cfg = copy.deepcopy(self.cfg.model)
        if not load_backbone_weights:
            model_cfg.backbone.weights = "checkpoint"  # a checkpoint will supply every weight
        data = self.train_data
        model = RetinaNet(model_cfg, class_names=data.class_names, category_ids=data.category_ids).to(self.device)
        if self.cfg.train.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def _build_loader(self):
        from .data.loader import build_loader

        cfg, t = self.cfg, self.cfg.train
        return build_loader(
            self.train_data,
            cfg.model.input_size,
            train=True, batch_size=t.batch_size,
            workers=resolve_workers(cfg.data.workers),
            seed=t.seed,
            augment=cfg.data.augment,
            cache=cfg.data.cache,
            progress=self.progress and self.dist.is_main,
            distributed=self.dist.enabled,
            drop_last=len(self.train_data) >= t.batch_size * self.dist.world_size,
        )

    # -- helpers

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    def _make_run_dir(self, run_dir: Path | None) -> Path:
        main = self.dist.is_main  # only the main process claims a numbered folder (next_run_dir creates it); the others receive it
        path = [str(run_dir or (next_run_dir(self.cfg.train.out, self.cfg.train.name) if main else ""))]
        if self.dist.enabled:
            dist.broadcast_object_list(path, src=0)
        out = Path(path[0])
        if self.dist.is_main:
            stale = RunFolder(out).open()
            if stale:
                print(f"{out}: removed {len(stale)} temporary file(s) an interrupted save left")
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
        """last.pt (run_state.py); best.pt is run_state.inference_state."""
        return training_state(self, metrics)

    def load_state(self, state: dict[str, Any]) -> None:
        restore(self, state)

    @classmethod
    def resume(cls, run_dir: str | Path, epochs: int | None = None, patience: int | None = None, **kwargs: Any) -> Trainer:
        """The run in ``run_dir`` (or a last.pt) rebuilt to continue; ``epochs``: train to this
        many epochs instead (the schedule is re-planned), ``patience``: a new train.patience."""
        run_dir = Path(run_dir)
        ckpt = run_dir / "last.pt" if run_dir.is_dir() else run_dir
        state = load_checkpoint(ckpt)
        cfg = saved_config(state, ckpt)
        planned = resume_changes(cfg, state, ckpt, epochs, patience)
        trainer = cls(cfg, run_dir=ckpt.parent, load_backbone_weights=False, refit=False, **kwargs)
        trainer.load_state(state)
        if cfg.train.epochs != planned:
            replan(trainer, planned)
        if trainer.dist.is_main and ckpt.name == "last.pt":  # a kill after last.pt and before results.csv left the CSV a row short
            trainer.folder.write_results(trainer.history)
        return trainer

    # -- training

    def _skip_non_finite(self, loss: Tensor, grad_norm: Tensor) -> bool:
        """True when this step must be skipped: the loss or gradient is not finite in some
        process. Never train on NaN/inf: skip the step, and stop if it keeps happening."""
        bad = torch.tensor(float(non_finite(loss, grad_norm) is not None))
        if self.dist.enabled:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() == 0:
            self._bad_run = 0
            return False
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self._bad_run += 1
        if self._bad_run >= self.cfg.train.max_nonfinite:
            raise NonFiniteLossError(
                f"training diverged: {self._bad_run} consecutive steps with a non-finite loss or gradient "
                f"(epoch {self.epoch + 1}, step {self.step}, lr {self.optimizer.param_groups[0]['lr']:.2e}); "
                "lower train.lr, raise train.warmup_epochs or check the data with `retinanet check-data`"
            )
        return True

    def _train_step(self, batch, params: list[Tensor]) -> dict[str, Tensor] | None:
        """One optimiser step on ``batch``; its losses, or None when the step was skipped."""
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            outputs = self.ddp(batch.images)
        losses = self.model.loss(outputs, batch.images.shape[-2:], batch.boxes, batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        # Backward even on a bad loss: under DDP every process must join the all-reduce.
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        norm = clip_gradients(params, self.cfg.train.grad_clip)
        if self._skip_non_finite(losses["loss"], norm):
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return losses

    def _start_epoch(self) -> None:
        """Freeze or thaw the backbone for this epoch, training mode, the sampler's epoch."""
        frozen = self.epoch < self.cfg.train.freeze_backbone_epochs
        if self.model.backbone_frozen != frozen:
            self.model.freeze_backbone(frozen)
            self._wrap()
        self.model.train()
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        self._bad_run = 0  # consecutive skipped steps

    def train_one_epoch(self) -> dict[str, float]:
        self._start_epoch()
        pos = self._take_position()
        sums, seen, skipped = pos["sums"], pos["seen"], pos["skipped"]
        start = time.perf_counter() - pos["elapsed"]
        self.loader.skip_batches(pos["batch"])
        bar = tqdm(
            self.loader,
            desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
            initial=pos["batch"],
            total=self.steps_per_epoch,
            disable=not (self.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        for done, batch in enumerate(bar, start=pos["batch"] + 1):
            losses = self._train_step(batch.to(self.device), params)
            if losses is None:
                skipped += 1
            else:
                n = batch.images.shape[0]
                seen += n
                for k in sums:
                    sums[k] += float(losses[k].detach()) * n
                rate = seen * self.dist.world_size / (time.perf_counter() - start)
                shown = {k: f"{v / seen:.3f}" for k, v in sums.items()}
                bar.set_postfix(**shown, lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", img_s=f"{rate:.1f}")
                if self.on_step is not None:
                    self.on_step(self)
            self.loggers.step(self, done, batch, losses)
            if self._stop_requested():
                bar.close()
                self._interrupt(dict(batch=done, sums=sums, seen=seen, skipped=skipped, elapsed=time.perf_counter() - start))
        return self._epoch_stats(sums, seen, skipped, time.perf_counter() - start)

    # -- stopping on SIGTERM / SIGINT (stop.py)

    def _take_position(self) -> dict[str, Any]:
        """Where this epoch starts: where an interrupted run stopped, else its beginning."""
        pos = self.position or dict(batch=0, sums=dict.fromkeys(LOSS_KEYS, 0.0), seen=0, skipped=0, elapsed=0.0)
        if not self.dist.is_main:  # the saved sums are all processes' together: rank 0 carries them
            pos = {**pos, "sums": dict.fromkeys(LOSS_KEYS, 0.0), "seen": 0, "skipped": 0}
        self.position = None
        return pos

    def _stop_requested(self) -> bool:
        """A signal arrived (in any process: they must all stop at the same step)."""
        flag = torch.tensor(float(self._stop is not None and self._stop.signum is not None))
        if self.dist.enabled:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    def _interrupt(self, position: dict[str, Any] | None) -> None:
        """Raise TrainingInterrupted; mid-epoch (``position``) save a resumable checkpoint
        first, at an epoch's end last.pt is already the resume point."""
        signum = self._stop.signum if self._stop is not None and self._stop.signum is not None else signal.SIGTERM
        where = f"the end of epoch {self.epoch}/{self.cfg.train.epochs}"
        if position is not None:
            where = f"epoch {self.epoch + 1}/{self.cfg.train.epochs}, batch {position['batch']}/{self.steps_per_epoch}"
            position["sums"], position["seen"] = self._global_sums(position["sums"], position["seen"])
            if self.dist.is_main:
                self.position = position
                self.loggers.flush()
                self.folder.save_interrupted(self.state({}))
        self._barrier()
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name}: training stopped at {where}; saved {self.folder.last}; "
            f"continue with: retinanet train --resume {self.run_dir}",
            signum,
        )

    def _epoch_stats(self, sums: dict[str, float], seen: int, skipped: int, elapsed: float) -> dict[str, float]:
        """The epoch's row: mean losses per image (over every process's images), lr, skipped steps, speed."""
        sums, seen = self._global_sums(sums, seen)
        means = {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}
        return {
            **means,
            "lr": self.optimizer.param_groups[0]["lr"],
            "skipped_steps": float(skipped),
            "images_per_second": seen / max(elapsed, 1e-9),
        }

    def _global_sums(self, sums: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
        """Loss sums and image counts added over the processes (each process's own when alone)."""
        if not self.dist.enabled:
            return sums, seen
        vec = torch.tensor([*sums.values(), float(seen)], dtype=torch.float64)
        dist.all_reduce(vec)
        return dict(zip(sums, vec[:-1].tolist())), int(vec[-1])

    @property
    def eval_config(self) -> EvalConfig:
        return EvalConfig(batch_size=self.cfg.train.batch_size, workers=resolve_workers(self.cfg.data.workers))

    def validate(self) -> dict[str, float]:
        """Every rank: the EMA weights' batch norm recomputed (train.precise_bn); rank 0: their COCO
        metrics on the validation split, its F1-best confidence threshold to ``self.val_threshold``,
        the whole validation (losses on the split, per-class AP) to ``self.validation``."""
        # The same images on every rank, so SyncBatchNorm's collectives match and the EMAs stay equal.
        recalibrate_bn(self.eval_model, self.train_data.records, self.cfg.train.precise_bn, self.eval_config, trained_norms(self.model))
        if self.val_data is None or not self.dist.is_main:
            return {}
        self.validation = validate(self.eval_model, self.val_data, self.eval_config, self.progress)
        self.val_threshold = self.validation.threshold
        return self.validation.metrics

    def _end_epoch(self, stats: dict[str, float], metrics: dict[str, float]) -> None:
        """Rank 0: log the epoch, write last.pt (and best.pt when the AP improved)."""
        t = self.cfg.train
        losses = self.validation.losses if self.validation is not None else {}
        self.history.append({"epoch": self.epoch, **stats, **{f"val_{k}": v for k, v in {**losses, **metrics}.items()}})
        self.loggers.epoch(self, stats, metrics)
        fitness = metrics.get(FITNESS_KEY, -1.0) if metrics else -1.0
        improved = bool(metrics) and fitness > self.best_fitness
        if improved:
            self.best_fitness, self.best_epoch = fitness, self.epoch
        best = improved or (self.val_data is None and self.epoch == t.epochs)
        self.folder.commit_epoch(self.state(metrics), inference_state(self, metrics) if best else None)
        if metrics:
            tqdm.write(
                f"epoch {self.epoch}/{t.epochs}: "
                + ", ".join(f"{k} {metrics[k]:.3f}" for k in ("AP", "AP50", "AP75") if k in metrics)
                + (" (best)" if improved else "")
            )

    def fit(self) -> TrainResult:
        t = self.cfg.train
        last_metrics: dict[str, float] = {}
        rate = 0.0
        with StopSignals() as self._stop, RunLoggers.open(self) as self.loggers, closing(self.loader):
            while self.epoch < t.epochs and not out_of_patience(self):
                stats = self.train_one_epoch()
                rate = stats["images_per_second"]
                self.epoch += 1
                do_eval = self.epoch % t.eval_every == 0 or self.epoch == t.epochs
                self.val_threshold = self.validation = None
                metrics = self.validate() if do_eval else {}
                if self.dist.is_main:
                    last_metrics = metrics or last_metrics
                    self._end_epoch(stats, metrics)
                self._barrier()
                if self._stop_requested():  # it came during validation or the save: stop before another step
                    self._interrupt(None)
        self._stop = None
        result = TrainResult(self.run_dir, {}, last_metrics, self.epoch, rate, self.stopped)
        if self.dist.is_main and self.folder.best.exists():
            best = final_best(self)
            result.best_metrics, result.conf_threshold = best.get("metrics") or {}, best.get("conf_threshold")
        return result

    def close(self) -> None:
        self.loggers.close()
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()
