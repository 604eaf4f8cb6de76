"""Class-agnostic NMS as an option: in postprocess, the Detector (PyTorch: inside the
model's NMS; ONNX: the graph's per-class NMS at IoU 1.0, which removes nothing, then
class-agnostic NMS over its outputs), `retinanet predict --agnostic-nms` and `retinanet
eval --agnostic-nms`. Per class stays the default; an export carries the model's mode."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from test_export import build_test_model
from torchvision.ops import box_iou, nms

from retinanet.api import Detector
from retinanet.backends import after_graph, agnostic_nms, graph_iou
from retinanet.boxes import BoxCoder
from retinanet.checkpoint import save_checkpoint
from retinanet.cli import build_parser, main
from retinanet.config import EvalConfig, PostprocessConfig, to_dict
from retinanet.data.dataset import Record
from retinanet.data.images import image_info
from retinanet.evaluation.loop import predict_dataset
from retinanet.export import class_aware_nms, read_metadata, set_metadata
from retinanet.export.writer import export_metadata
from retinanet.postprocess import postprocess

# Two anchors 1 px apart (IoU 39 * 40 / (41 * 40) = 0.95): a cat at 0.95 on the first, a dog at 0.88 on the second.
ANCHORS = torch.tensor([[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0]])
LOGITS = torch.tensor([[[3.0, -9.0], [-9.0, 2.0]]])  # (1, 2 anchors, 2 classes)
CAT, DOG = 0, 1


@pytest.fixture(scope="module")
def photo(coco128):
    return coco128 / "train2017" / "000000000034.jpg"


def _two_boxes(agnostic: bool, images: int = 1):
    cfg = PostprocessConfig(agnostic=agnostic)
    return postprocess(LOGITS.repeat(images, 1, 1), torch.zeros(images, 2, 4), ANCHORS, [2], cfg, BoxCoder())


def test_per_class_keeps_both_agnostic_keeps_the_best():
    assert box_iou(ANCHORS[:1], ANCHORS[1:]).item() > 0.9
    (both,) = _two_boxes(agnostic=False)
    assert both.labels.tolist() == [CAT, DOG]
    (best,) = _two_boxes(agnostic=True)
    assert best.labels.tolist() == [CAT] and best.scores.item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    torch.testing.assert_close(best.boxes, ANCHORS[:1])
    # Images of one batch never suppress each other's boxes.
    assert [d.labels.tolist() for d in _two_boxes(agnostic=True, images=3)] == [[CAT]] * 3
    assert PostprocessConfig().agnostic is False  # the paper's per-class NMS is the default


class TwoBoxModel(torch.nn.Module):
    """The two overlapping boxes above for any image, through the real postprocess with the
    settings the Detector passes."""

    class_names, category_ids = ["cat", "dog"], [17, 18]

    def __init__(self, agnostic: bool = False):
        super().__init__()
        self.cfg = SimpleNamespace(input_size=64, postprocess=PostprocessConfig(agnostic=agnostic))

    def predict(self, images, post=None):
        return [_two_boxes_with(post) for _ in images]


def _two_boxes_with(post: PostprocessConfig):
    return postprocess(LOGITS, torch.zeros(1, 2, 4), ANCHORS, [2], post, BoxCoder())[0]


def test_detector_torch_backend(photo):
    det = Detector(TwoBoxModel())
    assert det.agnostic is False and det.predict(photo).names == ["cat", "dog"]
    assert det.predict(photo, agnostic=True).names == ["cat"]
    assert Detector(TwoBoxModel(), agnostic=True).predict(photo).names == ["cat"]
    assert Detector(TwoBoxModel(agnostic=True)).predict(photo).names == ["cat"]  # the model's own setting
    assert Detector(TwoBoxModel(agnostic=True)).predict(photo, agnostic=False).names == ["cat", "dog"]


def test_onnx_outputs_get_one_more_nms():
    boxes = ANCHORS.numpy().copy()
    scores, labels = np.array([0.95, 0.88], np.float32), np.array([CAT, DOG])
    kept = agnostic_nms(boxes, scores, labels, 0.5)
    assert kept[2].tolist() == [CAT] and np.array_equal(kept[0], boxes[:1])
    assert agnostic_nms(boxes, scores, labels, 0.99)[2].tolist() == [CAT, DOG]  # IoU 0.95 < 0.99: both stay


# A cat at 0.9, a dog at 0.8 and a dog at 0.7, side by side: IoU(A, B) = IoU(B, C) = 7.5 / 12.5 = 0.6,
# IoU(A, C) = 5 / 15 = 0.33. Class-agnostic NMS at 0.5 keeps A and C (B is suppressed by A, C overlaps
# only B); per-class NMS first would let B suppress C, and then A suppress B, keeping A alone.
ABC = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.5, 0.0, 12.5, 10.0], [5.0, 0.0, 15.0, 10.0]])
ABC_SCORES, ABC_LABELS = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([CAT, DOG, DOG])


def _torch_backend_abc(agnostic: bool):
    logits = torch.full((1, 3, 2), -9.0)
    logits[0, torch.arange(3), ABC_LABELS] = torch.logit(ABC_SCORES)
    post = PostprocessConfig(agnostic=agnostic, nms_iou=0.5)
    return postprocess(logits, torch.zeros(1, 3, 4), ABC, [3], post, BoxCoder())[0]


def _onnx_backend_abc(agnostic: bool, fed_iou: float | None = None):
    """The exported graph's NMS (class_aware_nms, the op ONNX runs) at the IoU the ONNX
    backend feeds it, then the backend's step after the graph."""
    iou = graph_iou(0.5, agnostic) if fed_iou is None else fed_iou
    rows = class_aware_nms(ABC[None], ABC_SCORES[None], ABC_LABELS[None], 100, torch.tensor([iou]), torch.tensor([0.05]))
    keep = rows[:, 2][ABC_SCORES[rows[:, 2]].argsort(descending=True)]  # the graph's outputs, best first
    boxes, scores, labels = ABC[keep].numpy(), ABC_SCORES[keep].numpy(), ABC_LABELS[keep].numpy()
    return after_graph(boxes, scores, labels, 0.5, 100, agnostic)


