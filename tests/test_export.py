"""ONNX export: the graph against eager PyTorch on real images, dynamic batch, metadata,
threshold inputs, BN folding, the in-graph letterbox, int8 structure, errors.

One small model (128 px, 3 classes, head perturbed so scores spread instead of tying at
the prior) is exported once per session through `retinanet export`; test_predict.py and
test_cli.py reuse it through ``exported``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms

from retinanet.api import Detector
from retinanet.checkpoint import model_from_checkpoint, save_checkpoint
from retinanet.cli import main
from retinanet.config import preset, to_dict
from retinanet.data.images import read_image
from retinanet.export import (
    PAD_LABEL,
    DetectionGraph,
    class_aware_nms,
    ExportConfig,
    QuantizeConfig,
    export_onnx,
    letterbox_graph,
    best_anchor_candidates,
    dequantize_late,
    level_candidates,
    match_detections,
    network_nodes,
    quantize_int8,
    read_metadata,
    set_metadata,
)
from retinanet.export.quantize import SELECTING_OPS
from retinanet.heads import fold_head_bn
from retinanet.model import build_model
from retinanet.preprocess import RECT_STRIDE, letterbox

SIZE = 128
CLASS_NAMES = ["cat", "dog", "bird"]
CATEGORY_IDS = [17, 18, 16]
COCO_IMAGES = ["000000000009.jpg", "000000000025.jpg", "000000000030.jpg", "000000000034.jpg"]
RACCOON_IMAGES = ["raccoon-1.jpg", "raccoon-23.jpg", "raccoon-150.jpg"]


_BUILT: dict[int, torch.nn.Module] = {}


# A seed whose perturbed head spreads scores across the thresholds the tests use (on
# 000000000034.jpg: 74 above 0.03, 20 above 0.05, 5 above 0.1).
MODEL_SEED = 0


def build_test_model(seed: int = MODEL_SEED):
    """An untrained default-preset model whose head is perturbed: scores spread over
    (0, 1) and every level's batch norm has its own statistics, so top-k, NMS and the
    BN folding all have something to get wrong. Built once (ImageNet weights load from
    disk), then copied."""
    if seed not in _BUILT:
        _BUILT[seed] = _build(seed)
    return copy.deepcopy(_BUILT[seed])


def _build(seed: int):
    torch.manual_seed(seed)
    # Rectangular letterbox (the default), in eager predict and in the exported graph alike.
    model = build_model(preset("default", num_classes=len(CLASS_NAMES), input_size=SIZE), CLASS_NAMES, CATEGORY_IDS)
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _build_files(root: Path) -> tuple[Path, Path]:
    ckpt, onnx_path = root / "model.pt", root / "model.onnx"
    if not onnx_path.exists():
        model = build_test_model()
        state = {"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}}
        save_checkpoint({**state, "class_names": CLASS_NAMES, "category_ids": CATEGORY_IDS}, ckpt)
        assert main(["export", str(ckpt), "--out", str(onnx_path)]) == 0
    return ckpt, onnx_path


def shared_export(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, exported .onnx) of build_test_model(), written once per session and
    shared with test_predict.py and test_cli.py."""
    return _build_files(tmp_path_factory.getbasetemp() / "export_shared")


def real_images(coco128: Path, raccoon: Path) -> list[Path]:
    return [coco128 / "train2017" / f for f in COCO_IMAGES] + [raccoon / "images" / f for f in RACCOON_IMAGES]


def assert_fp32_parity(eager, exported, files: list[Path], scores_atol: float | None = None) -> None:
    """An fp32 export reproduces at least 98% of eager's detections on ``files`` (same class,
    IoU >= 0.9, matched boxes within 0.05 px of the photo), over more than 100 of them; with
    ``scores_atol``, an image with as many detections has the same scores too."""
    total = matched = 0
    for a, b in zip(eager.predict(files), exported.predict(files)):
        fraction, worst = match_detections(a, b)
        total += len(a)
        matched += fraction * len(a)
        assert worst < 0.05, a.source
        if scores_atol is not None and len(a) == len(b):
            np.testing.assert_allclose(np.sort(a.scores), np.sort(b.scores), atol=scores_atol)
    assert total > 100 and matched / total >= 0.98


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _hwc(path: Path) -> np.ndarray:
    return read_image(path).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)


