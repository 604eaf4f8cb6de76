"""Result: the image it was predicted from is kept (a reference, not a copy), and gives
plot(), save(), crops(); to_json() and to_pandas() give the detections as data."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image


from retinanet.api import Result, annotate
from retinanet.data.images import read_image


@pytest.fixture(scope="module")
def photo(coco128):
    return coco128 / "train2017" / "000000000034.jpg"


def _hand_made(image: torch.Tensor | None = None) -> Result:
    return Result(
        boxes=np.array([[10.2, 5.7, 20.5, 15.0], [0.0, 0.0, 0.1, 0.1], [55.0, 45.0, 70.0, 60.0]], np.float32),
        scores=np.array([0.9, 0.5, 0.25], np.float32),
        labels=np.array([2, 0, 1]),
        names=["bird", "cat", "dog"],
        image_size=(50, 60),
        source="pic.png",
        category_ids=[16, 17, 18],
        image=image,
    )


def _coded_image(h: int = 50, w: int = 60) -> torch.Tensor:
    """(3, H, W) uint8 whose pixel (y, x) holds (y, x, 7): a crop tells where it came from."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return torch.from_numpy(np.stack([ys, xs, np.full_like(ys, 7)]).astype(np.uint8))


def test_plot_and_save_draw_the_detections_on_the_kept_image(onnx_detector, photo, tmp_path):
    r = onnx_detector.predict(photo)
    assert r.image is not None and tuple(r.image.shape) == (3, *r.image_size)
    drawn = r.plot()
    original = read_image(photo).permute(1, 2, 0).numpy()
    assert drawn.shape == original.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, original)
    np.testing.assert_array_equal(drawn, annotate(read_image(photo), r))
    written = r.save(tmp_path / "new" / "drawn.png")
    assert written == tmp_path / "new" / "drawn.png"
    np.testing.assert_array_equal(np.asarray(Image.open(written)), drawn)  # PNG: lossless
    odd = r.save(tmp_path / "drawn.xyz")  # a suffix Pillow does not write: PNG
    assert odd.name == "drawn.png" and odd.exists()


def test_the_image_is_a_reference_and_can_be_let_go(onnx_detector, photo):
    chw = read_image(photo)
    r = onnx_detector.predict(chw)
    assert r.image.data_ptr() == chw.data_ptr()  # no copy of the pixels
    a, b = onnx_detector.predict([photo, chw])
    assert torch.equal(a.image, chw) and b.image.data_ptr() == chw.data_ptr()
    r.image = None
    with pytest.raises(ValueError, match=r"Result.plot\(\) needs the image, and this Result holds none"):
        r.plot()
    with pytest.raises(ValueError, match=r"Result.crops\(\) needs the image"):
        r.crops()


def test_crops_hand_computed():
    crops = _hand_made(_coded_image()).crops()
    assert [c.shape for c in crops] == [(10, 11, 3), (1, 1, 3), (5, 5, 3)]
    # Rounded outwards: x 10.2..20.5 -> columns 10..20, y 5.7..15 -> rows 5..14.
    assert crops[0][0, 0].tolist() == [5, 10, 7] and crops[0][-1, -1].tolist() == [14, 20, 7]
    assert crops[1][0, 0].tolist() == [0, 0, 7]  # a box under one pixel still gives one
    assert crops[2][0, 0].tolist() == [45, 55, 7] and crops[2][-1, -1].tolist() == [49, 59, 7]  # clipped to the image
    # An image kept at half the file's size (a reduced JPEG decode): boxes are scaled to it.
    half = _hand_made(_coded_image(25, 30))
    assert half.crops()[0].shape == (6, 6, 3) and half.crops()[0][0, 0].tolist() == [2, 5, 7]  # y 2.85..7.5, x 5.1..10.25


def test_crops_of_real_detections(onnx_detector, photo):
    r = onnx_detector.predict(photo)
    crops = r.crops()
    assert len(crops) == len(r) > 5
    pixels = read_image(photo).permute(1, 2, 0).numpy()
    sizes = r.boxes[:, 2:] - r.boxes[:, :2]
    for i in np.flatnonzero((sizes >= 1).all(axis=1))[:5]:  # boxes of at least a pixel (others give one pixel)
        x1, y1, x2, y2 = r.boxes[i]
        top, left = int(np.floor(y1)), int(np.floor(x1))
        np.testing.assert_array_equal(crops[i], pixels[top : int(np.ceil(y2)), left : int(np.ceil(x2))])
    assert all(c.shape[0] >= 1 and c.shape[1] >= 1 for c in crops)


def test_to_json_hand_computed():
    data = json.loads(_hand_made().to_json())
    assert data == {
        "source": "pic.png", "frame": None, "height": 50, "width": 60,
        "detections": [
            {"box": [10.2, 5.7, 20.5, 15.0], "score": 0.9, "label": 2, "name": "bird", "category_id": 16},
            {"box": [0.0, 0.0, 0.1, 0.1], "score": 0.5, "label": 0, "name": "cat", "category_id": 17},
            {"box": [55.0, 45.0, 70.0, 60.0], "score": 0.25, "label": 1, "name": "dog", "category_id": 18},
        ],
    }  # fmt: skip
    empty = Result(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), [], (5, 6))
    assert json.loads(empty.to_json(indent=2))["detections"] == []


def test_to_json_of_a_prediction(onnx_detector, photo):
    r = onnx_detector.predict(photo)
    data = json.loads(r.to_json())
    assert data["source"] == str(photo) and (data["height"], data["width"]) == r.image_size
    assert [d["name"] for d in data["detections"]] == r.names
    np.testing.assert_allclose([d["box"] for d in data["detections"]], r.boxes, atol=0.01)


def test_to_pandas():  # pandas is in the test extra: CI has it
    df = _hand_made().to_pandas()
    assert list(df.columns) == ["x1", "y1", "x2", "y2", "score", "label", "name", "category_id"]
    assert df["name"].tolist() == ["bird", "cat", "dog"] and df["category_id"].tolist() == [16, 17, 18]
    np.testing.assert_allclose(df[["x1", "y1", "x2", "y2"]].to_numpy(), _hand_made().boxes)
    empty = Result(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), [], (5, 6)).to_pandas()
    assert len(empty) == 0 and "score" in empty.columns


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        _hand_made().to_pandas()
