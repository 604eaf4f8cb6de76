"""Early stopping (train.patience): a run whose validation AP stops improving ends after
that many epochs, says why, and still writes results.csv and evaluates best.pt."""

from __future__ import annotations

import csv

import pytest
from test_finetune import SMALL_ARGS, raccoon_parts, tiny_cfg, write_spec

from retinanet.checkpoint import load_checkpoint
from retinanet.cli import main
from retinanet.engine import Trainer


def _epochs(run) -> list[int]:
    with open(run / "results.csv", newline="") as f:
        return [int(float(row["epoch"])) for row in csv.DictReader(f)]


def test_a_run_whose_ap_cannot_improve_stops_after_patience_epochs(raccoon, tmp_path, capsys, monkeypatch):
    # The AP of these few steps is the same every epoch: only the first epoch is a best.
    monkeypatch.setattr(Trainer, "validate", lambda self, *a, **k: {"AP": 0.25, "AP50": 0.5})
    spec = write_spec(tmp_path / "data", raccoon)
    out = tmp_path / "runs"
    args = ["train", *SMALL_ARGS, "epochs=10", "patience=2", "batch=4", "data.workers=0", "train.warmup_epochs=0.5", f"train.out={out}"]
    assert main([*args, "--data", str(spec), "--name", "p", "--no-progress"]) == 0
    text = capsys.readouterr().out
    run = out / "p"
    reason = "stopped early after epoch 3/10: the validation AP has not improved for 2 epochs (train.patience=2); best AP 0.250 at epoch 1"
    assert reason in text
    assert _epochs(run) == [1, 2, 3]  # results.csv has every epoch trained
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert (last["epoch"], last["step"], last["best_epoch"]) == (3, 3, 1) and best["epoch"] == 1
    assert (run / "val" / "metrics.json").is_file() and (run / "training_curves.png").is_file()  # the final evaluation ran


def test_patience_counts_from_the_last_improvement(raccoon, tmp_path, monkeypatch):
    aps = {1: 0.1, 2: 0.2, 3: 0.15, 4: 0.2, 5: 0.3}  # epoch 4 only equals the best: not an improvement
    monkeypatch.setattr(Trainer, "validate", lambda self, *a, **k: {"AP": aps[self.epoch]})
    train, val = raccoon_parts(raccoon)
    trainer = Trainer(tiny_cfg(tmp_path, "count", epochs=5, patience=2), progress=False, train_data=train, val_data=val)
    result = trainer.fit()
    assert result.epochs == 4 and trainer.best_epoch == 2
    assert "has not improved for 2 epochs" in result.stopped and "best AP 0.200 at epoch 2" in result.stopped

    # Resumed with more patience, the run goes on from where it stopped.
    resumed = Trainer.resume(tmp_path / "count", patience=3, progress=False, train_data=train, val_data=val)
    assert resumed.fit().epochs == 5 and resumed.best_epoch == 5


def test_a_run_stopped_early_trains_on_when_resumed_with_more_epochs(raccoon, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", lambda self, *a, **k: {"AP": 0.25})  # never improves after epoch 1
    train, val = raccoon_parts(raccoon)
    first = Trainer(tiny_cfg(tmp_path, "more", epochs=4, patience=1), progress=False, train_data=train, val_data=val).fit()
    assert first.epochs == 2 and "has not improved for 1 epochs" in first.stopped
    # A longer plan counts the wait from the resume point, so it trains at least `patience` more epochs.
    resumed = Trainer.resume(tmp_path / "more", epochs=6, progress=False, train_data=train, val_data=val)
    result = resumed.fit()
    assert result.epochs == 3 and "stopped early after epoch 3/6" in result.stopped


def test_patience_is_off_by_default_and_never_negative(tmp_path):
    cfg = tiny_cfg(tmp_path, "neg")
    assert cfg.train.patience == 0
    cfg.train.patience = -1
    with pytest.raises(ValueError, match="train.patience"):
        Trainer(cfg, progress=False)