# ----------------------------------------------------------------------------- graph parts


def test_folded_head_equals_shared_head():
    model = build_test_model()
    feats = [torch.randn(2, 128, s, s) for s in (16, 8, 4, 2, 1)]
    with torch.no_grad():
        ref_cls, ref_box = model.head(feats)
        cls, box = fold_head_bn(model.head, 5).eval()(feats)
    assert cls.shape == ref_cls.shape == (2, (256 + 64 + 16 + 4 + 1) * model.anchor_generator.num_anchors, 3)
    torch.testing.assert_close(cls, ref_cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(box, ref_box, rtol=1e-4, atol=1e-4)
    # Folding really happened: the towers have no batch norm left, one conv copy per level.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_head_bn(model.head, 5).modules())


@pytest.mark.parametrize("rect", [False, True], ids=["square", "rect"])
def test_letterbox_graph_matches_torch_letterbox(coco128, raccoon, rect):
    sess = ort.InferenceSession(letterbox_graph(SIZE, rect=rect).SerializeToString(), providers=["CPUExecutionProvider"])
    images = [read_image(p) for p in real_images(coco128, raccoon)[:1] + real_images(coco128, raccoon)[-2:]]
    images.append(torch.randint(0, 256, (3, 7, 5), dtype=torch.uint8))  # tiny: upsampling, odd sides
    images.append(torch.randint(0, 256, (3, 600, 22), dtype=torch.uint8))  # narrow: 22 * 128 / 600 = 4.69 -> 5 columns
    shapes = set()
    for img in images:
        ref, scales, _ = letterbox([img], SIZE, RECT_STRIDE if rect else None)
        x, scale, limits = sess.run(None, {"images": img.permute(1, 2, 0).numpy()[None]})
        h, w = img.shape[-2:]
        assert x.shape == ref.shape
        shapes.add(x.shape[2:])
        np.testing.assert_allclose(x, ref.numpy(), atol=1e-5)  # 1/255 is 4e-3
        assert scale[0] == pytest.approx(float(scales[0]), rel=1e-6)
        assert limits.tolist() == [w, h, w, h]
    # Square: always SIZE x SIZE; rectangular: 96 x 128 (4:3 photo), 128 x 32 (narrow), ...
    assert shapes == {(SIZE, SIZE)} if not rect else len(shapes) > 2 and (SIZE, 32) in shapes


@pytest.mark.parametrize("rect", [False, True], ids=["square", "rect"])
def test_detection_graph_eager_matches_postprocess(coco128, rect):
    """The export's static-shape top-k + dense NMS pick gives postprocess()'s detections."""
    model = build_test_model()
    model.cfg.postprocess.score_thresh = 0.02  # more boxes to compare
    img = read_image(coco128 / "train2017" / "000000000009.jpg")  # 640 x 480
    batch, scales, sizes = letterbox([img, img.flip(-1)], SIZE, RECT_STRIDE if rect else None)
    assert batch.shape[2:] == ((96, SIZE) if rect else (SIZE, SIZE))
    post = model.cfg.postprocess
    graph = DetectionGraph(model, SIZE, post, rect=rect).eval()
    with torch.no_grad():
        ref = model.postprocess(model(batch), tuple(batch.shape[2:]), scales, sizes)
        limits = torch.tensor([640.0, 480.0, 640.0, 480.0])
        boxes, scores, labels, count = graph(
            batch, scales[:1], limits, torch.tensor([post.score_thresh]), torch.tensor([post.nms_iou])
        )
    assert boxes.shape == (2, post.max_detections, 4)
    for i in range(2):
        n = int(count[i])
        assert n == len(ref[i]) > 20
        assert_same_detections(boxes[i, :n], scores[i, :n], labels[i, :n], ref[i])
        assert (labels[i, n:] == PAD_LABEL).all() and (scores[i, n:] == 0).all()


class _Dets:
    def __init__(self, boxes, scores, labels):
        self.boxes, self.scores, self.labels = (t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in (boxes, scores, labels))

    def __len__(self) -> int:
        return len(self.boxes)


def assert_same_detections(boxes, scores, labels, ref) -> None:
    """The same detections in any order: tied scores (untrained heads tie on padding) may
    come out in either order."""
    a, b = _Dets(ref.boxes, ref.scores, ref.labels), _Dets(boxes, scores, labels)
    np.testing.assert_allclose(np.sort(b.scores), np.sort(a.scores), rtol=1e-4, atol=1e-5)
    fraction, worst = match_detections(a, b)
    assert fraction == 1.0 and worst < 0.05  # original pixels, 640 / 128 times the input's


def test_class_aware_nms_equals_batched_nms_despite_a_huge_low_score_box():
    """The coordinate shift is sized by the boxes above the threshold: a huge box below it
    (a wild low-score decode) must not push the shift to where float32 rounds the IoU of
    small boxes (an 8 px pair at IoU 0.71 computes as 0.69 with a 4.7e6 shift, where float32
    steps by 0.5: the shift over all boxes kept both)."""
    boxes = torch.tensor(
        [
            [0.0, 0.0, 8.0, 8.0],
            [0.0, 2.3, 8.0, 8.0],  # IoU 0.7125 with the first: suppressed at 0.7
            [100.0, 100.0, 140.0, 140.0],
            [100.0, 100.0, 140.0, 140.0],  # same box, another class: kept
            [-30000.0, -30000.0, 30000.0, 30000.0],  # below the threshold
        ]
    )[None]
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.01]])
    labels = torch.tensor([[79, 79, 3, 4, 79]])
    selected = class_aware_nms(boxes, scores, labels, 10, torch.tensor([0.7]), torch.tensor([0.05]))
    live = scores[0] > 0.05
    ref = batched_nms(boxes[0][live], scores[0][live], labels[0][live], 0.7)
    assert sorted(selected[:, 2].tolist()) == sorted(live.nonzero()[:, 0][ref].tolist()) == [0, 2, 3]
    assert (selected[:, :2] == 0).all()


