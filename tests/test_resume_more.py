"""`--resume RUN epochs=N`: a finished run trains on to N epochs, its warmup + cosine
schedule re-planned from the resume point, and says so."""

from __future__ import annotations

import csv
import shutil

import pytest
import yaml
from test_finetune import SMALL_ARGS, write_spec

from retinanet.checkpoint import load_checkpoint
from retinanet.cli import main
from retinanet.engine import Trainer
from retinanet.optim import lr_factor

# 4 photos in batches of 4: a step an epoch, no warmup (the cosine starts at once).
TRAIN = [*SMALL_ARGS, "batch=4", "data.workers=0", "train.warmup_epochs=0", "train.lr=0.01", "train.min_lr_ratio=0.01"]


def _rows(run) -> list[dict]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_once(raccoon, tmp_path_factory):
    """A 1-epoch run, finished."""
    tmp = tmp_path_factory.mktemp("finished")
    spec = write_spec(tmp / "data", raccoon, n_train=4, n_val=2)
    assert main(["train", *TRAIN, "epochs=1", f"train.out={tmp}", "--data", str(spec), "--name", "run", "--no-progress", "--no-final"]) == 0
    assert load_checkpoint(tmp / "run" / "last.pt")["step"] == 1
    return tmp / "run"


@pytest.fixture
def finished(finished_once, tmp_path):
    """A copy of the finished run for one test to continue."""
    return shutil.copytree(finished_once, tmp_path / "run")


def test_a_finished_run_resumed_with_more_epochs_trains_one_more(finished, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(finished), "epochs=2", "--no-progress", "--no-final"]) == 0
    text = capsys.readouterr().out
    assert "epochs 1 -> 2: the learning-rate schedule is re-planned from step 1 (epoch 1)" in text
    last = load_checkpoint(finished / "last.pt")
    assert (last["epoch"], last["step"]) == (2, 2) and [int(r["epoch"]) for r in last["history"]] == [1, 2]
    assert [int(float(r["epoch"])) for r in _rows(finished)] == [1, 2]
    assert yaml.safe_load((finished / "config.yaml").read_text())["train"]["epochs"] == 2
    assert last["config"]["train"]["epochs"] == 2
    # The first run had ended at the minimum lr; the second epoch's step ran at the 2-epoch
    # plan's lr for step 1, half way down the cosine, which ends at the minimum again.
    assert float(_rows(finished)[0]["lr"]) == pytest.approx(0.01 * 0.01)
    assert f"lr {0.01 * lr_factor(1, 2, 0, 0.001, 0.01):.2e} now, cosine down to 1.00e-04 at epoch 2" in text
    assert float(_rows(finished)[1]["lr"]) == pytest.approx(0.01 * 0.01)


def test_the_schedule_is_replanned_from_the_resume_point(finished):
    before = load_checkpoint(finished / "last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert before == pytest.approx(0.01 * 0.01)  # the 1-epoch plan has ended: lr at its minimum
    trainer = Trainer.resume(finished, epochs=3, progress=False)
    expected = 0.01 * lr_factor(1, 3, 0, 0.001, 0.01)  # step 1 of a 3-epoch plan
    assert expected > 10 * before
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([expected, expected])
    assert trainer.scheduler.get_last_lr() == pytest.approx([expected, expected])
    trainer.close()


def test_resume_refuses_fewer_epochs_other_options_and_best_pt(finished, capsys):
    capsys.readouterr()
    for argv, message in (
        (["epochs=0"], "epochs=0: " + str(finished / "last.pt") + " has already trained 1 epochs"),
        (["train.lr=0.1"], "only epochs= (to train longer) and patience= may change"),
        (["--data", "elsewhere"], "only epochs= (to train longer) and patience= may change"),
    ):
        assert main(["train", "--resume", str(finished), *argv, "--no-progress"]) == 1
        assert message in capsys.readouterr().err
    assert main(["train", "--resume", str(finished / "best.pt"), "--no-progress"]) == 1
    assert "holds only the model for inference; resume from the run folder or its last.pt" in capsys.readouterr().err
