"""Interruptions lose nothing. Real training processes on a handful of raccoon photos
receive SIGTERM mid-epoch or kill themselves at every point of an epoch's end
(RETINANET_CRASH_AT); each is resumed and must end exactly where an uninterrupted run
ends. A full disk is one line naming the file, and the previous checkpoint survives it."""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from retinanet.checkpoint import load_checkpoint, save_checkpoint
from retinanet.cli import main
from retinanet.data import load_dataset
from retinanet.engine import Trainer
from retinanet.run_folder import CRASH_ENV, CRASH_POINTS

HERE = Path(__file__).resolve().parent
# 12 training images in batches of 4: 3 steps an epoch, 2 epochs, on a small model (a
# kill test runs ten of these on a shared 2-core machine).
SMALL = ["model.input_size=96", "model.fpn.channels=32", "model.head.depth=1", "model.backbone.weights=none"]
TRAIN = [*SMALL, "epochs=2", "batch=4", "data.workers=0", "train.warmup_epochs=0.5", "train.ema_tau=4"]


def fake_validate(self, *args, **kwargs) -> dict:
    """A validation AP that rises every epoch, so every epoch writes best.pt (a few steps
    on 12 photos score AP 0 throughout, and an epoch that does not improve skips best.pt).
    CHILD_SIGTERM_IN_VAL=E: a SIGTERM arrives while epoch E validates."""
    if os.environ.get("CHILD_SIGTERM_IN_VAL") == str(self.epoch):
        os.kill(os.getpid(), signal.SIGTERM)
    return {"AP": self.epoch / 10}


CHILD = """
import json, os, signal, sys
import torch
from retinanet import engine
from retinanet.cli import main
from test_interruptions import fake_validate
torch.set_num_threads(2)  # as the test process: the same reductions, the same weights
argv, at = json.loads(sys.argv[1]), int(sys.argv[2])
if at > 0:  # SIGTERM after optimiser step `at`, as a scheduler would: to this process or its whole group
    init = engine.Trainer.__init__
    def on_step(t):
        if t.step == at:
            os.killpg(0, signal.SIGTERM) if os.environ.get("CHILD_GROUP") else os.kill(os.getpid(), signal.SIGTERM)
    engine.Trainer.__init__ = lambda self, *a, **k: init(self, *a, **{**k, "on_step": on_step})
if os.environ.get("CHILD_FAKE_AP"):
    engine.Trainer.validate = fake_validate
limit = int(os.environ.get("CHILD_FSIZE", "0"))
if limit:  # a disk that takes only `limit` bytes per file: EFBIG instead of SIGXFSZ
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(argv))
"""


def _coco(records, root: Path) -> dict:
    images, anns = [], []
    for i, r in enumerate(records, 1):
        images.append({"id": i, "file_name": r.image_path.name, "width": r.width, "height": r.height})
        for box, label in zip(r.boxes.tolist(), r.labels.tolist()):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "raccoon"}]}


@pytest.fixture(scope="module")
def spec(tmp_path_factory, raccoon) -> Path:
    """A COCO spec over 12 training and 4 validation photos of raccoon (read in place)."""
    folder = tmp_path_factory.mktemp("raccoon_few")
    records = sorted(load_dataset(raccoon, "train", progress=False).records, key=lambda r: r.image_path.name)
    images = records[0].image_path.parent
    splits = {}
    for name, part in (("train", records[:12]), ("val", records[12:16])):
        (folder / f"{name}.json").write_text(json.dumps(_coco(part, images)))
        splits[name] = {"annotations": str(folder / f"{name}.json"), "images": str(images)}
    (folder / "data.yaml").write_text(yaml.safe_dump({"format": "coco", **splits}))
    return folder / "data.yaml"


def _args(spec: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["train", "--data", str(spec), *TRAIN, *extra, f"train.out={out}", "--name", name, "--no-progress", "--no-final"]


def _child(argv: list[str], sigterm_at: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """A training process in its own process group (a group-wide SIGTERM stays inside it)."""
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(argv), str(sigterm_at)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])), **(env or {})},
        capture_output=True, text=True, timeout=600, start_new_session=True,
    )


@pytest.fixture(scope="module")
def rising_reference(spec, tmp_path_factory) -> Path:
    """The uninterrupted run with a validation AP that rises every epoch."""
    out = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "validate", fake_validate)
        assert main(_args(spec, out, "ref")) == 0
    return out / "ref"


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"])
    for part in ("model", "ema") if "ema" in sa else ("model",):  # best.pt holds the EMA weights as its model
        assert list(sa[part]) == list(sb[part])
        for (name, x), y in zip(sa[part].items(), sb[part].values()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=f"{a} {part} {name}")


def _epochs(run: Path) -> list[int]:
    with open(run / "results.csv", newline="") as f:
        return [int(float(row["epoch"])) for row in csv.DictReader(f)]