# ----------------------------------------------------------------------------- exported graph


def test_onnxruntime_matches_eager_on_real_images(exported, coco128, raccoon):
    ckpt, onnx_path = exported
    eager, ort_det = Detector(model_from_checkpoint(ckpt), conf=0.01), Detector(onnx_path, conf=0.01)
    assert ort_det.backend_name == "onnx" and eager.backend_name == "torch"
    files = real_images(coco128, raccoon)
    # Plus narrow strips (128 x 32 and 32 x 128 inputs: padded top-k levels) and a portrait crop.
    photo = _hwc(files[0])
    inputs = files + [photo[:, :40].copy(), photo[:40].copy(), photo[:, 100:300].copy()]
    total = 0
    for a, b in zip(eager.predict(inputs), ort_det.predict(inputs)):
        assert len(a) == len(b), a.source
        fraction, worst = match_detections(a, b)
        assert fraction == 1.0, a.source
        # Boxes in original pixels: input-pixel float noise times up to 640 / 128.
        assert worst < 0.05, a.source
        np.testing.assert_allclose(np.sort(a.scores), np.sort(b.scores), atol=1e-5)
        total += len(a)
    assert total > 100  # the comparison saw plenty of boxes


def test_dynamic_batch_equals_single_images(exported, coco128):
    _, onnx_path = exported
    sess = _session(onnx_path)
    frames = [_hwc(coco128 / "train2017" / "000000000009.jpg")]  # 480 x 640
    frames += [frames[0][:, ::-1].copy(), frames[0][::-1].copy()]  # same size, different content
    low = {"score_threshold": np.array([0.01], np.float32)}  # the untrained model scores low
    batched = sess.run(None, {"images": np.stack(frames), **low})
    assert batched[0].shape == (3, 100, 4) and batched[3].shape == (3,)
    for i, frame in enumerate(frames):
        single = sess.run(None, {"images": frame[None], **low})
        n = int(single[3][0])
        assert n == int(batched[3][i]) > 0
        np.testing.assert_allclose(batched[0][i, :n], single[0][0, :n], atol=1e-3)
        np.testing.assert_allclose(batched[1][i, :n], single[1][0, :n], atol=1e-6)
        np.testing.assert_array_equal(batched[2][i, :n], single[2][0, :n])


