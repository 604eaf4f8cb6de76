"""`retinanet export --format litert`: the network alone as a LiteRT flatbuffer (litert-torch),
run by ai-edge-litert behind Detector with our letterbox and decode; parity with eager on
real photos, metadata in the flatbuffer, one-line refusals for files that are not ours."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import ai_edge_litert  # noqa: F401  the set-up installs it: a missing package fails here, never skips
import numpy as np
import pytest

from retinanet.api import Detector
from retinanet.checkpoint import model_from_checkpoint
from retinanet.cli import main
from retinanet.export import match_detections
from retinanet.export.litert import with_metadata
from retinanet.export.metadata import read_litert_metadata
from test_export import CATEGORY_IDS, CLASS_NAMES, SIZE, assert_fp32_parity, real_images


@pytest.fixture(scope="module")
def exported_tflite(exported, coco128, tmp_path_factory):
    """The shared checkpoint exported through the CLI as LiteRT fp32 and int8 (calibrated on
    16 coco128 photos, none of the compared ones), both checked with --verify, once for the
    whole module: the fp32 path and what the command printed."""
    ckpt, _ = exported
    tmp = tmp_path_factory.mktemp("litert")
    calibration = tmp / "calibration"
    calibration.mkdir()
    for photo in sorted((coco128 / "train2017").glob("*.jpg"))[20:36]:
        (calibration / photo.name).symlink_to(photo)
    out = tmp / "model.tflite"
    printed = io.StringIO()
    args = ["export", str(ckpt), "--format", "litert", "--out", str(out), "--int8", "--calibration", str(calibration),
            "--calibration-images", "16", "--verify", str(coco128 / "train2017")]  # fmt: skip
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def tflite(exported_tflite):
    return exported_tflite[0]


def _square_eager(ckpt) -> Detector:
    """Eager PyTorch letterboxing to the full square, as the .tflite takes its input."""
    model = model_from_checkpoint(ckpt)
    model.cfg.rect = False
    return Detector(model, conf=0.01)


def test_litert_matches_eager_on_real_photos(exported, tflite, coco128, raccoon):
    eager, lite = _square_eager(exported[0]), Detector(tflite, conf=0.01)
    assert lite.backend_name == "litert"
    assert_fp32_parity(eager, lite, real_images(coco128, raccoon))


def test_thresholds_and_agnostic_nms_per_call(exported, tflite, coco128):
    img = coco128 / "train2017" / "000000000034.jpg"
    eager, lite = _square_eager(exported[0]), Detector(tflite)
    low, high = lite.predict(img, conf=0.02), lite.predict(img, conf=0.1)
    assert len(high) < len(low) and (high.scores > 0.1).all()
    for kwargs in ({"conf": 0.03, "iou": 0.2}, {"conf": 0.03, "agnostic": True}, {"conf": 0.02, "max_det": 5}):
        a, b = eager.predict(img, **kwargs), lite.predict(img, **kwargs)
        assert len(a) == len(b) > 0 and match_detections(a, b)[0] == 1.0, kwargs
    assert len(lite.predict(img, conf=0.02, max_det=5)) == 5


def test_metadata_travels_in_the_flatbuffer(exported, tflite):
    det = Detector(tflite)
    assert det.class_names == CLASS_NAMES and det.category_ids == CATEGORY_IDS and det.input_size == SIZE
    meta = read_litert_metadata(tflite)
    model = model_from_checkpoint(exported[0])
    assert meta["format"] == "retinanet-mobilenet-litert/1" and json.loads(meta["anchors"])["sizes"] == list(model.cfg.anchors.sizes)
    assert sum(json.loads(meta["level_counts"])) == len(model.anchors((SIZE, SIZE))[0])
    assert (det.backend.score_thresh, det.backend.nms_iou) == (model.cfg.postprocess.score_thresh, model.cfg.postprocess.nms_iou)


def test_a_stored_threshold_is_the_default(tflite, tmp_path):
    meta = read_litert_metadata(tflite)
    stamped = tmp_path / "stamped.tflite"
    stamped.write_bytes(with_metadata(tflite.read_bytes(), {**meta, "conf_threshold": "0.07"}))
    assert Detector(stamped).conf == pytest.approx(0.07)
    assert read_litert_metadata(stamped)["conf_threshold"] == "0.07"  # replaced, not a second entry


def test_files_that_are_not_ours_are_one_clear_line(tflite, tmp_path):
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(with_metadata(tflite.read_bytes(), {"format": "someone-else/1"}))
    with pytest.raises(RuntimeError, match=r"foreign\.tflite: not exported by `retinanet export --format litert`"):
        Detector(foreign)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 4 + b"TFL3" + b"\xff" * 64)
    with pytest.raises(RuntimeError, match=r"garbage\.tflite: "):
        Detector(garbage)
    text = tmp_path / "text.tflite"
    text.write_text("not a model")
    with pytest.raises(RuntimeError, match=r"text\.tflite: not a LiteRT / TFLite flatbuffer"):
        Detector(text)
    with pytest.raises(ValueError, match=r"model\.tflite: a LiteRT model runs on the CPU here"):
        Detector(shutil.copy(tflite, tmp_path / "model.tflite"), device="cuda")


def test_export_refusals(exported, tmp_path, capsys):
    ckpt, _ = exported
    onnx_only = ["--int8", "--calibration", str(tmp_path), "--calibration-method", "entropy"]
    for extra, says in ((onnx_only, "apply to ONNX only"), (["--rect"], "--rect does not apply"), (["--int8"], "--int8 needs --calibration")):
        assert main(["export", str(ckpt), "--format", "litert", "--out", str(tmp_path / "m.tflite"), *extra]) != 0
        assert says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_verify_and_eval_take_the_tflite(exported_tflite, tflite, coco128, tmp_path):
    line = [s for s in exported_tflite[1].splitlines() if s.startswith("model.tflite: eager vs LiteRT on 16 images")]
    assert len(line) == 1 and "detections matched" in line[0]  # parity itself: test_litert_matches_eager_on_real_photos
    args = ["eval", "--model", str(tflite), "--data", str(coco128), "--split", "train2017", "--max-images", "6",
            "--conf", "0.01", "--no-plots", "--out", str(tmp_path / "eval")]  # fmt: skip
    assert main(args) == 0
    found = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert len(found) > 20 and {d["category_id"] for d in found} <= set(CATEGORY_IDS)


def test_int8_flatbuffer_is_quantized_and_keeps_the_scores(exported_tflite, tflite, coco128, raccoon):
    q = tflite.with_name("model.int8.tflite")
    det = Detector(q, conf=0.0)
    assert det.backend_name == "litert" and det.backend.meta["precision"] == "int8" and det.class_names == CLASS_NAMES
    tensors = det.backend.interpreter.get_tensor_details()
    int8_weights = [t for t in tensors if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["quantization_parameters"]["scales"].size > 1]
    assert len(int8_weights) > 50  # the convs hold per-channel int8 weights
    assert read_litert_metadata(tflite).get("precision", "fp32") == "fp32"
    fp32 = Detector(tflite, conf=0.0)
    files = real_images(coco128, raccoon)
    gaps = [abs(float(a.scores[:20].mean()) - float(b.scores[:20].mean())) for a, b in zip(fp32.predict(files), det.predict(files))]
    # Measured on this model: mean gap 0.005, largest 0.010.
    assert sum(gaps) / len(gaps) < 0.015 and max(gaps) < 0.03, gaps
    lines = [s for s in exported_tflite[1].splitlines() if s.startswith("model.int8.tflite: eager vs LiteRT on 16 images")]
    assert len(lines) == 1, exported_tflite[1]