def test_agnostic_nms_keeps_the_same_boxes_on_both_backends():
    assert box_iou(ABC, ABC)[[0, 1, 0], [1, 2, 2]].tolist() == pytest.approx([0.6, 0.6, 1 / 3])
    torch_kept = _torch_backend_abc(agnostic=True)
    assert torch_kept.labels.tolist() == [CAT, DOG] and torch_kept.boxes.tolist() == [ABC[0].tolist(), ABC[2].tolist()]
    boxes, scores, labels = _onnx_backend_abc(agnostic=True)
    assert labels.tolist() == torch_kept.labels.tolist() and np.array_equal(boxes, torch_kept.boxes.numpy())
    np.testing.assert_allclose(scores, torch_kept.scores.numpy())
    assert _onnx_backend_abc(agnostic=True, fed_iou=0.5)[2].tolist() == [CAT]  # per class first: C is lost
    # Per class, both backends keep A and B (C is B's class and overlaps it).
    assert _torch_backend_abc(agnostic=False).labels.tolist() == [CAT, DOG]
    assert _onnx_backend_abc(agnostic=False)[0].tolist() == ABC[:2].tolist()


def test_real_model_both_backends(exported, photo):
    """A real model at a low threshold: agnostic NMS keeps fewer boxes. The PyTorch backend
    runs it on all candidates; the ONNX backend runs the graph's NMS at IoU 1.0 (nothing
    removed) and agnostic NMS over all the graph's outputs."""
    onnx_path = exported[1]
    torch_det = Detector(build_test_model(), conf=0.01, max_det=1000)
    per_class, agnostic = torch_det.predict(photo), torch_det.predict(photo, agnostic=True)
    assert len(agnostic) < len(per_class)
    assert torch_det.backend.model.cfg.postprocess.agnostic is False  # a per-call setting: the model is left per class
    onnx_det = Detector(onnx_path, conf=0.02)
    per_class, agnostic = onnx_det.predict(photo), onnx_det.predict(photo, agnostic=True)
    assert len(agnostic) < len(per_class)
    everything = onnx_det.predict(photo, iou=1.0)  # the graph's outputs with its NMS removing nothing
    keep = nms(torch.from_numpy(everything.boxes), torch.from_numpy(everything.scores), onnx_det.iou).numpy()
    np.testing.assert_array_equal(agnostic.labels, everything.labels[keep])
    np.testing.assert_allclose(agnostic.boxes, everything.boxes[keep])


