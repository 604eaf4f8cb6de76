"""The confidence threshold with the best F1 over all classes: the pure function against a
hand-computed case, and the value a training run stores in best.pt and the export carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinanet.evaluation.threshold import f1_threshold, match_image


def _det(*rows):
    """rows of (x1, y1, x2, y2, score, label)."""
    a = np.array(rows, np.float64).reshape(-1, 6)
    return a[:, :4], a[:, 4], a[:, 5].astype(int)


def _gt(*rows):
    """rows of (x1, y1, x2, y2, label, ignore)."""
    a = np.array(rows, np.float64).reshape(-1, 6)
    return a[:, :4], a[:, 4].astype(int), a[:, 5].astype(bool)


# Image 1: class 0 box A, class 1 box B.
#   0.90 class 0 on A shifted by 1 px (IoU 0.82): takes A first, being ranked first -> TP
#   0.80 class 0 exactly on A: A is taken                                          -> FP
#   0.70 class 0 on B: the wrong class                                             -> FP
#   0.60 class 1 on B                                                              -> TP
# Image 2: class 0 box C, and a class 0 ignore region R.
#   0.95 class 0 inside R: neither true nor false                                  -> ignored
#   0.50 class 0 on C                                                              -> TP
#   0.40 class 1 on C: no class 1 box there                                        -> FP
IMAGE1 = (
    _det((1, 0, 11, 10, 0.9, 0), (0, 0, 10, 10, 0.8, 0), (20, 20, 30, 30, 0.7, 0), (20, 20, 30, 30, 0.6, 1)),
    _gt((0, 0, 10, 10, 0, 0), (20, 20, 30, 30, 1, 0)),
)
IMAGE2 = (
    _det((60, 60, 70, 70, 0.95, 0), (0, 0, 10, 10, 0.5, 0), (0, 0, 10, 10, 0.4, 1)),
    _gt((0, 0, 10, 10, 0, 0), (50, 50, 100, 100, 0, 1)),
)


def test_greedy_matching_by_score_per_image_and_class():
    scores, tp = match_image(*IMAGE1)
    assert sorted(zip(scores.tolist(), tp.tolist()), reverse=True) == [(0.9, True), (0.8, False), (0.7, False), (0.6, True)]
    scores, tp = match_image(*IMAGE2)  # the detection on the ignore region is left out
    assert sorted(zip(scores.tolist(), tp.tolist()), reverse=True) == [(0.5, True), (0.4, False)]


def test_f1_threshold_hand_computed():
    # Ranked: 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, 0.5 TP, 0.4 FP; 3 boxes (R is ignored).
    # F1 = 2 TP / (kept + 3): 2/4, 2/5, 2/6, 4/7, 6/8, 6/9 -> best 0.75 keeping 5, at score 0.5;
    # the threshold lies halfway to the next score, 0.4.
    r = f1_threshold([IMAGE1[0], IMAGE2[0]], [IMAGE1[1], IMAGE2[1]])
    assert r.f1 == pytest.approx(0.75)
    assert r.threshold == pytest.approx(0.45)
    assert (r.precision, r.recall, r.kept, r.boxes) == (pytest.approx(0.6), pytest.approx(1.0), 5, 3)


def test_ties_and_the_floor():
    gt = _gt((0, 0, 10, 10, 0, 0), (20, 20, 30, 30, 0, 0))
    # Two detections share the score 0.7 (one TP, one FP): a threshold cannot split them.
    det = _det((0, 0, 10, 10, 0.9, 0), (40, 40, 50, 50, 0.7, 0), (20, 20, 30, 30, 0.7, 0))
    r = f1_threshold([det], [gt], floor=0.05)
    # keep 1: 2/3; keep all 3 (TP 2): 4/5 -> all kept; below the lowest score lies the floor.
    assert r.f1 == pytest.approx(0.8) and r.threshold == pytest.approx((0.7 + 0.05) / 2) and r.kept == 3


def test_nothing_matched_gives_no_threshold():
    gt = _gt((0, 0, 10, 10, 0, 0))
    r = f1_threshold([_det((50, 50, 60, 60, 0.9, 0))], [gt])
    assert r.threshold is None and r.f1 == 0.0
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    assert f1_threshold([empty], [gt]).threshold is None
    with pytest.raises(ValueError, match="detection lists"):
        f1_threshold([empty, empty], [gt])


# ----------------------------------------------------------------------------- in a run


@pytest.fixture(scope="module")
def raccoon_run(raccoon, tmp_path_factory):
    """A short raccoon run whose model keeps low scores (score_thresh 0.001), so its
    detections of the validation photos include matches."""
    from test_finetune import raccoon_parts, tiny_cfg

    from retinanet.engine import Trainer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("runs")
    train, val = raccoon_parts(raccoon, n_train=4, n_val=4)
    cfg = tiny_cfg(out, "run")
    cfg.model.postprocess.score_thresh = 0.001
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)
    result = trainer.fit()
    trainer.close()
    return out / "run", val, result


def test_best_pt_holds_the_inference_model_and_its_f1_threshold(raccoon_run):
    from retinanet.checkpoint import load_checkpoint, model_from_checkpoint
    from retinanet.config import EvalConfig
    from retinanet.evaluation.loop import label_mapping, predict_dataset, remap_labels
    from retinanet.evaluation.threshold import threshold_on

    run, val, result = raccoon_run
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert set(best) == {"format", "model", "config", "class_names", "category_ids", "conf_threshold", "conf_threshold_f1", "epoch", "step", "metrics"}
    assert {"optimizer", "ema", "scheduler", "rng", "history"} <= set(last)
    assert (run / "best.pt").stat().st_size < 0.7 * (run / "last.pt").stat().st_size
    for name, tensor in best["model"].items():  # the EMA weights are best.pt's model
        torch.testing.assert_close(tensor, last["ema"][name], msg=name)

    threshold = best["conf_threshold"]
    assert isinstance(threshold, float) and 0.001 < threshold < 1 and result.conf_threshold == threshold
    # The same number from best.pt's weights on the validation photos.
    model = model_from_checkpoint(run / "best.pt")
    assert model.conf_threshold == threshold
    detections = remap_labels(predict_dataset(model, val.records, EvalConfig(batch_size=4), progress=False), label_mapping(model.class_names, val))
    again = threshold_on(val.records, detections, floor=0.001)
    assert again.threshold == pytest.approx(threshold) and again.f1 == pytest.approx(best["conf_threshold_f1"]["f1"])
    assert again.f1 > 0


def test_best_pt_loads_for_predict_eval_and_export(raccoon_run, raccoon, tmp_path, capsys):
    from test_finetune import write_spec

    from retinanet.api import Detector
    from retinanet.checkpoint import load_checkpoint
    from retinanet.cli import main
    from retinanet.export import read_metadata

    run, val, _ = raccoon_run
    best = run / "best.pt"
    threshold = load_checkpoint(best)["conf_threshold"]
    det = Detector(best)
    assert det.class_names == ["raccoon"] and len(det.predict([val.records[0].image_path])) == 1

    spec = write_spec(tmp_path / "data", raccoon, n_train=4, n_val=4)  # val: the run's validation photos
    assert main(["eval", "--model", str(best), "--data", str(spec), "--split", "val", "--out", str(tmp_path / "eval"), "--no-plots"]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()

    onnx_path = tmp_path / "best.onnx"
    assert main(["export", str(best), "--out", str(onnx_path), "--square"]) == 0  # the metadata is what matters here
    meta = read_metadata(onnx_path)
    assert float(meta["conf_threshold"]) == pytest.approx(threshold)
    assert "wrote" in capsys.readouterr().out

    import onnx

    from retinanet.export.metadata import set_metadata

    model = onnx.load(str(onnx_path))
    set_metadata(model, {"conf_threshold": "high"})  # present, so it must parse
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(RuntimeError, match="metadata conf_threshold='high' does not parse"):
        read_metadata(tmp_path / "bad.onnx")
