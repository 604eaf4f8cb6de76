"""Detector API: every input kind gives the same boxes in original pixels, for the
PyTorch and the ONNX Runtime backends; filters; result formats; bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import CATEGORY_IDS, CLASS_NAMES, build_test_model

from retinanet.api import Detector, Result, annotate, expand_images
from retinanet.data.images import ImageError, read_image


@pytest.fixture(scope="module")
def image(coco128):
    return coco128 / "train2017" / "000000000034.jpg"


@pytest.fixture(scope="module", params=["torch", "onnx"])
def detector(request, exported):
    ckpt, onnx_path = exported
    return Detector(ckpt if request.param == "torch" else onnx_path, conf=0.03)


def test_every_input_kind_gives_the_same_boxes(detector, image):
    ref = detector.predict(image)
    assert isinstance(ref, Result) and len(ref) > 5
    pil = Image.open(image)
    arr = np.asarray(pil.convert("RGB"))
    chw = read_image(image)
    h, w = arr.shape[:2]
    assert ref.image_size == (h, w) and ref.source == str(image)
    singles = [detector.predict(pil), detector.predict(arr), detector.predict(chw), detector.predict(chw.float() / 255)]
    batches = detector.predict([image, pil, arr, chw]) + detector.predict(np.stack([arr, arr])) + detector.predict(chw[None])
    for r in singles + batches:
        assert isinstance(r, Result) and r.image_size == (h, w)
        assert np.array_equal(r.labels, ref.labels)
        # float input: its own rounding to uint8 (onnx) or no rounding (torch) moves boxes a hair
        np.testing.assert_allclose(r.boxes, ref.boxes, atol=0.05)
        np.testing.assert_allclose(r.scores, ref.scores, atol=1e-4)
    # Boxes are in this image's pixels, inside it; names and category ids follow labels.
    assert (ref.boxes >= 0).all() and (ref.boxes[:, [0, 2]] <= w).all() and (ref.boxes[:, [1, 3]] <= h).all()
    assert ref.names == [CLASS_NAMES[i] for i in ref.labels]
    assert ref.category_ids == [CATEGORY_IDS[i] for i in ref.labels]
    assert (np.diff(ref.scores) <= 0).all()


def test_mixed_sizes_keep_input_order(detector, image, raccoon):
    other = raccoon / "images" / "raccoon-1.jpg"
    a, b = detector.predict(image), detector.predict(other)
    ra, rb, ra2 = detector.predict([image, other, image])
    assert ra.image_size == a.image_size and rb.image_size == b.image_size
    # image runs in a batch of 2 vs alone: conv blocking differs, so allow float noise (0.01 px)
    np.testing.assert_allclose(ra.boxes, a.boxes, atol=1e-2)
    np.testing.assert_allclose(rb.boxes, b.boxes, atol=1e-2)
    np.testing.assert_allclose(ra2.boxes, a.boxes, atol=1e-2)


def test_grey_and_rgba_arrays(detector, raccoon):
    grey_file = next(p for p in sorted((raccoon / "images").glob("*.jpg")) if Image.open(p).mode == "L")
    grey = np.asarray(Image.open(grey_file))
    assert grey.ndim == 2
    from_file, from_array = detector.predict(grey_file), detector.predict(grey)
    np.testing.assert_allclose(from_array.boxes, from_file.boxes, atol=1e-3)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full_like(grey[..., None], 255)], axis=2)  # opaque: same as RGB
    np.testing.assert_allclose(detector.predict(rgba).boxes, from_file.boxes, atol=1e-3)


def test_filters(detector, image):
    everything = detector.predict(image)
    strict = detector.predict(image, conf=0.1)
    assert 0 < len(strict) < len(everything)
    # Same NMS, higher threshold: exactly the detections above it.
    above = everything.scores > 0.1
    np.testing.assert_allclose(strict.boxes, everything.boxes[above], atol=1e-3)
    top3 = detector.predict(image, max_det=3)
    np.testing.assert_allclose(top3.scores, everything.scores[:3], atol=1e-6)
    label = int(everything.labels[0])
    by_name = detector.predict(image, classes=[CLASS_NAMES[label]])
    by_index = detector.predict(image, classes=[str(label)])
    assert set(by_name.labels.tolist()) == {label} and np.array_equal(by_name.boxes, by_index.boxes)
    assert len(by_name) == int((everything.labels == label).sum())
    with pytest.raises(ValueError, match="unknown class 'zebra'.*cat, dog, bird"):
        detector.predict(image, classes=["zebra"])
    with pytest.raises(ValueError, match="class index 7 out of range"):
        detector.predict(image, classes=[7])
    with pytest.raises(ValueError, match="confidence"):
        detector.predict(image, conf=1.5)


def test_result_formats_hand_computed():
    r = Result(
        boxes=np.array([[10, 20, 50, 60], [0, 0, 200, 100]], np.float32),
        scores=np.array([0.9, 0.25], np.float32),
        labels=np.array([2, 0]),
        names=["bird", "cat"],
        image_size=(100, 200),
        category_ids=[16, 17],
    )
    assert r.to_coco(7) == [
        {"image_id": 7, "category_id": 16, "bbox": [10.0, 20.0, 40.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 17, "bbox": [0.0, 0.0, 200.0, 100.0], "score": pytest.approx(0.25)},
    ]
    # cx = 30 / 200, cy = 40 / 100, w = 40 / 200, h = 40 / 100
    assert r.to_yolo() == ["2 0.150000 0.400000 0.200000 0.400000", "0 0.500000 0.500000 1.000000 1.000000"]
    assert r.to_yolo(with_score=True)[1].endswith(" 0.25000")


def test_annotate_draws_the_boxes():
    img = np.zeros((80, 100, 3), np.uint8)
    r = Result(np.array([[10, 10, 80, 60]], np.float32), np.array([0.5], np.float32), np.array([1]), ["dog"], (80, 100))
    out = annotate(img, r)
    assert out.shape == (80, 100, 3) and out.dtype == np.uint8
    assert out[10, 50].any() and out[40, 10].any() and out[60, 50].any()  # top, left, bottom edges
    assert not out[45, 45].any() and not out[75, 95].any()  # inside (below the label text) and outside stay black


def test_torch_backend_accepts_a_built_model(image):
    model = build_test_model()
    det = Detector(model)
    assert det.backend_name == "torch" and det.class_names == CLASS_NAMES and det.input_size == 128
    # A built model stores no tuned threshold: predict's fallback 0.25, not the model's 0.05
    assert det.conf == 0.25 and model.cfg.postprocess.score_thresh == 0.05
    ref = model.predict(read_image(image))[0]
    np.testing.assert_allclose(det.predict(image, conf=0.05).boxes, ref.boxes.numpy(), atol=1e-4)
    assert (det.predict(image).scores > 0.25).all()
    assert len(det.predict(image, conf=0.03)) > len(ref)
    assert model.cfg.postprocess.score_thresh == 0.05  # a per-call threshold leaves the model alone


def test_bad_inputs(detector, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg: image file not found"):
        detector.predict(tmp_path / "missing.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        detector.predict(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no images match"):
        detector.predict(str(tmp_path / "*.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match="bad.jpg: cannot decode image"):
        detector.predict(bad)
    with pytest.raises(ValueError, match=r"float image must hold finite values in \[0, 1\]"):
        detector.predict(np.full((10, 10, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="float tensor"):
        detector.predict(torch.full((3, 10, 10), float("nan")))
    with pytest.raises(ValueError, match="expected an"):
        detector.predict(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(ValueError, match="empty image"):
        detector.predict(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="unsupported dtype"):
        detector.predict(np.zeros((10, 10, 3), np.int32))
    with pytest.raises(ValueError, match="cannot predict on a dict"):
        detector.predict({"a": 1})


def test_model_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.onnx: model file not found"):
        Detector(tmp_path / "nothing.onnx")
    txt = tmp_path / "model.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="model.txt: unknown model format '.txt'"):
        Detector(txt)
    with pytest.raises(ValueError, match="needs a model path or a RetinaNet"):
        Detector(42)


def test_expand_images_sorted_and_filtered(tmp_path):
    for name in ("b.jpg", "a.png", "notes.txt", "c.JPEG"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in expand_images(tmp_path)] == ["a.png", "b.jpg", "c.JPEG"]
    assert [p.name for p in expand_images(str(tmp_path / "*.jpg"))] == ["b.jpg"]


def _with_stored_conf(exported, folder, value):
    """Copies of the test checkpoint and export that store ``value`` as their score threshold."""
    import onnx

    from retinanet.checkpoint import save_checkpoint
    from retinanet.export import set_metadata

    ckpt, onnx_path = exported
    folder.mkdir(exist_ok=True)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    stored_ckpt = save_checkpoint({**state, "conf_threshold": value}, folder / "stored.pt")
    graph = onnx.load(str(onnx_path))
    set_metadata(graph, {"conf_threshold": str(value)})
    onnx.save(graph, str(folder / "stored.onnx"))
    return stored_ckpt, folder / "stored.onnx"


def test_default_conf_is_the_models_stored_threshold(exported, image, tmp_path):
    from retinanet.checkpoint import model_from_checkpoint
    from retinanet.config import EvalConfig

    stored = _with_stored_conf(exported, tmp_path / "good", 0.07)
    assert Detector(stored[0]).conf == pytest.approx(0.07)
    det = Detector(stored[1])
    assert det.conf == pytest.approx(0.07)
    r = det.predict(image)
    assert len(r) > 0 and (r.scores > 0.07).all()
    assert len(r) < len(det.predict(image, conf=0.03))
    assert Detector(stored[1], conf=0.03).conf == 0.03  # an explicit threshold wins
    for path in exported:  # a model that stores none: predict's fallback, 0.25
        assert Detector(path).conf == 0.25
    for path in _with_stored_conf(exported, tmp_path / "bad", 1.5):  # an unusable stored value is ignored
        assert Detector(path).conf == 0.25
    model = build_test_model()
    model.conf_threshold = 0.07  # what a model loaded from such a checkpoint carries
    assert Detector(model).conf == pytest.approx(0.07)
    # Evaluation keeps the model's own 0.05: the stored threshold is for predictions only.
    assert EvalConfig().conf is None and model_from_checkpoint(stored[0]).cfg.postprocess.score_thresh == 0.05


def test_predict_command_conf_overrides_the_stored_one(exported, image, tmp_path):
    import json

    from retinanet.cli import main

    _, stored_onnx = _with_stored_conf(exported, tmp_path / "models", 0.07)
    scores = {}
    for extra in ([], ["--conf", "0.03"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["predict", str(image), "--model", str(stored_onnx), "--out", str(out), "--no-save", *extra]) == 0
        scores[len(extra)] = [a["score"] for a in json.loads((out / "detections.json").read_text())["annotations"]]
    assert scores[0] and min(scores[0]) > 0.07
    assert len(scores[2]) > len(scores[0]) and min(scores[2]) < 0.07
