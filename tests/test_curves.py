"""Curves of a run and of an evaluation: the validation loss (results.csv, the training
curves), the learning rate of every step (steps.csv, drawn per step so the warmup shows),
and F1 / precision / recall against the confidence threshold with the chosen threshold
marked (the F1-best one, or a checkpoint's own)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import coco128_dataset, perturbed
from test_finetune import raccoon_parts, tiny_cfg
from test_threshold import IMAGE1, IMAGE2

from retinanet.checkpoint import save_checkpoint
from retinanet.cli import main
from retinanet.config import preset, to_dict
from retinanet.data.images import read_image
from retinanet.data.labels import CROWD_LABEL, PAD_LABEL
from retinanet.engine import Trainer
from retinanet.evaluation import score_detections
from retinanet.evaluation.threshold import confidence_curves, f1_threshold, threshold_on
from retinanet.history import plot_training_curves, read_results_csv, training_figure
from retinanet.model import build_model
from retinanet.preprocess import letterbox


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png(path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"


# ----------------------------------------------------------------------------- a run's curves


@pytest.fixture(scope="module")
def run(raccoon, tmp_path_factory):
    """2 epochs of 2 steps (4 photos, batches of 2), warmup over the first epoch; 2 photos validate."""
    train, val = raccoon_parts(raccoon, 4, 2)
    cfg = tiny_cfg(tmp_path_factory.mktemp("curves"), "run", epochs=2, batch_size=2, warmup_epochs=1.0, loggers=())
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)
    trainer.fit()
    trainer.close()
    return trainer


def test_results_csv_holds_the_validation_loss_of_the_training_loss_function(run):
    rows = _rows(run.run_dir / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        parts = [float(r[f"val_{k}"]) for k in ("loss", "cls", "box")]
        assert all(np.isfinite(parts)) and parts[0] > 0
        assert parts[0] == pytest.approx(parts[1] + parts[2], rel=1e-5)

    # The last epoch's value by hand: the EMA weights in eval mode on the letterboxed
    # validation photos (no augmentation), the model's own loss, no gradient.
    model, records = run.eval_model, run.val_data.records
    images, scales, _ = letterbox([read_image(r.image_path) for r in records], model.cfg.input_size)
    g = max(len(r.labels) for r in records)
    boxes, labels = torch.zeros(len(records), g, 4), torch.full((len(records), g), PAD_LABEL)
    for i, (r, s) in enumerate(zip(records, scales.tolist())):
        boxes[i, : len(r.labels)] = torch.from_numpy(r.boxes) * s
        labels[i, : len(r.labels)] = torch.from_numpy(np.where(r.ignore, CROWD_LABEL, r.labels))
    model.eval()
    with torch.no_grad():
        expected = model.loss(model(images), images.shape[-2:], boxes, labels)
    model.train()
    assert float(rows[-1]["val_loss"]) == pytest.approx(float(expected["loss"]), rel=1e-4)
    assert float(rows[-1]["val_box"]) == pytest.approx(float(expected["box"]), rel=1e-4)


def test_steps_csv_holds_every_steps_learning_rate_through_the_warmup(run):
    rows = _rows(run.run_dir / "steps.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["epoch"]) for r in rows] == [0.5, 1.0, 1.5, 2.0]
    lr = [float(r["lr"]) for r in rows]
    t = run.cfg.train
    assert lr[0] == pytest.approx(t.lr * t.warmup_factor)  # the first step runs at the warmup's start
    assert lr[1] == pytest.approx(t.lr * (t.warmup_factor + (1 - t.warmup_factor) / 2))  # half way up
    assert lr[2] == pytest.approx(t.lr) and lr[3] < lr[2]  # the peak, then the cosine
    assert all(float(r["loss"]) > 0 for r in rows)


def test_training_curves_draw_the_validation_loss_and_the_lr_per_step(run):
    cols = read_results_csv(run.run_dir / "results.csv")
    steps = read_results_csv(run.run_dir / "steps.csv")
    fig = training_figure(cols, steps)
    loss_ax, _, lr_ax = fig.axes[:3]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert {"train loss", "val loss", "val cls", "val box"} <= set(lines)
    assert lines["val loss"].get_linestyle() == "--" and lines["train loss"].get_linestyle() == "-"
    np.testing.assert_allclose(lines["val loss"].get_ydata(), cols["val_loss"])
    (lr_line,) = lr_ax.get_lines()
    np.testing.assert_allclose(lr_line.get_xdata(), [0.5, 1.0, 1.5, 2.0])  # per step, not per epoch
    np.testing.assert_allclose(lr_line.get_ydata(), steps["lr"])
    _png(plot_training_curves(run.run_dir / "results.csv", run.run_dir / "training_curves.png"))


# ----------------------------------------------------------------------------- F1 / P / R curves


def test_confidence_curves_hand_computed():
    # The case of test_threshold: the F1-best threshold is 0.45 (F1 0.75, precision 0.6, recall 1).
    dets, gts = [IMAGE1[0], IMAGE2[0]], [IMAGE1[1], IMAGE2[1]]
    c = confidence_curves(dets, gts, num_classes=2, marks=[0.45])
    at = int(np.searchsorted(c.confidence, 0.45))
    assert c.confidence[at] == 0.45 and c.confidence[0] == 0.0 and c.confidence[-1] == 1.0
    assert (c.all_f1[at], c.all_precision[at], c.all_recall[at]) == pytest.approx((0.75, 0.6, 1.0))
    assert c.all_f1.max() == pytest.approx(f1_threshold(dets, gts).f1)
    # Class 0 (boxes A and C): kept at 0.45 are 0.9 TP, 0.8 FP, 0.7 FP, 0.5 TP (0.95 lies on R).
    assert (c.precision[0, at], c.recall[0, at], c.f1[0, at]) == pytest.approx((0.5, 1.0, 4 / 6))
    # Class 1 (box B): 0.6 TP kept, 0.4 FP not.
    assert (c.precision[1, at], c.recall[1, at], c.f1[1, at]) == pytest.approx((1.0, 1.0, 1.0))
    assert c.boxes.tolist() == [2, 1]
    top = int(np.searchsorted(c.confidence, 0.96))  # nothing kept: precision undefined, recall 0
    assert np.isnan(c.all_precision[top]) and c.all_recall[top] == 0.0


@pytest.fixture(scope="module")
def coco128_scored(coco128, tmp_path_factory):
    ds = coco128_dataset(coco128)
    dets = perturbed(ds)
    out = tmp_path_factory.mktemp("scored")
    return ds, dets, out, score_detections(ds, dets, out_dir=out, plots=True)


def test_evaluation_plots_f1_p_r_curves_marking_the_f1_best_threshold(coco128_scored):
    ds, dets, out, report = coco128_scored
    for name in ("F1_curve.png", "P_curve.png", "R_curve.png", "pr_curves.png"):
        _png(out / name)
        assert report.files[name.removesuffix(".png")] == out / name
    found = threshold_on(ds.records, dets)
    marked = report.conf_threshold
    assert marked["chosen_by"] == "best F1" and marked["threshold"] == found.threshold
    assert (marked["f1"], marked["precision"], marked["recall"]) == pytest.approx((found.f1, found.precision, found.recall))
    assert json.loads((out / "metrics.json").read_text())["conf_threshold"] == marked


@pytest.fixture
def checkpoint_with_threshold(tmp_path):
    torch.manual_seed(0)
    cfg = preset("default", num_classes=1, input_size=128)
    cfg.backbone.weights, cfg.backbone.freeze_bn = "none", False
    cfg.postprocess.score_thresh, cfg.rect = 0.0, False
    model = build_model(cfg, class_names=["raccoon"], category_ids=[0])
    state = {"model": model.state_dict(), "config": {"model": to_dict(cfg)}, "class_names": ["raccoon"], "category_ids": [0]}
    return save_checkpoint({**state, "conf_threshold": 0.3}, tmp_path / "best.pt")


def test_eval_of_a_checkpoint_marks_its_stored_threshold(raccoon, checkpoint_with_threshold, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(checkpoint_with_threshold), "--data", str(raccoon), "--split", "test", "--out", str(out)]
    assert main([*args, "--max-images", "3", "--batch", "3"]) == 0
    marked = json.loads((out / "metrics.json").read_text())["conf_threshold"]
    assert marked["threshold"] == 0.3 and marked["chosen_by"] == "checkpoint"
    for name in ("F1_curve.png", "P_curve.png", "R_curve.png"):
        _png(out / name)


def test_confidence_curves_draw_math_like_class_names(tmp_path):
    from retinanet.evaluation.plots import plot_confidence_curve

    confidence = np.linspace(0, 1, 11)
    per_class = np.stack([1 - confidence, confidence, np.full(11, np.nan)])  # the third class has no boxes: skipped
    path = plot_confidence_curve(tmp_path / "F1.png", confidence, per_class, 0.5 * np.ones(11), ["$\\foo$", "cost $5 to $10", "x"], "F1", (0.4, 0.5, "best F1"))
    _png(path)
