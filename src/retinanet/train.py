"""A whole training run, as `retinanet train` does it: build the run's config, train,
then evaluate the best weights with every plot and show what the model predicts.

The loop itself is engine.Trainer; this module adds what happens around it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import PredictConfig, RunConfig, apply_overrides, load_yaml, merge, preset

# The built-in synthetic set is a demo: a short schedule that finishes in a few minutes on a
# 2-core CPU. Its 40 steps per epoch need a higher learning rate than the recipe for real
# data (measured: 12 epochs reach AP 0.65 at lr 0.02, 0.23 after 8 epochs at lr 0.01).
# Anything the user sets wins.
DEMO_OVERRIDES = ["train.epochs=12", "train.lr=0.02"]
DEMO_IMAGES = 8  # validation images the finished run predicts on, as a user would
# Real data trains at the input size its boxes need (coverage.py: 320 unless more than 5%
# of the boxes would be under 16 px there; then 416, 512 or 640). Measured on aquarium's
# validation split: AP 0.103 at 320 against 0.181 at the 640 it picks; raccoon stays at 320.
# A size the user sets (command line or config file) or a preset's own size wins.
DATA_OVERRIDES = ["model.input_size=auto"]


def run_config(preset_name: str = "default", config_file: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The run's config: the preset, then the YAML file, then ``key=value`` overrides. The
    synthetic demo's schedule applies unless a config file or an override sets it; on real
    data the default preset's input size is fitted to the boxes (DATA_OVERRIDES) unless
    the user sets it."""

    def base() -> RunConfig:
        cfg = RunConfig(model=preset(preset_name))
        return merge(cfg, load_yaml(config_file)) if config_file else cfg

    user = list(overrides or [])
    probe = apply_overrides(base(), user)
    if probe.data.source == "synthetic":
        recipe = [] if config_file else DEMO_OVERRIDES
    else:
        recipe = [] if preset_name != "default" or _sets_input_size(config_file, user) else DATA_OVERRIDES
    return apply_overrides(base(), recipe + user)


def _sets_input_size(config_file: str | None, overrides: list[str]) -> bool:
    """Whether the user chose model.input_size, on the command line or in the config file."""
    if any(item.partition("=")[0].strip() == "model.input_size" for item in overrides):
        return True
    model = load_yaml(config_file).get("model") if config_file else None
    return isinstance(model, dict) and "input_size" in model


@dataclass
class RunSummary:
    run_dir: Path
    best_metrics: dict[str, float] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)
    """Files and folders the final step wrote (curves, evaluation, predictions)."""
    stopped: str = ""
    """Why the run stopped before its last epoch (train.patience), else empty."""
    conf_threshold: float | None = None
    """best.pt's confidence threshold with the best F1 on the validation split."""


def train(
    cfg: RunConfig | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    final: bool = True,
    epochs: int | None = None,
    patience: int | None = None,
) -> RunSummary:
    """Train ``cfg`` (or continue the run in ``resume``, to ``epochs`` epochs and with
    ``patience`` when given); with ``final``, evaluate best.pt with plots and predict on a
    few validation images. Returns the run's summary."""
    from .engine import Trainer

    if resume is not None:
        trainer = Trainer.resume(resume, epochs=epochs, patience=patience, progress=progress)
        where = f"epoch {trainer.epoch}/{trainer.cfg.train.epochs}"
        if trainer.position:
            where = f"epoch {trainer.epoch + 1}/{trainer.cfg.train.epochs}, batch {trainer.position['batch']}/{trainer.steps_per_epoch}"
        print(f"resuming {trainer.run_dir} at {where}")
    else:
        trainer = Trainer(cfg if cfg is not None else run_config(), progress=progress)
    try:
        result = trainer.fit()
        written = finish(trainer, progress) if final and trainer.dist.is_main else []
        return RunSummary(Path(result.run_dir), result.best_metrics, written, result.stopped, result.conf_threshold)
    finally:
        trainer.close()


def finish(trainer, progress: bool = True) -> list[Path]:
    """After training: draw the training curves, evaluate the best weights with every
    plot, and run the model on a few validation images. Returns what was written."""
    from .checkpoint import model_from_checkpoint
    from .evaluation import EvalConfig, evaluate
    from .history import plot_training_curves
    from .runtime import resolve_workers

    run = trainer.run_dir
    written = []
    if (run / "results.csv").exists():
        written.append(plot_training_curves(run / "results.csv", run / "training_curves.png"))
    best = run / "best.pt"
    if trainer.val_data is not None and best.exists():
        model = model_from_checkpoint(best).to(trainer.device)
        evaluate(model, trainer.val_data, EvalConfig(batch_size=trainer.cfg.train.batch_size,
                 workers=resolve_workers(trainer.cfg.data.workers)), out_dir=run / "val", plots=True, progress=progress)
        written.append(run / "val")
        if _predict_demo(best, [r.image_path for r in trainer.val_data.records[:DEMO_IMAGES]], run / "predict"):
            written.append(run / "predict")
    return written


def _predict_demo(model: Path, images: list[Path], out: Path) -> bool:
    """What `retinanet predict IMAGES --model best.pt` would do and print: at best.pt's
    confidence threshold (the F1-best on validation), else predict's default. A failure
    here is reported, not raised: the run itself is finished and saved."""
    from .api import Detector
    from .predict import Sources, predict

    try:
        det = Detector(model)
        done = predict(det, Sources(images=images), PredictConfig(out=str(out)))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"predict demo skipped: {e}", file=sys.stderr)
        return False
    print(f"{done.images} images, {done.detections} detections at conf {det.conf:.3f} ({det.backend_name}) -> {done.json_path}")
    return True