def _temps(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


# (how the signal comes, step after which it comes, where the message says training stopped,
#  (epoch, step, batch) saved in last.pt: batch None at an epoch's end)
SIGTERMS = {
    "mid-epoch": ({}, 4, "epoch 2/2, batch 1/3", (1, 4, 1)),
    "last batch of an epoch": ({}, 3, "epoch 1/2, batch 3/3", (0, 3, 3)),
    "to the process group, with a loader worker": ({"CHILD_GROUP": "1"}, 4, "epoch 2/2, batch 1/3", (1, 4, 1)),
    "during validation": ({"CHILD_SIGTERM_IN_VAL": "1"}, 0, "the end of epoch 1/2", (1, 3, None)),
}


@pytest.mark.parametrize("case", list(SIGTERMS))
def test_sigterm_saves_and_resumes_exactly(spec, rising_reference, tmp_path, monkeypatch, case):
    env, step, where, saved_at = SIGTERMS[case]
    run = tmp_path / "cut"
    argv = _args(spec, tmp_path, "cut", *(["data.workers=1"] if "CHILD_GROUP" in env else []))
    done = _child(argv, sigterm_at=step, env={"CHILD_FAKE_AP": "1", **env})
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    message = next(line for line in done.stderr.splitlines() if "SIGTERM" in line)
    assert f"training stopped at {where}" in message
    assert f"retinanet train --resume {run}" in message and str(run / "last.pt") in message
    saved = load_checkpoint(run / "last.pt")
    position = saved["position"]["batch"] if saved["position"] else None
    assert (saved["epoch"], saved["step"], position) == saved_at

    monkeypatch.setattr(Trainer, "validate", fake_validate)
    assert main(["train", "--resume", str(run), "--no-progress", "--no-final"]) == 0
    _same_weights(run / "last.pt", rising_reference / "last.pt")
    _same_weights(run / "best.pt", rising_reference / "best.pt")
    assert _epochs(run) == [1, 2]
    with open(run / "results.csv") as f, open(rising_reference / "results.csv") as g:  # the cut epoch's mean loss too
        cut, ref = list(csv.DictReader(f)), list(csv.DictReader(g))
    for a, b in zip(cut, ref):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_kill_at_any_point_of_an_epochs_end_leaves_a_resumable_folder(spec, rising_reference, tmp_path, point, monkeypatch):
    run = tmp_path / "killed"
    done = _child(_args(spec, tmp_path, "killed"), env={CRASH_ENV: f"{point}@2", "CHILD_FAKE_AP": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    if point.startswith("inside_"):
        assert _temps(run), "the kill should have left a temporary file"
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            load_checkpoint(run / name)  # never a torn file

    monkeypatch.setattr(Trainer, "validate", fake_validate)
    assert main(["train", "--resume", str(run), "--no-progress", "--no-final"]) == 0
    assert _temps(run) == []
    assert _epochs(run) == [1, 2]
    _same_weights(run / "last.pt", rising_reference / "last.pt")
    _same_weights(run / "best.pt", rising_reference / "best.pt")
    assert load_checkpoint(run / "best.pt")["metrics"]["AP"] == pytest.approx(0.2)


def test_a_run_killed_before_its_first_checkpoint_says_so(spec, tmp_path, capsys):
    done = _child(_args(spec, tmp_path, "early"), env={CRASH_ENV: "before_best@1"})
    assert done.returncode == -signal.SIGKILL
    assert main(["train", "--resume", str(tmp_path / "early"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "last.pt" in err and "not found" in err


@pytest.fixture
def small_files():
    """At most 64 KB per file written by this process: writes fail with EFBIG, as on a full disk."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_old_one(tmp_path, small_files):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(4)}, "epoch": 1}, path)
    before = path.read_bytes()
    with pytest.raises(OSError) as caught:
        save_checkpoint({"model": {"w": torch.randn(100_000)}, "epoch": 2}, path)  # 400 KB
    assert caught.value.filename == str(path) and caught.value.strerror == "cannot write (File too large)"
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_disk_full_during_training_is_one_line_naming_the_checkpoint(spec, tmp_path):
    done = _child(_args(spec, tmp_path, "full"), env={"CHILD_FSIZE": str(1024 * 1024)})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert lines[-1].startswith("retinanet train: error: ") and "best.pt: cannot write (File too large)" in lines[-1]
    assert _temps(tmp_path / "full") == []


def test_stale_temps_are_removed_and_nothing_else(tmp_path):
    from retinanet.run_folder import RunFolder

    names = ["last.pt.k2j4h7a_.tmp", "best.pt.abcdefgh.tmp", "results.csv.0a1b2c3d.tmp", "notes.draft_v2.tmp", "last.pt.tmp", "data.abcdefgh.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = sorted(p.name for p in RunFolder(tmp_path).open())
    assert removed == sorted(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


def test_atomic_files_get_the_mode_open_would_give(tmp_path):
    from retinanet.atomic import write_atomic

    old = os.umask(0o027)
    try:
        path = write_atomic(tmp_path / "results.csv", b"epoch\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
