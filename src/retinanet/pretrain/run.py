"""A whole pretraining run: settings (fresh or resumed), data, model, the epochs, and
what each epoch leaves in the run folder (last.pth / best.pth, results.csv, results.png)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..backbones import backbone_spec
from ..checkpoint import load_pretrain_checkpoint, save_pretrain_checkpoint
from ..config import PretrainConfig, from_dict, preset, to_dict
from ..history import Panel, plot_curves, rows_to_columns, write_results_csv
from ..runtime import resolve_device, seed_everything
from .data import ClassificationData, load_image_folder
from .loop import build_optimizer, build_scheduler, evaluate, train_one_epoch
from .model import build_pretrain_model

# Settings that may change when a run is resumed; any other must match the saved run.
RESUMABLE_CHANGES = ("epochs", "workers", "device")
CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "seconds")
PANELS: list[Panel] = [
    ("loss", {"train_loss": "train (smoothed CE)", "val_loss": "val"}),
    ("accuracy", {"train_acc": "train", "val_top1": "val top-1", "val_top5": "val top-5"}),
]


@dataclass
class PretrainResult:
    out_dir: Path
    best_path: Path
    last_path: Path
    class_names: list[str]
    history: list[dict[str, float]]
    model: nn.Module


@dataclass
class _Progress:
    """Where the epochs stand: the next epoch, one row per finished epoch, the best so far."""

    start_epoch: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=lambda: {"epoch": 0, "score": -math.inf})


def _score(metrics: dict[str, float]) -> float:
    """What `best` maximises: validation top-1, or training accuracy when there is no validation."""
    return metrics.get("val_top1", metrics["train_acc"])


def train_command(cfg: PretrainConfig, weights: str | Path) -> str:
    """The `retinanet train` line that starts a detector from ``weights``. Presets whose
    backbone starts untrained train its batch norm; with pretrained weights, freeze it as
    the ImageNet presets do (fine-tuning with small batches)."""
    name = backbone_spec(cfg.backbone).preset
    parts = [f"retinanet train --data DATA --preset {name}"]
    if cfg.width != 1.0:
        parts.append(f"model.backbone.width={cfg.width:g}")
    if not preset(name).backbone.freeze_bn:
        parts.append("model.backbone.freeze_bn=true")
    parts.append(f"model.backbone.weights={weights}")
    return " ".join(parts)


def _resumed_config(cfg: PretrainConfig | None, path: Path) -> tuple[PretrainConfig, dict[str, Any]]:
    """The saved run's settings (``cfg`` may change only RESUMABLE_CHANGES) and its checkpoint."""
    saved = load_pretrain_checkpoint(path)
    saved_cfg = from_dict(PretrainConfig, saved["config"], "config")
    cfg = cfg if cfg is not None else saved_cfg
    changed = [
        f"{f.name} {getattr(cfg, f.name)} (saved: {getattr(saved_cfg, f.name)})"
        for f in fields(PretrainConfig)
        if f.name not in RESUMABLE_CHANGES and getattr(cfg, f.name) != getattr(saved_cfg, f.name)
    ]
    if changed:
        raise ValueError(
            f"{path}: a resumed run keeps its settings (only {', '.join(RESUMABLE_CHANGES)} may change); "
            f"cannot change {', '.join(changed)}"
        )
    return cfg, saved


def _check_data(data: ClassificationData, cfg: PretrainConfig, saved: dict[str, Any] | None, data_dir: str | Path) -> None:
    if saved is not None and list(saved["class_names"]) != data.class_names:
        raise ValueError(
            f"{data_dir}: classes {data.class_names[:5]}... differ from the resumed run's {list(saved['class_names'])[:5]}..."
        )
    if len(data.train) < cfg.batch_size:
        raise ValueError(
            f"{data.root}: {len(data.train)} training images, fewer than one batch of {cfg.batch_size}; lower --batch"
        )


def _loaders(data: ClassificationData, cfg: PretrainConfig, device: torch.device, rng: torch.Generator):
    """(train loader shuffled by ``rng``, val loader or None)."""
    pin = device.type == "cuda"
    train = DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,  # a last batch of one image would break batch norm
        num_workers=cfg.workers,
        pin_memory=pin,
        generator=rng,
    )
    if data.val is None:
        return train, None
    return train, DataLoader(data.val, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers, pin_memory=pin)


def _restore(saved: dict[str, Any], path: Path, cfg: PretrainConfig, model: nn.Module, optimizer, scheduler) -> _Progress:
    try:
        model.load_state_dict(saved["classifier_state"])
    except RuntimeError as e:
        raise RuntimeError(f"{path}: does not fit {cfg.backbone} (width {cfg.width}): {str(e)[:300]}") from None
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    start = int(saved["epoch"]) + 1
    history = [dict(r) for r in saved.get("history", []) if r["epoch"] < start]
    return _Progress(start, history, dict(saved.get("best", _Progress().best)))


def _save_epoch(out_dir: Path, state: dict[str, Any], is_best: bool) -> None:
    """last.pth (and best.pth), then the log and its curves, rewritten from the history."""
    save_pretrain_checkpoint(state, out_dir / "last.pth")
    if is_best:
        save_pretrain_checkpoint(state, out_dir / "best.pth")
    write_results_csv(state["history"], out_dir / "results.csv", CSV_COLUMNS)
    plot_curves(rows_to_columns(state["history"]), out_dir / "results.png", PANELS)