def test_metadata_and_signature(exported):
    _, onnx_path = exported
    meta = read_metadata(onnx_path)
    assert json.loads(meta["class_names"]) == CLASS_NAMES
    assert json.loads(meta["category_ids"]) == CATEGORY_IDS
    assert int(meta["input_size"]) == SIZE and meta["precision"] == "fp32"
    model = onnx.load(str(onnx_path))
    (inp,) = [i for i in model.graph.input if i.name == "images"]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "labels", "num_detections"]
    assert any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_threshold_inputs_match_eager_with_same_thresholds(exported, coco128):
    ckpt, onnx_path = exported
    img = coco128 / "train2017" / "000000000034.jpg"  # the image with the highest scores
    eager, ort_det = Detector(model_from_checkpoint(ckpt)), Detector(onnx_path)
    for conf, iou in ((0.1, 0.5), (0.03, 0.2)):
        a, b = eager.predict(img, conf=conf, iou=iou), ort_det.predict(img, conf=conf, iou=iou)
        assert len(a) == len(b) > 0
        assert (b.scores > conf).all()
        assert match_detections(a, b)[0] == 1.0
    assert len(ort_det.predict(img, conf=0.1)) < len(ort_det.predict(img, conf=0.02))
    # The graph keeps its padded rows: count < max rows, pad label past it.
    sess = _session(onnx_path)
    out = sess.run(None, {"images": _hwc(img)[None], "score_threshold": np.array([0.1], np.float32)})
    n = int(out[3][0])
    assert 0 < n < 100 and (out[2][0, n:] == PAD_LABEL).all() and (out[0][0, n:] == 0).all()


def test_max_detections_and_size_options(coco128):
    """Fixed output rows and another input size (run eagerly: the same module is exported)."""
    model = build_test_model()
    post = model.cfg.postprocess
    post.max_detections, post.score_thresh = 7, 0.0
    graph = DetectionGraph(model, 96, post).eval()
    batch, scales, _ = letterbox([read_image(coco128 / "train2017" / "000000000009.jpg")], 96)
    with torch.no_grad():
        boxes, scores, _, count = graph(batch, scales, torch.tensor([640.0, 480, 640, 480]), torch.zeros(1), torch.tensor([0.5]))
    assert boxes.shape == (1, 7, 4) and int(count[0]) == 7
    assert (scores[0].diff() <= 0).all()  # best first
    # Candidates per level: min(topk, anchors * classes) on P3..P7 of 96 px (12, 6, 3, 2, 1 cells a side).
    cell = model.anchor_generator.num_anchors * len(CLASS_NAMES)  # (anchor, class) pairs per cell
    assert graph.level_k == [1000, 6 * 6 * cell, 3 * 3 * cell, 2 * 2 * cell, cell] and graph.level_pad == [0] * 5


@pytest.mark.parametrize("seed", range(3))
def test_top_k_over_the_best_anchors_keeps_the_same_pairs(seed):
    """best_anchor_candidates reads only the rows of the top-k anchors by best class score:
    the pairs, scores and order are those of the top-k over every pair (distinct values)."""
    g = torch.Generator().manual_seed(seed)
    n, a, k, h, w, top = 2, 9, 80, 12, 20, 1000
    cls_map = torch.randperm(n * a * k * h * w, generator=g).float().reshape(n, a * k, h, w) / 1e4 - 10  # no ties
    cls_map[0, : 3 * k, :2] += 30  # one image whose best pairs crowd onto 120 anchors, many classes each
    logits = cls_map.permute(0, 2, 3, 1).reshape(n, -1)  # as the graph reads the head's map
    for x, y in zip(level_candidates(logits, top, 0, k), best_anchor_candidates(logits, top, k)):
        assert torch.equal(x, y)


