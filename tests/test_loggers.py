"""Experiment logs: TensorBoard event files in every run folder (per step the losses and
the learning rate, per epoch the COCO numbers, each class's AP, the validation loss and a
few validation images), an MLflow run when train.loggers names it, and a resumed run that
continues the same curves without repeating a step. A logger that cannot write never stops
training."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from test_finetune import SMALL_ARGS, raccoon_parts, tiny_cfg, write_spec

from retinanet.cli import main
from retinanet.engine import Trainer
from retinanet.evaluation import METRIC_NAMES

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(module: str):
    """The optional package ``module``: a test needing it fails under CI when it is missing."""
    try:
        return __import__(module)
    except ImportError:
        if CI:
            pytest.fail(f"{module} is not installed (pip install -e '.[test]')")
        pytest.skip(f"{module} is not installed")


def _events(run: Path):
    _need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def resumed_run(raccoon, tmp_path_factory):
    """2 epochs of 2 steps with TensorBoard and MLflow, killed during step 4 (after step 3 was
    logged; the checkpoint is at step 2), then resumed to the end."""
    _need("mlflow")
    train, val = raccoon_parts(raccoon, 4, 2)
    cfg = tiny_cfg(tmp_path_factory.mktemp("logs"), "run", epochs=2, batch_size=2, loggers=("tensorboard", "mlflow"))

    def crash(trainer: Trainer) -> None:
        if trainer.step == 4:
            raise Crash

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(Crash):
            Trainer(cfg, progress=False, on_step=crash, train_data=train, val_data=val).fit()
        run = Path(cfg.train.out) / "run"
        cut = _events(run)
        assert _steps(cut, "train/loss") == [1, 2, 3]  # step 3 was logged after the checkpoint
        trainer = Trainer.resume(run, progress=False, train_data=train, val_data=val)
        assert trainer.step == 2
        trainer.fit()
        trainer.close()
    return trainer


def test_tensorboard_events_hold_the_losses_lr_coco_numbers_and_per_class_ap(resumed_run):
    acc = _events(resumed_run.run_dir)
    tags = set(acc.Tags()["scalars"])
    per_step = {"train/loss", "train/cls", "train/box", "train/lr"}
    per_epoch = {f"metrics/{name}" for name in METRIC_NAMES} | {"val/loss", "val/cls", "val/box", "AP_per_class/raccoon"}
    assert per_step | per_epoch | {"epoch/train_loss"} <= tags
    for tag in per_step:
        assert _steps(acc, tag) == [1, 2, 3, 4], tag  # step 3 once: the resumed run's purged the cut run's
    for tag in per_epoch:
        assert _steps(acc, tag) == [2, 4], tag  # at each epoch's last step
    assert acc.Scalars("metrics/AP")[-1].value == pytest.approx(resumed_run.history[-1]["val_AP"])
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(resumed_run.history[-1]["val_loss"], rel=1e-6)
    images = acc.Tags()["images"]
    assert images and all(tag.startswith("val_predictions/") for tag in images)
    assert [e.step for e in acc.Images(images[0])] == [2, 4]


def test_steps_csv_has_every_step_once_after_the_resume(resumed_run):
    with open(resumed_run.run_dir / "steps.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_the_mlflow_file_store_holds_the_run_with_its_metrics(resumed_run):
    _need("mlflow")
    from mlflow.tracking import MlflowClient

    run = resumed_run.run_dir
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "retinanet"]
    (found,) = client.search_runs([experiment.experiment_id])  # the resumed run continued the same MLflow run
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params["train.epochs"] == "2" and found.data.params["model.input_size"] == "96"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]
    ap = client.get_metric_history(found.info.run_id, "metrics/AP")
    assert [m.step for m in ap] == [2, 4] and ap[-1].value == pytest.approx(resumed_run.history[-1]["val_AP"])
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val/loss")] == [2, 4]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"results.csv", "steps.csv", "config.yaml", "train_batch0.jpg"} <= artifacts
    assert not (Path.cwd() / "mlruns").exists()  # nothing outside the run folder


def test_a_logger_that_cannot_write_is_one_warning_and_training_goes_on(raccoon, tmp_path, monkeypatch, capsys):
    _need("tensorboard")
    from retinanet.trackers import TensorBoard

    def full(self, values, step):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoard, "scalars", full)
    train, val = raccoon_parts(raccoon, 4, 2)
    trainer = Trainer(tiny_cfg(tmp_path, "full", epochs=1, batch_size=2), progress=False, train_data=train, val_data=val)
    assert trainer.fit().epochs == 1
    trainer.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert lines == ["warning: tensorboard logging stopped: OSError: [Errno 28] No space left on device; training goes on"]
    assert (tmp_path / "full" / "last.pt").is_file() and (tmp_path / "full" / "steps.csv").is_file()


def test_a_logger_not_installed_or_unknown_fails_before_training(raccoon, tmp_path, monkeypatch, capsys):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find(name, *a))
    spec = write_spec(tmp_path / "data", raccoon)
    base = ["train", *SMALL_ARGS, f"train.out={tmp_path / 'runs'}"]
    flags = ["--data", str(spec), "--no-progress"]
    assert main([*base, "train.loggers=[tensorboard,mlflow]", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install mlflow-skinny" in err
    assert main([*base, "train.loggers=[wandb]", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown logger 'wandb'" in err and "tensorboard, mlflow" in err
    assert not (tmp_path / "runs").exists()  # no run folder: training never started


def test_tensorboard_is_the_default_and_the_cli_run_writes_it(raccoon, tmp_path):
    spec = write_spec(tmp_path / "data", raccoon)
    out = tmp_path / "runs"
    args = ["train", *SMALL_ARGS, "epochs=1", "batch=4", "data.workers=0", f"train.out={out}"]
    assert main([*args, "--data", str(spec), "--name", "cli", "--no-progress"]) == 0
    run = out / "cli"
    assert list(run.glob("events.out.tfevents.*")) and not (run / "mlruns").exists()
    assert _steps(_events(run), "train/loss") == [1]
    for name in ("F1_curve.png", "P_curve.png", "R_curve.png"):  # the final evaluation's curves
        assert (run / "val" / name).is_file()
