"""`retinanet eval --model` on what ships: an exported .onnx and OpenVINO .xml scored
through api.Detector with the same metrics and files as a checkpoint."""

from __future__ import annotations

import json

import pytest

from retinanet.api import Detector
from retinanet.checkpoint import model_from_checkpoint
from retinanet.cli import main
from retinanet.config.evaluation import EvalConfig
from retinanet.data import load_dataset
from retinanet.evaluation import evaluate, score_detections
from retinanet.evaluation.exported import predict_with_detector
from retinanet.export.openvino import export_openvino

IMAGES = 12


def _eval(model, coco128, out):
    args = ["eval", "--model", str(model), "--data", str(coco128), "--split", "train2017", "--max-images", str(IMAGES),
            "--conf", "0.01", "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "detections.json").read_text())


def test_eval_of_onnx_and_openvino_models(exported, coco128, tmp_path):
    _, onnx_path = exported
    xml = export_openvino(onnx_path, tmp_path / "model.xml")
    m_onnx, d_onnx = _eval(onnx_path, coco128, tmp_path / "onnx")
    m_xml, d_xml = _eval(xml, coco128, tmp_path / "xml")
    assert m_xml["metrics"] == pytest.approx(m_onnx["metrics"], abs=2e-3)
    # The same graph in two runtimes: the same detections, in the dataset's ids and COCO xywh.
    assert len(d_onnx) == len(d_xml) > 50
    assert {d["category_id"] for d in d_onnx} <= {16, 17, 18}  # cat, dog, bird: the model's classes
    key = lambda d: (d["image_id"], d["category_id"], round(d["score"], 3))  # noqa: E731
    for a, b in zip(sorted(d_onnx, key=key), sorted(d_xml, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4) and a["bbox"] == pytest.approx(b["bbox"], abs=0.05)
    # ... and they are the Detector's own predictions on those files, in original pixels.
    first = min(d["image_id"] for d in d_onnx)
    mine = [d for d in d_onnx if d["image_id"] == first]
    path = next(r.image_path for r in load_dataset(str(coco128), "train2017", check="header").records if r.image_id == first)
    res = Detector(onnx_path, conf=0.01).predict(path)
    assert len(res) == len(mine)
    assert sorted(d["score"] for d in mine) == pytest.approx(sorted(float(s) for s in res.scores), abs=2e-4)


def test_evaluate_of_a_detector_scores_its_own_predictions(exported, coco128):
    ckpt, _ = exported
    dataset = load_dataset(str(coco128), "train2017", check="header")
    dataset.records = dataset.records[:IMAGES]
    cfg = EvalConfig(conf=0.01)
    detector = Detector(model_from_checkpoint(ckpt))  # the torch backend through the same path
    report = evaluate(detector, dataset, cfg, progress=False)
    # The same numbers as scoring the Detector's predictions directly, labels mapped by name.
    found = predict_with_detector(detector, dataset.records, cfg, progress=False)
    names = list(dataset.class_names)
    for d in found:
        d.labels[:] = d.labels.new_tensor([names.index(detector.class_names[int(i)]) for i in d.labels])
    direct = score_detections(dataset, found, cfg)
    assert report.metrics == pytest.approx(direct.metrics)
    assert sum(len(d.scores) for d in found) > 50 and min(float(d.scores.min()) for d in found if len(d.scores)) >= 0.01