def _announce(cfg: PretrainConfig, data: ClassificationData, device: torch.device, out_dir: Path, resumed_at: int | None) -> None:
    n_val = len(data.val) if data.val is not None else 0
    start = f"resumed at epoch {resumed_at}" if resumed_at is not None else f"weights {cfg.weights}"
    print(
        f"pretrain {cfg.backbone} (width {cfg.width}, {start}) on {data.root}: {len(data.class_names)} classes, "
        f"{len(data.train)} train / {n_val} val images, {cfg.img_size} px, {device} -> {out_dir}"
    )


def _next_free(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... the first that holds no run yet."""
    candidate, n = base, 1
    while (candidate / "last.pth").exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def plan_run(given: dict[str, Any], out: str | Path | None, resume: bool | str | Path = False) -> tuple[PretrainConfig, Path, Path | None]:
    """What `retinanet pretrain` runs: (settings, run folder, checkpoint to resume or None).

    ``given`` holds the PretrainConfig fields set on the command line; a resumed run takes
    the saved settings with ``given`` on top (``pretrain`` refuses changes other than
    RESUMABLE_CHANGES). A new run's default folder is runs/pretrain/BACKBONE[_WIDTH],
    numbered when taken; an explicit ``out`` that holds a run is refused."""
    if resume:
        if resume is not True:
            saved_path = Path(resume)
        elif out:
            saved_path = Path(out) / "last.pth"
        else:
            raise ValueError("--resume needs --out (the run's folder) or the path of its last.pth")
        cfg = from_dict(PretrainConfig, {**load_pretrain_checkpoint(saved_path)["config"], **given}, "config")
        return cfg, Path(out) if out else saved_path.parent, saved_path
    cfg = PretrainConfig(**given)
    if out:
        if (Path(out) / "last.pth").exists():
            raise ValueError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
        return cfg, Path(out), None
    name = cfg.backbone if cfg.width == 1.0 else f"{cfg.backbone}_{cfg.width:g}"
    return cfg, _next_free(Path("runs") / "pretrain" / name), None


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
    cfg, out_dir, saved, resume_path = copy.deepcopy(cfg), Path(out_dir), None, None
    if resume:
        resume_path = out_dir / "last.pth" if resume is True else Path(resume)
        cfg, saved = _resumed_config(cfg, resume_path)
    cfg = cfg if cfg is not None else PretrainConfig()
    cfg.validate()
    device = resolve_device(cfg.device, setting="--device")
    data = load_image_folder(data_dir, cfg.img_size, cfg.val_split, cfg.seed)
    _check_data(data, cfg, saved, data_dir)

    seed_everything(cfg.seed)
    if model is None:
        model = build_pretrain_model(cfg.backbone, cfg.width, "none" if saved else cfg.weights, data.class_names)
    model.to(device).to(memory_format=torch.channels_last)
    loader_rng = torch.Generator()
    train_loader, val_loader = _loaders(data, cfg, device, loader_rng)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    state = _Progress() if saved is None else _restore(saved, resume_path, cfg, model, optimizer, scheduler)
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        _announce(cfg, data, device, out_dir, state.start_epoch if saved else None)
    if state.start_epoch > cfg.epochs:
        print(f"{out_dir / 'last.pth'}: already trained for {state.start_epoch - 1} of {cfg.epochs} epochs; raise --epochs to continue")

    run = _Epochs(cfg, model, optimizer, scheduler, device, data.class_names, progress)
    for epoch in range(state.start_epoch, cfg.epochs + 1):
        # Every epoch's randomness (shuffle, crops, flips, dropout) depends on (seed, epoch)
        # only, so a resumed run repeats exactly what an uninterrupted one would have done.
        torch.manual_seed(cfg.seed + epoch)
        loader_rng.manual_seed(cfg.seed + epoch)
        run.epoch(epoch, train_loader, val_loader, state, out_dir)
    best_path = out_dir / "best.pth"
    if progress and best_path.is_file():
        print(f"best epoch {state.best['epoch']} -> {best_path}\nstart the detector from it: {train_command(cfg, best_path)}")
    return PretrainResult(out_dir, best_path, out_dir / "last.pth", list(data.class_names), state.history, model)


@dataclass
class _Epochs:
    """The parts one epoch needs, built once by ``pretrain``."""

    cfg: PretrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    class_names: list[str]
    progress: bool

    def epoch(self, epoch: int, train_loader, val_loader, state: _Progress, out_dir: Path) -> None:
        """Train (and validate) epoch ``epoch``, record it in ``state`` and the run folder."""
        cfg, t0 = self.cfg, time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        metrics = train_one_epoch(
            self.model, train_loader, self.optimizer, self.scheduler, criterion, self.device, cfg.clip_grad,
            desc=f"epoch {epoch}/{cfg.epochs}", progress=self.progress,
        )  # fmt: skip
        if val_loader is not None:
            metrics.update(evaluate(self.model, val_loader, self.device, desc=f"val {epoch}/{cfg.epochs}", progress=self.progress))
        state.history.append({"epoch": epoch, "lr": lr, **metrics, "seconds": time.perf_counter() - t0})
        is_best = _score(metrics) > state.best["score"]
        if is_best:
            state.best = {"epoch": epoch, "score": _score(metrics)}
        _save_epoch(out_dir, self._checkpoint(epoch, metrics, state), is_best)
        if self.progress:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"epoch {epoch}/{cfg.epochs}: {shown}{'  (best)' if is_best else ''}")

    def _checkpoint(self, epoch: int, metrics: dict[str, float], state: _Progress) -> dict[str, Any]:
        return {
            "classifier_state": self.model.state_dict(),
            "backbone": self.cfg.backbone,
            "width": self.cfg.width,
            "class_names": list(self.class_names),
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "metrics": metrics,
            "best": state.best,
            "history": state.history,
            "config": to_dict(self.cfg),
        }