def test_a_graph_taking_p3s_top_k_over_its_best_anchors_matches_eager(coco128):
    """At 320 px P3 has at least 1000 anchors at every rectangular size (1440 at 32 x 320),
    so its top-k looks only at the best anchors' rows; with no score threshold every level
    is full and the top-k decides what NMS sees, as in eager post-processing."""
    model = build_test_model()  # built for 128 px; its layers run at any size
    post = model.cfg.postprocess
    post.score_thresh = 0.0
    graph = DetectionGraph(model, 320, post, rect=True).eval()
    assert graph.level_narrow == [True, False, False, False, False]
    img = read_image(coco128 / "train2017" / "000000000009.jpg")
    batch, scales, sizes = letterbox([img], 320, RECT_STRIDE)
    limits = torch.tensor([640.0, 480, 640, 480])
    with torch.no_grad():
        ref = model.postprocess(model(batch), tuple(batch.shape[2:]), scales, sizes)[0]
        boxes, scores, labels, count = graph(batch, scales, limits, torch.zeros(1), torch.tensor([post.nms_iou]))
    n = int(count[0])
    assert n == len(ref) == post.max_detections
    assert_same_detections(boxes[0, :n], scores[0, :n], labels[0, :n], ref)


def test_small_levels_are_padded_in_rectangular_graphs(coco128):
    """A narrow image at 128 px runs at 128 x 32: P4..P6 have fewer (anchor, class) pairs
    than the static top-k of the square, so padding fills them and never comes out."""
    model = build_test_model()
    post = model.cfg.postprocess
    post.score_thresh = 0.0  # every real candidate is a detection
    graph = DetectionGraph(model, SIZE, post, rect=True).eval()
    cell = model.anchor_generator.num_anchors * len(CLASS_NAMES)  # (anchor, class) pairs per cell
    # 128 x 128 has 16x16, 8x8, 4x4, 2x2, 1x1 cells; 128 x 32 has 16x4, 8x2, 4x1, 2x1, 1x1.
    assert 64 * cell >= 1000 > 16 * cell  # P4 needs padding at 128 x 32, P3 does not
    assert graph.level_k == [1000, 1000, 16 * cell, 4 * cell, cell]
    assert graph.level_pad == [0, 1000 - 16 * cell, 16 * cell - 4 * cell, 4 * cell - 2 * cell, 0]
    assert graph.level_narrow == [False] * 5  # 576 P3 anchors at 128 x 32, fewer than the top-k
    img = read_image(coco128 / "train2017" / "000000000009.jpg")[:, :, :40]  # 480 x 40 -> 128 x 11 -> 128 x 32
    batch, scales, sizes = letterbox([img], SIZE, RECT_STRIDE)
    assert batch.shape[2:] == (SIZE, 32)
    limits = torch.tensor([40.0, 480, 40, 480])
    with torch.no_grad():
        ref = model.postprocess(model(batch), (SIZE, 32), scales, sizes)[0]
        boxes, scores, labels, count = graph(batch, scales, limits, torch.zeros(1), torch.tensor([post.nms_iou]))
    n = int(count[0])
    assert n == len(ref) > 0 and (labels[0, :n] >= 0).all() and (scores[0, :n] > 0).all()
    assert_same_detections(boxes[0, :n], scores[0, :n], labels[0, :n], ref)


def test_square_export_runs_the_full_square(exported, coco128, tmp_path):
    """--square: one fixed input shape, the same detections as eager with rect off."""
    ckpt, rect_path = exported
    square_path = tmp_path / "square.onnx"
    assert main(["export", str(ckpt), "--square", "--out", str(square_path)]) == 0
    assert read_metadata(square_path)["rect"] == "false" and read_metadata(rect_path)["rect"] == "true"
    model = model_from_checkpoint(ckpt)
    model.cfg.rect = False
    img = coco128 / "train2017" / "000000000009.jpg"  # 4:3: 96 x 128 rectangular, 128 x 128 square
    square = Detector(square_path, conf=0.03).predict(img)
    eager = Detector(model, conf=0.03).predict(img)
    assert len(square) == len(eager) > 10
    assert match_detections(eager, square) == (1.0, pytest.approx(0.0, abs=0.05))
    # The rectangular graph runs another input size, so its detections are not these.
    rect = Detector(rect_path, conf=0.03).predict(img)
    fraction, worst = match_detections(square, rect)
    assert fraction < 1.0 or worst > 0.05