def test_an_export_carries_the_models_nms_mode(exported, tmp_path):
    """postprocess.agnostic is written into the metadata and is the ONNX backend's default."""
    model = build_test_model()
    assert read_metadata(exported[1])["agnostic"] == "false" and Detector(exported[1]).agnostic is False
    post = PostprocessConfig(agnostic=True)
    assert export_metadata(model, 128, True, post, 100)["agnostic"] == "true"
    proto = onnx.load(str(exported[1]))
    set_metadata(proto, {"agnostic": "true"})
    onnx.save(proto, str(tmp_path / "agnostic.onnx"))
    det = Detector(tmp_path / "agnostic.onnx")
    assert det.agnostic is True and Detector(tmp_path / "agnostic.onnx", agnostic=False).agnostic is False
    set_metadata(proto, {"agnostic": "yes"})
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(RuntimeError, match="metadata agnostic='yes' does not parse"):
        Detector(tmp_path / "bad.onnx")


def test_evaluation_option(photo):
    info = image_info(photo)
    records = [Record(photo, 1, info.width, info.height)]
    model = build_test_model()
    model.cfg.postprocess.max_detections = 1000  # no cut: every box NMS keeps counts
    per_class = predict_dataset(model, records, EvalConfig(conf=0.01), progress=False)[0]
    agnostic = predict_dataset(model, records, EvalConfig(conf=0.01, agnostic=True), progress=False)[0]
    assert len(agnostic) < len(per_class)
    assert model.cfg.postprocess.agnostic is False


def _json(path):
    return json.loads(path.read_text())


def test_predict_and_eval_commands(exported, photo, coco128, tmp_path):
    ckpt, _ = exported
    counts = {}
    for flag in ([], ["--agnostic-nms"]):
        out = tmp_path / f"predict{len(flag)}"
        argv = ["predict", str(photo), "--model", str(ckpt), "--conf", "0.01", "--max-det", "1000", "--no-save"]
        assert main([*argv, "--out", str(out), *flag]) == 0
        counts[tuple(flag)] = len(_json(out / "detections.json")["annotations"])
    assert counts[("--agnostic-nms",)] < counts[()]
    assert build_parser().parse_args(["eval", "--model", "m.pt", "--data", "d"]).agnostic_nms is None  # the model's own
    model = build_test_model()
    model.cfg.postprocess.max_detections = 1000  # no cut: every box NMS keeps counts
    uncut = tmp_path / "uncut.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}, "class_names": model.class_names,
                     "category_ids": model.category_ids}, uncut)  # fmt: skip
    for flag in ([], ["--agnostic-nms"]):
        out = tmp_path / f"eval{len(flag)}"
        argv = ["eval", "--model", str(uncut), "--data", str(coco128), "--max-images", "1", "--no-plots", "--conf", "0.01"]
        assert main([*argv, "--out", str(out), *flag]) == 0
        counts[tuple(flag)] = len(_json(out / "detections.json"))
    assert counts[("--agnostic-nms",)] < counts[()]
