"""`retinanet export --raw`: the network alone, run by OpenCV's DNN module (in a child
process: a crash there must not take the test session with it) and decoded by
postprocess.postprocess_raw, gives the eager model's detections on real photos."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch

from retinanet.checkpoint import model_from_checkpoint
from retinanet.cli import main
from retinanet.config import PostprocessConfig
from retinanet.data.images import read_image
from retinanet.export import match_detections
from retinanet.export.metadata import metadata_of
from retinanet.postprocess import postprocess_raw
from retinanet.preprocess import letterbox
from test_export import SIZE, real_images

CONF = 0.01  # the untrained test model scores low

OPENCV_CHILD = textwrap.dedent(
    """
    import sys, numpy as np, cv2
    net = cv2.dnn.readNetFromONNX(sys.argv[1])
    x = np.load(sys.argv[2])
    outs = []
    for i in range(len(x)):
        net.setInput(x[i : i + 1])
        outs.append(net.forward(["cls_logits", "box_deltas", "anchors"]))
    np.savez(sys.argv[3], cls=np.concatenate([o[0] for o in outs]), box=np.concatenate([o[1] for o in outs]), anchors=outs[0][2])
    """
)


@dataclass
class _Found:
    boxes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@pytest.fixture(scope="module")
def raw_model(exported, tmp_path_factory):
    ckpt, _ = exported
    out = tmp_path_factory.mktemp("raw") / "model.raw.onnx"
    assert main(["export", str(ckpt), "--raw", "--out", str(out)]) == 0
    return out


def test_raw_graph_signature_and_metadata(raw_model):
    model = onnx.load(str(raw_model))
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["cls_logits", "box_deltas", "anchors"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, SIZE, SIZE]
    assert not any(n.op_type in ("NonMaxSuppression", "TopK", "DequantizeLinear") for n in model.graph.node)
    meta = metadata_of(model)
    assert meta["format"] == "retinanet-mobilenet-raw/1" and json.loads(meta["class_names"]) == ["cat", "dog", "bird"]
    assert sum(json.loads(meta["level_counts"])) > 0


def test_opencv_runs_the_raw_graph_to_eager_detections(exported, raw_model, coco128, raccoon, tmp_path):
    ckpt, _ = exported
    files = real_images(coco128, raccoon)
    images = [read_image(f) for f in files]
    x, scales, sizes = letterbox(images, SIZE)  # the square the raw graph takes
    np.save(tmp_path / "x.npy", x.numpy())
    child = subprocess.run(
        [sys.executable, "-c", OPENCV_CHILD, str(raw_model), str(tmp_path / "x.npy"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    meta = metadata_of(onnx.load(str(raw_model)))
    post = PostprocessConfig(score_thresh=CONF)
    model = model_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        eager = model.postprocess(model(x), (SIZE, SIZE), scales, sizes, post=post)
    np.testing.assert_allclose(out["anchors"], model.anchors((SIZE, SIZE))[0].numpy(), atol=1e-3)
    total = 0
    for i, ref in enumerate(eager):
        got = postprocess_raw(out["cls"][i], out["box"][i], out["anchors"], meta, float(scales[i]), tuple(sizes[i].tolist()), post)
        a = _Found(ref.boxes.numpy(), ref.labels.numpy())
        b = _Found(got.boxes.numpy(), got.labels.numpy())
        assert len(a) == len(b) and match_detections(a, b)[0] == 1.0, files[i]
        total += len(a)
    assert total > 50


def test_postprocess_raw_defaults_come_from_the_metadata(raw_model):
    meta = metadata_of(onnx.load(str(raw_model)))
    m = sum(json.loads(meta["level_counts"]))
    logits = np.full((m, 3), -10.0, np.float32)
    logits[5, 1] = 0.0  # score 0.5, above the exported 0.05
    logits[7, 2] = -3.5  # score 0.029, below it
    anchors = np.tile(np.array([[10, 10, 40, 40]], np.float32), (m, 1))
    det = postprocess_raw(logits, np.zeros((m, 4), np.float32), anchors, meta, scale=0.5, orig_hw=(200, 300))
    assert det.labels.tolist() == [1] and det.scores.tolist() == pytest.approx([0.5])
    assert det.boxes.tolist() == [[20.0, 20.0, 80.0, 80.0]]  # input pixels / scale


def test_raw_refuses_what_it_cannot_do(exported, tmp_path, capsys):
    ckpt, _ = exported
    assert main(["export", str(ckpt), "--raw", "--format", "openvino", "--out", str(tmp_path / "m.onnx")]) == 1
    assert "--raw writes the network alone" in capsys.readouterr().err and not list(tmp_path.iterdir())