def test_int8_quantizes_only_the_network(exported, coco128, tmp_path):
    _, onnx_path = exported
    files = sorted((coco128 / "train2017").glob("*.jpg"))[:3]
    q_path = quantize_int8(onnx_path, tmp_path / "m.int8.onnx", files, QuantizeConfig(num_images=3))
    fp32, q = onnx.load(str(onnx_path)), onnx.load(str(q_path))
    net_convs = network_nodes(fp32, ["Conv"])
    assert len(net_convs) == sum(n.op_type == "Conv" for n in fp32.graph.node) > 50
    producers = {o: n for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == len(net_convs)
    # Every conv reads int8 weights and uint8 activations through DequantizeLinear (QDQ).
    assert all(producers[n.input[0]].op_type == "DequantizeLinear" for n in convs)
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    # The letterbox and the box decoding / NMS stay float.
    resize = [n for n in q.graph.node if n.name.startswith("letterbox/") and n.op_type == "Resize"]
    assert resize and producers[resize[0].input[0]].name.startswith("letterbox/")  # no Q/DQ pair inserted
    nms = next(n for n in q.graph.node if n.op_type == "NonMaxSuppression")
    assert producers[nms.input[0]].op_type != "DequantizeLinear"
    assert read_metadata(q_path)["precision"] == "int8"
    # After the network, values are dequantized after the ops that only select them (the
    # network has none): P3's max over the classes and the level maps' transposes read uint8.
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    selecting = [n for n in q.graph.node if n.op_type in SELECTING_OPS]
    assert any(n.op_type == "ReduceMax" for n in selecting) and sum(n.op_type == "Transpose" for n in selecting) >= 10
    assert not [n.name for n in selecting if n.input[0] in dq_out]
    # It runs through the same API, with boxes inside the image.
    r = Detector(q_path, conf=0.0).predict(coco128 / "train2017" / "000000000009.jpg")
    assert len(r) == 100 and r.names[0] in CLASS_NAMES
    assert (r.boxes >= 0).all() and (r.boxes[:, [0, 2]] <= 640).all() and (r.boxes[:, [1, 3]] <= 480).all()


def test_dequantize_late_keeps_every_value_bit_for_bit():
    """A per-tensor DequantizeLinear moved past a transpose, a reshape, a max over one axis and
    a gather: the outputs are the same bits, and the max and the gather read uint8."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (2, 6, 4, 5), dtype=np.uint8)
    idx = rng.integers(0, 20, (2, 7, 6)).astype(np.int64)
    init = [
        onnx.numpy_helper.from_array(np.array(0.0371, np.float32), "scale"),
        onnx.numpy_helper.from_array(np.array(117, np.uint8), "zero"),
        onnx.numpy_helper.from_array(np.array([2, 20, 6], np.int64), "shape"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "axes"),
    ]
    nodes = [
        onnx.helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["f"], name="dq"),
        onnx.helper.make_node("Transpose", ["f"], ["t"], perm=[0, 2, 3, 1], name="transpose"),
        onnx.helper.make_node("Reshape", ["t", "shape"], ["r"], name="reshape"),
        onnx.helper.make_node("ReduceMax", ["r", "axes"], ["best"], keepdims=0, name="max"),
        onnx.helper.make_node("GatherElements", ["r", "idx"], ["rows"], axis=1, name="gather"),
    ]
    graph = onnx.helper.make_graph(
        nodes, "g",
        [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, q.shape),
         onnx.helper.make_tensor_value_info("idx", onnx.TensorProto.INT64, idx.shape)],
        [onnx.helper.make_tensor_value_info("best", onnx.TensorProto.FLOAT, [2, 20]),
         onnx.helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, [2, 7, 6])],
        init,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    late = dequantize_late(copy.deepcopy(model))
    onnx.checker.check_model(late)
    types = {n.name: n.op_type for n in late.graph.node}
    producers = {o: n.op_type for n in late.graph.node for o in n.output}
    assert producers["best"] == producers["rows"] == "DequantizeLinear"
    assert [producers[n.input[0]] for n in late.graph.node if n.op_type in ("ReduceMax", "GatherElements")] == ["Reshape"] * 2
    assert next(n for n in late.graph.node if n.op_type == "Transpose").input[0] == "q"  # uint8 from the start
    assert sum(t == "DequantizeLinear" for t in types.values()) == 2  # one per reader of the reshape
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"q": q, "idx": idx})
    ref = ((q.astype(np.float32) - 117) * np.float32(0.0371)).transpose(0, 2, 3, 1).reshape(2, 20, 6)
    for before, after, expected in zip(run(model), run(late), (ref.max(2), np.take_along_axis(ref, idx, 1))):
        assert after.dtype == np.float32 and np.array_equal(before, after) and np.array_equal(after, expected)


# ----------------------------------------------------------------------------- errors


def test_export_errors(tmp_path, capsys):
    model = build_test_model()
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, tmp_path / "m.onnx", ExportConfig(input_size=100))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", ExportConfig(opset=13))
    with pytest.raises(ValueError, match="score threshold"):
        export_onnx(model, tmp_path / "m.onnx", ExportConfig(score_thresh=1.5))
    foreign = tmp_path / "foreign.onnx"
    onnx.save(letterbox_graph(64), str(foreign))
    with pytest.raises(RuntimeError, match="foreign.onnx: not exported by"):
        read_metadata(foreign)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        read_metadata(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(RuntimeError, match="broken.onnx"):
        Detector(broken)
    # CLI: one clear line, no traceback.
    assert main(["export", str(tmp_path / "nope.pt")]) == 1
    assert main(["export", str(tmp_path / "nope.pt"), "--int8"]) == 1
    err = capsys.readouterr().err
    assert "nope.pt: checkpoint not found" in err and "--int8 needs --calibration" in err and "Traceback" not in err


def _stamped(model: onnx.ModelProto, drop: str | None, path: Path) -> Path:
    """``model`` saved at ``path`` with the metadata of our exports, less the key ``drop``."""
    meta = {"format": "retinanet-mobilenet-onnx/1", "class_names": '["a"]', "category_ids": "[1]", "input_size": "64",
            "score_thresh": "0.05", "nms_iou": "0.5", "max_detections": "10"}  # fmt: skip
    del model.metadata_props[:]
    set_metadata(model, {k: v for k, v in meta.items() if k != drop})
    onnx.save(model, str(path))
    return path


def test_a_stamped_model_missing_a_key_or_the_signature_is_one_clear_line(exported, tmp_path, capsys):
    ours = onnx.load(str(exported[1]))
    for key in ("score_thresh", "class_names"):
        path = _stamped(copy.deepcopy(ours), key, tmp_path / f"no_{key}.onnx")
        with pytest.raises(RuntimeError, match=f"no_{key}.onnx: metadata lacks {key}"):
            Detector(path)
    bad = copy.deepcopy(ours)
    set_metadata(bad, {"max_detections": "ten"})
    onnx.save(bad, str(tmp_path / "bad_value.onnx"))
    with pytest.raises(RuntimeError, match="bad_value.onnx: metadata max_detections='ten' does not parse"):
        Detector(tmp_path / "bad_value.onnx")
    # A foreign graph carrying our stamp and every key: named, before ONNX Runtime runs it.
    foreign = _stamped(letterbox_graph(64), None, tmp_path / "foreign.onnx")
    with pytest.raises(RuntimeError, match=r"foreign.onnx: the graph lacks .*input 'score_threshold'.*output 'boxes'"):
        Detector(foreign)
    Image.new("RGB", (64, 48)).save(tmp_path / "x.jpg")
    assert main(["predict", str(tmp_path / "x.jpg"), "--model", str(foreign), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "foreign.onnx: the graph lacks" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
