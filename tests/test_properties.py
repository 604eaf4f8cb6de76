"""Property tests (hypothesis) of the geometry, the exported NMS and the dataset readers.

Checked against independent references, on generated inputs:

1. BoxCoder: decode(encode(boxes, anchors), anchors) gives the boxes back.
2. batched_box_iou equals torchvision's box_iou (0 where torchvision's 0/0 is NaN);
   batched_box_ioa is the intersection over the area of the *second* argument's box.
3. class_aware_nms exported to ONNX keeps the boxes torchvision's batched_nms keeps.
4. Letterbox: boxes mapped into the letterboxed frame come back exactly with the sides'
   own factors; the inference back-map (one division by the scale) is off by at most
   the rounding of the resized side.
5. Matcher: thresholds, ignore band, low-quality rule and crowd regions, per anchor.
6. The COCO, VOC and YOLO readers, on fuzzed annotation files, load or raise only
   DataError / FileNotFoundError naming the file.
7. COCO -> VOC -> YOLO -> COCO conversion keeps every box up to VOC's pixel rounding.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from retinanet.boxes import BoxCoder, batched_box_ioa, batched_box_iou
from retinanet.cli import main
from retinanet.data import DataError, DetectionDataset, load_dataset
from retinanet.data.convert import convert
from retinanet.data.transforms import LetterboxResize, make_sample, unpack
from retinanet.export.graph import class_aware_nms
from retinanet.export.letterbox import letterbox_graph
from retinanet.export.ops import onnx_translations
from retinanet.export.quiet import quiet_logger
from retinanet.matcher import BACKGROUND, IGNORE, Matcher
from retinanet.preprocess import letterbox, letterbox_size


def fast(n: int) -> settings:
    """Deterministic examples (CI never flakes), no deadline, no example database."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ----------------------------------------------------------------------------- 1. box coder


@st.composite
def box_anchor_pairs(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    """(G, 4) boxes and (G, 4) anchors, float64 xyxy: anchors 1/4 px to 1024 px, each box
    within a factor 2^5.9 (< the decoder's 1000/16 clamp) of its anchor."""
    n = draw(st.integers(1, 12))
    centre = st.floats(-1000, 3000, allow_nan=False)
    rows_a, rows_b = [], []
    for _ in range(n):
        aw, ah = 2 ** draw(st.floats(-2, 10)), 2 ** draw(st.floats(-2, 10))
        bw, bh = aw * 2 ** draw(st.floats(-5.9, 5.9)), ah * 2 ** draw(st.floats(-5.9, 5.9))
        (acx, acy), (bcx, bcy) = (draw(centre), draw(centre)), (draw(centre), draw(centre))
        rows_a.append([acx - aw / 2, acy - ah / 2, acx + aw / 2, acy + ah / 2])
        rows_b.append([bcx - bw / 2, bcy - bh / 2, bcx + bw / 2, bcy + bh / 2])
    return torch.tensor(rows_b, dtype=torch.float64), torch.tensor(rows_a, dtype=torch.float64)


WEIGHTS = st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 0.5, 7.0)])


@fast(60)
@given(pair=box_anchor_pairs(), weights=WEIGHTS, dtype=st.sampled_from([torch.float64, torch.float32]))
def test_box_coder_round_trip(pair: tuple[Tensor, Tensor], weights: tuple[float, ...], dtype: torch.dtype) -> None:
    boxes, anchors = (t.to(dtype) for t in pair)
    coder = BoxCoder(weights)
    back = coder.decode(coder.encode(boxes, anchors), anchors)
    eps = 1e-11 if dtype == torch.float64 else 2e-6
    # Float error grows with the coordinates' magnitude and the box / anchor sides.
    scale = torch.maximum(boxes.abs().amax(1), anchors.abs().amax(1))[:, None]
    assert ((back - boxes).abs() <= eps * scale + 1e-9).all(), (back - boxes).abs().max()


# ----------------------------------------------------------------------------- 2. IoU / IoA

# Sixteenth-pixel coordinates up to 1e5 are exact in float32; sides may be 0 (degenerate).
COORD = st.integers(0, 1_600_000).map(lambda v: v / 16)
SIDE = st.one_of(st.just(0.0), st.integers(1, 1_600_000).map(lambda v: v / 16), st.integers(1, 64).map(float))


@st.composite
def box_lists(draw: st.DrawFn, min_size: int = 0, max_size: int = 6) -> list[list[float]]:
    n = draw(st.integers(min_size, max_size))
    out = []
    for _ in range(n):
        x, y, w, h = draw(COORD), draw(COORD), draw(SIDE), draw(SIDE)
        out.append([x, y, x + w, y + h])
    return out


def _boxes(rows: list[list[float]], dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.tensor(rows, dtype=dtype).reshape(-1, 4)


def _intersection_ref(a: list[float], b: list[float]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


@fast(60)
@given(a=st.lists(box_lists(), min_size=1, max_size=3), b=box_lists(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_batched_iou_equals_torchvision(a: list[list[list[float]]], b: list[list[float]], dtype: torch.dtype) -> None:
    """Per image, torchvision's box_iou; where both boxes have zero area torchvision
    computes 0/0 = NaN and the project returns 0 (its union is clamped to 1e-9)."""
    g = max(len(rows) for rows in a)
    padded = torch.stack([torch.cat([_boxes(r), torch.zeros(g - len(r), 4, dtype=torch.float64)]) for r in a])
    got = batched_box_iou(padded.to(dtype), _boxes(b).to(dtype)).double()
    assert got.shape == (len(a), g, len(b))
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    for n in range(len(a)):
        ref = box_iou(padded[n], _boxes(b))
        nan = ref.isnan()
        assert (got[n][nan] == 0).all()
        torch.testing.assert_close(got[n][~nan], ref[~nan], atol=atol, rtol=0)


@fast(60)
@given(
    regions=st.lists(box_lists(), min_size=1, max_size=3), b=box_lists(), dtype=st.sampled_from([torch.float64, torch.float32])
)
def test_batched_ioa_is_intersection_over_second_box(
    regions: list[list[list[float]]], b: list[list[float]], dtype: torch.dtype
) -> None:
    """batched_box_ioa(regions, b)[n, g, m] = |region g ∩ box m| / |box m|: the share of
    each box of the *second* argument (anchors, detections) inside a region; a box of
    zero area gives 0, never NaN."""
    g = max(len(r) for r in regions)
    rows = [r + [[0.0, 0.0, 0.0, 0.0]] * (g - len(r)) for r in regions]
    got = batched_box_ioa(torch.tensor(rows, dtype=dtype).reshape(len(rows), g, 4), _boxes(b, dtype)).double()
    assert got.shape == (len(rows), g, len(b))
    for n, image in enumerate(rows):
        for i, region in enumerate(image):
            for m, box in enumerate(b):
                box_area = (box[2] - box[0]) * (box[3] - box[1])
                expect = _intersection_ref(region, box) / box_area if box_area > 0 else 0.0
                assert got[n, i, m].item() == pytest.approx(expect, abs=2e-6 if dtype == torch.float32 else 1e-12)


# ----------------------------------------------------------------------------- 3. NMS in ONNX

NMS_MAX_OUT = 6  # static max_out of the exported NMS: fewer than the candidates, so it truncates
NMS_MAX_CANDIDATES = 16


class _ClassAwareNMS(nn.Module):
    def forward(self, boxes: Tensor, scores: Tensor, labels: Tensor, iou: Tensor, score: Tensor) -> Tensor:
        return class_aware_nms(boxes, scores, labels, NMS_MAX_OUT, iou, score)


@pytest.fixture(scope="module")
def nms_session() -> ort.InferenceSession:
    return export_nms()


def export_nms() -> ort.InferenceSession:
    """class_aware_nms alone, exported the way writer.py exports the graph, in a session."""
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0], [9.0, 9.0, 12.0, 12.0]]] * 2)
    inputs = (boxes, torch.tensor([[0.9, 0.8, 0.7]] * 2), torch.tensor([[0, 1, 0]] * 2), torch.tensor([0.5]), torch.tensor([0.1]))
    batch, count = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("candidates", min=1, max=4096)
    dims = {0: batch, 1: count}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), quiet_logger("onnx_ir"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*The axis name", UserWarning)  # the inputs share their dims on purpose
        program = torch.onnx.export(
            _ClassAwareNMS().eval(),
            inputs,
            dynamo=True,
            input_names=["boxes", "scores", "labels", "iou", "score"],
            output_names=["selected"],
            dynamic_shapes=(dims, dims, dims, None, None),
            opset_version=18,
            custom_translation_table=onnx_translations(),
            optimize=True,
            verbose=False,
        )
        path = Path(tmp) / "nms.onnx"
        program.save(str(path), external_data=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@st.composite
def nms_inputs(draw: st.DrawFn) -> tuple[Tensor, Tensor, Tensor]:
    """boxes (N, C, 4): jittered copies of a few base boxes, so that boxes of the same and
    of different classes overlap at every IoU, on an integer grid (shifting classes apart
    is then exact); distinct scores (N, C) (no ties to order); labels (N, C) of 3 classes."""
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, NMS_MAX_CANDIDATES))
    jitter = st.integers(-3, 3)
    boxes, scores = [], []
    for _ in range(n):
        corner, side = st.integers(0, 60), st.integers(4, 30)
        bases = [(draw(corner), draw(corner), draw(side), draw(side)) for _ in range(draw(st.integers(1, 4)))]
        for _ in range(c):
            x, y, w, h = bases[draw(st.integers(0, len(bases) - 1))]
            x1, y1 = x + draw(jitter), y + draw(jitter)
            boxes.append([x1, y1, max(x1 + 1, x + w + draw(jitter)), max(y1 + 1, y + h + draw(jitter))])
        scores += draw(st.lists(st.integers(1, 9999), min_size=c, max_size=c, unique=True))
    labels = draw(st.lists(st.integers(0, 2), min_size=n * c, max_size=n * c))
    return (
        torch.tensor(boxes, dtype=torch.float32).reshape(n, c, 4),
        torch.tensor(scores, dtype=torch.float32).reshape(n, c) / 10000,
        torch.tensor(labels).reshape(n, c),
    )


@fast(40)
@given(inputs=nms_inputs(), iou=st.sampled_from([0.3, 0.45, 0.5, 0.7]), score=st.sampled_from([0.0, 0.05, 0.4]))
def test_onnx_nms_keeps_what_batched_nms_keeps(
    nms_session, inputs: tuple[Tensor, Tensor, Tensor], iou: float, score: float
) -> None:
    """Per image: the boxes scoring above the threshold, greedy class-wise NMS at ``iou``,
    the best NMS_MAX_OUT survivors."""
    boxes, scores, labels = inputs
    feeds = {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()}
    (selected,) = nms_session.run(None, {**feeds, "iou": np.array([iou], np.float32), "score": np.array([score], np.float32)})
    assert (selected[:, 1] == 0).all()
    for i in range(boxes.shape[0]):
        live = (scores[i] > score).nonzero()[:, 0]
        same = labels[i][live, None] == labels[i][None, live]
        pair_iou = box_iou(boxes[i][live], boxes[i][live])[same]
        assume(((pair_iou - iou).abs() > 1e-4).all())  # exactly at the threshold, float rounding decides
        kept = live[batched_nms(boxes[i][live], scores[i][live], labels[i][live], iou)][:NMS_MAX_OUT]
        assert sorted(selected[selected[:, 0] == i, 2].tolist()) == sorted(kept.tolist())


# ----------------------------------------------------------------------------- 4. letterbox

LETTERBOX_SIZES = (32, 64, 128, 320)


@cache
def _letterbox_session(size: int) -> ort.InferenceSession:
    return ort.InferenceSession(letterbox_graph(size).SerializeToString(), providers=["CPUExecutionProvider"])


@st.composite
def image_and_boxes(draw: st.DrawFn) -> tuple[int, int, np.ndarray]:
    """(H, W, boxes (G, 4) xyxy inside the image with positive sides)."""
    h, w = draw(st.integers(1, 700)), draw(st.integers(1, 700))
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        x1, y1 = draw(st.integers(0, 999)), draw(st.integers(0, 999))
        x2, y2 = draw(st.integers(x1 + 1, 1000)), draw(st.integers(y1 + 1, 1000))
        rows.append([x1 * w / 1000, y1 * h / 1000, x2 * w / 1000, y2 * h / 1000])
    return h, w, np.array(rows)


def _content_extent(x: np.ndarray) -> tuple[int, int]:
    """(rows, columns) of a letterboxed white image that hold the image (not padding)."""
    inside = x > 0.5
    return int(inside.any(1).sum()), int(inside.any(0).sum())


@fast(40)
@given(data=image_and_boxes(), size=st.sampled_from(LETTERBOX_SIZES))
def test_letterbox_boxes_round_trip(data: tuple[int, int, np.ndarray], size: int) -> None:
    """Training's LetterboxResize moves boxes with the image's pixels: into the frame
    where preprocess.letterbox (and the ONNX letterbox) put the image, and back with each
    side's own factor (W / w_new, H / h_new) to the original boxes."""
    h, w, boxes = data
    nh, nw, scale = letterbox_size(h, w, size)
    white = torch.full((3, h, w), 255, dtype=torch.uint8)
    image, lb_boxes, _, lb_scale = unpack(LetterboxResize(size)(*make_sample(white, boxes, np.zeros(len(boxes)))))
    assert tuple(image.shape[-2:]) == (nh, nw) and lb_scale == pytest.approx(scale)
    batch, scales, sizes = letterbox([white], size)
    assert _content_extent(batch[0, 0].numpy()) == (nh, nw) and sizes[0].tolist() == [h, w]
    x, onnx_scale, limits = _letterbox_session(size).run(None, {"images": white.permute(1, 2, 0).numpy()[None]})
    assert _content_extent(x[0, 0]) == (nh, nw) and limits.tolist() == [w, h, w, h]
    assert onnx_scale[0] == pytest.approx(float(scales[0]), rel=1e-6) == pytest.approx(scale, rel=1e-6)
    back = lb_boxes.double().numpy() * np.array([w / nw, h / nh, w / nw, h / nh])
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)  # float32 rounding only


@fast(40)
@given(data=image_and_boxes(), size=st.sampled_from(LETTERBOX_SIZES))
def test_inference_back_map_error_is_the_side_rounding(data: tuple[int, int, np.ndarray], size: int) -> None:
    """Detections map back with one division by the scale, then a clip to the image
    (postprocess.py, and DetectionGraph with the ONNX letterbox's scale and limits). The
    longer side comes back to 0.01 px; the shorter one was resized to round(side * scale),
    not side * scale, so it comes back off by up to |round(side * scale) - side * scale| /
    scale original pixels (half a letterboxed pixel, except 1-pixel sides of tiny images)."""
    h, w, boxes = data
    nh, nw, scale = letterbox_size(h, w, size)
    white = np.full((1, h, w, 3), 255, dtype=np.uint8)
    _, onnx_scale, limits = _letterbox_session(size).run(None, {"images": white})
    lb = boxes * np.array([nw / w, nh / h, nw / w, nh / h])  # where the pixels of each box are
    back = np.minimum(np.clip(lb / float(onnx_scale[0]), 0, None), limits)
    bound = np.array([abs(nw - w * scale), abs(nh - h * scale)] * 2) / scale
    assert (np.abs(back - boxes) <= bound + 1e-3 * np.maximum(1, np.abs(boxes))).all()
    longer = [0, 2] if w >= h else [1, 3]
    np.testing.assert_allclose(back[:, longer], boxes[:, longer], rtol=1e-3, atol=0.01)
    assert abs(nw - w * scale) <= 0.5 or nw == 1
    assert abs(nh - h * scale) <= 0.5 or nh == 1


# ----------------------------------------------------------------------------- 5. matcher


@st.composite
def matcher_case(draw: st.DrawFn) -> dict[str, Any]:
    """Boxes on a 1 px or a 4 px grid (the coarse one makes ties between boxes common), the
    ground truth scattered or clustered (boxes sharing their best anchor); thresholds
    k / 16 (exact in float32) or, with ``at_iou``, IoU values of the case."""
    n, g, m = draw(st.integers(1, 2)), draw(st.integers(0, 6)), draw(st.integers(1, 12))
    step = draw(st.sampled_from([1, 4, 4]))

    def box(min_side: int) -> list[float]:
        x, y = step * draw(st.integers(0, 48 // step)), step * draw(st.integers(0, 48 // step))
        return [x, y, x + step * draw(st.integers(min_side, 24 // step)), y + step * draw(st.integers(min_side, 24 // step))]

    def near(base: list[float]) -> list[float]:
        return [v + step * draw(st.integers(-1, 1)) for v in base[:2]] + [v + step * draw(st.integers(0, 2)) for v in base[2:]]

    def gt_boxes() -> list[list[float]]:
        if not draw(st.booleans()):
            return [box(0) for _ in range(g)]
        base = box(1)  # boxes close together often share their best anchor
        return [near(base) for _ in range(g)]

    fg = draw(st.integers(4, 12))
    return {
        "gt": [gt_boxes() for _ in range(n)],
        "anchors": [box(1) for _ in range(m)],
        "valid": [[draw(st.booleans()) for _ in range(g)] for _ in range(n)],
        "fg": fg / 16,
        "bg": draw(st.integers(4, fg)) / 16,
        "at_iou": draw(st.one_of(st.none(), st.tuples(st.integers(0, 99), st.integers(0, 99)))),
        "low_quality": draw(st.booleans()),
        "crowd": draw(
            st.one_of(st.none(), st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=n * m, max_size=n * m))
        ),
    }


def _expected_match(iou: list[list[float]], valid: list[bool], m: int, case: dict[str, Any]) -> set[int]:
    """The acceptable results for anchor ``m`` of one image (several when boxes tie)."""
    real = [g for g in range(len(valid)) if valid[g]]
    best = max((iou[g][m] for g in real), default=-1.0)
    owners = {g for g in real if iou[g][m] == best}
    box_best = {g: max(iou[g]) for g in real}
    if best >= case["fg"]:
        return owners
    if case["low_quality"] and any(box_best[g] > 0 and iou[g][m] == box_best[g] for g in real):
        return owners  # a box's best anchor goes to the box it overlaps most
    return {BACKGROUND} if best < case["bg"] else {IGNORE}


@fast(100)
@given(case=matcher_case())
def test_matcher_assignments(case: dict[str, Any]) -> None:
    """Per anchor, against plain loops over the same IoU matrix: IoU >= fg_iou with a real
    box -> the real box it overlaps most; a box's best anchor (IoU > 0, low-quality rule)
    -> the real box *that anchor* overlaps most, even when it is another box's best too;
    otherwise IoU < bg_iou -> BACKGROUND (IGNORE inside a crowd region), else IGNORE.
    Padding boxes never match."""
    n, m = len(case["gt"]), len(case["anchors"])
    g = len(case["gt"][0])
    gt = torch.tensor(case["gt"], dtype=torch.float32).reshape(n, g, 4)
    iou = batched_box_iou(gt, torch.tensor(case["anchors"]))
    valid = torch.tensor(case["valid"], dtype=torch.bool).reshape(n, g)
    crowd = None if case["crowd"] is None else torch.tensor(case["crowd"]).reshape(n, m)
    values = sorted(set(iou.flatten().tolist()) - {0.0})
    if case["at_iou"] is not None and values:  # anchors exactly at the thresholds
        fg_index = case["at_iou"][0] % len(values)
        case = {**case, "fg": values[fg_index], "bg": values[case["at_iou"][1] % (fg_index + 1)]}
    matcher = Matcher(case["fg"], case["bg"], case["low_quality"], crowd_ioa=0.5)
    got = matcher(iou, valid, crowd)
    assert got.shape == (n, m) and got.dtype == torch.long
    for i in range(n):
        for a in range(m):
            expect = _expected_match(iou[i].tolist(), case["valid"][i], a, case)
            if expect == {BACKGROUND} and crowd is not None and crowd[i, a] >= 0.5:
                expect = {IGNORE}
            assert got[i, a].item() in expect, f"image {i} anchor {a}: got {got[i, a].item()}, expected one of {expect}"


# ----------------------------------------------------------------------------- 6. readers on fuzzed files

IMAGE_SIZE = (40, 30)  # W, H of every image of the fuzzed datasets
# Values that have broken readers: non-finite and huge numbers, unhashable ids, odd names.
NASTY_JSON = [10**400, -(10**400), 2**63, 1.5, -1, 0, True, None, [1], {}, {"id": 1}]
NASTY_JSON += ["", "0", "inf", "../x.png", "/etc/passwd", "a\x00.png"]
NASTY_TEXT = ["inf", "-inf", "nan", "1e400", "4" + "0" * 400, "1e300", "-1", "0.5", "0x10", "1_0", "１２"]
NASTY_TEXT += ["", " ", "../../x.png", "/x.png"]
ENCODINGS = ["utf-8", "utf-16", "latin-1", "cp932", "shift_jis", "utf-7", "idna", "punycode", "rot13", "hex", "zlib"]
ENCODINGS += ["mbcs", "x-bogus"]
DEEP, DIGITS = "__deep__", "__digits__"  # spliced into the json text after dumping

nasty_json = st.sampled_from(NASTY_JSON + [DEEP, DIGITS])
json_leaves = st.one_of(
    nasty_json,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6
)


def _white_png(path: Path, value: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", IMAGE_SIZE, (value, value, value)).save(path)


@st.composite
def byte_damage(draw: st.DrawFn, text: str) -> bytes:
    """``text`` as bytes, then: random bytes, a truncation, or a few bytes overwritten / inserted."""
    data = text.encode()
    kind = draw(st.sampled_from(["random", "truncate", "overwrite", "insert"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(1, 4))):
        pos, chunk = draw(st.integers(0, len(data))), draw(st.binary(min_size=1, max_size=4))
        data = data[:pos] + chunk + data[pos + (len(chunk) if kind == "overwrite" else 0) :]
    return data


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) of a json document, depth first."""
    keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
    for k in keys:
        out.append((node, k))
        _slots(node[k], out)
    return out


COCO_DOC = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]},
        {"id": 2, "file_name": "b.png"},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 12], "area": 120, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 5, "bbox": [4.5, 3, 20, 9.25]},
    ],
    "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
}


@st.composite
def coco_files(draw: st.DrawFn) -> bytes:
    """COCO_DOC with one field replaced or deleted (nasty values, deep nesting, 5000-digit
    integers), or its text damaged byte-wise."""
    if draw(st.booleans()):
        return draw(byte_damage(json.dumps(COCO_DOC)))
    doc = json.loads(json.dumps(COCO_DOC))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc, [])
        node, key = slots[draw(st.integers(0, len(slots) - 1))]
        if draw(st.integers(0, 4)) == 0 and isinstance(node, dict):
            del node[key]
        else:
            node[key] = copy.deepcopy(draw(st.one_of(nasty_json, nasty_json, json_values)))  # never share NASTY_JSON's lists
    return _coco_text(doc, draw(st.sampled_from([3, 3000])))


def _coco_text(doc: dict, depth: int = 3000) -> bytes:
    """The json of ``doc`` with DEEP spliced in as ``depth`` nested lists and DIGITS as a 5000-digit integer."""
    text = json.dumps(doc).replace(json.dumps(DEEP), "[" * depth + "]" * depth)
    return text.replace(json.dumps(DIGITS), "9" * 5000).encode()


def _coco_with(section: str, key: str, value: Any) -> bytes:
    """COCO_DOC with ``section``'s first entry's ``key`` set to ``value``."""
    doc = json.loads(json.dumps(COCO_DOC))
    doc[section][0][key] = value
    return _coco_text(doc)


VOC_XML = (
    "<annotation><folder>JPEGImages</folder><filename>a.png</filename>"
    "<size><width>40</width><height>30</height><depth>3</depth></size>"
    "<object><name>cat</name><difficult>0</difficult>"
    "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
    "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>"
    "</annotation>"
)
VOC_TAGS = ["filename", "width", "height", "depth", "name", "difficult", "xmin", "ymin", "xmax", "ymax"]
VOC_TAGS += ["object", "bndbox", "size"]


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def voc_files(draw: st.DrawFn) -> bytes:
    """VOC_XML with elements' text replaced (escaped, so it still parses) or elements
    removed, under an XML declaration naming some encoding, or damaged byte-wise."""
    kind = draw(st.sampled_from(["bytes", "fields", "declaration"]))
    if kind == "bytes":
        return draw(byte_damage(VOC_XML))
    text = VOC_XML
    for _ in range(draw(st.integers(1, 3))):
        tag = draw(st.sampled_from(VOC_TAGS))
        start, end = text.find(f"<{tag}>"), text.find(f"</{tag}>")
        if start < 0 or end < 0:
            continue
        if draw(st.integers(0, 3)) == 0:
            text = text[:start] + text[end + len(tag) + 3 :]
        else:
            nasty = st.sampled_from(NASTY_TEXT)
            value = _xml_escape(draw(st.one_of(nasty, nasty, st.text(max_size=10))))
            text = text[: start + len(tag) + 2] + value + text[end:]
    if kind == "declaration":
        encoding = draw(st.one_of(st.sampled_from(ENCODINGS), st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=10)))
        return f"<?xml version='1.0' encoding='{encoding}'?>".encode() + text.encode("utf-8", "surrogatepass")
    return text.encode("utf-8", "surrogatepass")


YOLO_TOKENS = st.one_of(
    st.sampled_from(NASTY_TEXT + ["0", "1", "2", "-0", "0.1", "0.99", "1.0", "x"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=4),
)


@st.composite
def yolo_files(draw: st.DrawFn) -> bytes:
    """Label lines of random tokens (numbers, non-finite and huge values, text), or a
    good line damaged byte-wise."""
    if draw(st.booleans()):
        return draw(byte_damage("0 0.5 0.5 0.25 0.5\n1 0.2 0.3 0.1 0.1\n"))
    lines = draw(st.lists(st.lists(YOLO_TOKENS, max_size=9).map(" ".join), max_size=5))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _load_checked(source: Path, annotation: Path, check: str | bool, drop_bad: bool) -> DetectionDataset | None:
    """load_dataset's result, or None after a documented error naming the file."""
    try:
        ds = load_dataset(source, "all", check=check, drop_bad=drop_bad, progress=False)
    except (DataError, FileNotFoundError) as e:
        report = getattr(e, "report", None)
        if report is None:  # the reader refused the whole file
            assert str(annotation) in str(e), str(e)
        else:  # load_dataset's summary: the first problem's file, or the source when nothing is left
            assert (report.errors[0].file if report.errors else str(source)) in str(e), str(e)
        return None
    for r in ds.records:
        assert np.isfinite(r.boxes).all() and (r.boxes[:, 2:] > r.boxes[:, :2]).all()
        assert (r.boxes >= 0).all() and (r.boxes[:, 0::2] <= r.width).all() and (r.boxes[:, 1::2] <= r.height).all()
        assert ((r.labels >= 0) & (r.labels < ds.num_classes)).all()
    return ds


CHECK = st.sampled_from(["header", False])


def regressions(*contents: bytes) -> Callable[[Callable], Callable]:
    """Files that made a reader raise an undocumented error, always run (drop_bad, header check)."""

    def wrap(test: Callable) -> Callable:
        for content in contents:
            test = example(content=content, check="header", drop_bad=True)(test)
        return test

    return wrap


def _voc_with(tag: str, value: str) -> bytes:
    """VOC_XML with the first ``tag``'s text replaced by ``value``."""
    start, end = VOC_XML.find(f"<{tag}>") + len(tag) + 2, VOC_XML.find(f"</{tag}>")
    return (VOC_XML[:start] + value + VOC_XML[end:]).encode()


@fast(60)
@given(content=coco_files(), check=CHECK, drop_bad=st.booleans())
@regressions(
    _coco_with("images", "id", [1]),  # TypeError: unhashable (ids counted before their type was checked)
    _coco_with("annotations", "image_id", [1]),
    _coco_with("annotations", "category_id", {}),
    _coco_with("annotations", "id", []),
    _coco_with("annotations", "bbox", [10**400, 2, 10, 12]),  # OverflowError: no float value
    _coco_with("annotations", "area", -(10**400)),
    _coco_with("images", "id", DIGITS),  # ValueError: over 4300 digits
    _coco_with("images", "id", DEEP),  # RecursionError
)
def test_coco_reader_on_fuzzed_json(content: bytes, check: str | bool, drop_bad: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _white_png(root / "train" / "a.png")
        _white_png(root / "train" / "b.png", 0)
        ann = root / "annotations" / "instances_train.json"
        ann.parent.mkdir()
        ann.write_bytes(content)
        _load_checked(ann, ann, check, drop_bad)


def _intact_record(ds: DetectionDataset | None, name: str, boxes: list[list[float]]) -> None:
    """The untouched image keeps its boxes, whatever happened to the other file."""
    if ds is not None:
        (rec,) = [r for r in ds.records if r.image_path.name == name]
        np.testing.assert_allclose(sorted(rec.boxes.tolist()), sorted(boxes), atol=1e-4)


@fast(60)
@given(content=voc_files(), check=CHECK, drop_bad=st.booleans())
@regressions(
    _voc_with("width", "inf"),  # OverflowError: int(float('inf'))
    _voc_with("height", "1e400"),
    _voc_with("difficult", "-inf"),
    b"<?xml version='1.0' encoding='cp932'?>" + VOC_XML.encode(),  # ValueError: multi-byte encoding
    b"<?xml version='1.0' encoding='x-bogus'?>" + VOC_XML.encode(),  # LookupError
    b"<?xml version='1.0' encoding='rot13'?>" + VOC_XML.encode(),  # LookupError: not a text encoding
    b"<?xml version='1.0' encoding='idna'?><annotation>\xff</annotation>",  # UnicodeError
)
def test_voc_reader_on_fuzzed_xml(content: bytes, check: str | bool, drop_bad: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("0.png", "a.png"):
            _white_png(root / "JPEGImages" / name)
        (root / "Annotations").mkdir()
        (root / "Annotations" / "0.xml").write_text(VOC_XML.replace("a.png", "0.png"))
        ann = root / "Annotations" / "a.xml"  # sorts after 0.xml: a duplicate of 0.png is a's problem
        ann.write_bytes(content)
        _intact_record(_load_checked(root, ann, check, drop_bad), "0.png", [[1, 2, 10, 12], [4, 0, 30, 20]])


@fast(60)
@given(content=yolo_files(), check=CHECK, drop_bad=st.booleans(), named=st.booleans())
@example(content=b"100000000 0.5 0.5 0.2 0.2", check="header", drop_bad=True, named=False)  # MemoryError: 1e8 names
@example(content=b"1e300 0.5 0.5 0.2 0.2", check="header", drop_bad=False, named=False)  # 10^300 names: never ends
def test_yolo_reader_on_fuzzed_labels(content: bytes, check: str | bool, drop_bad: bool, named: bool) -> None:
    """With class names (classes.txt) or without (classes named by index)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("0.png", "a.png"):
            _white_png(root / "images" / "train" / name)
        (root / "labels" / "train").mkdir(parents=True)
        if named:
            (root / "classes.txt").write_text("cat\ndog\n")
        (root / "labels" / "train" / "0.txt").write_text("1 0.5 0.5 0.25 0.5\n")
        ann = root / "labels" / "train" / "a.txt"
        ann.write_bytes(content)
        _intact_record(_load_checked(root, ann, check, drop_bad), "0.png", [[15, 7.5, 25, 22.5]])


@fast(4)
@given(fmt=st.sampled_from(["coco", "voc"]), length=st.integers(256, 2000))
def test_overlong_image_name_is_a_reported_problem(fmt: str, length: int) -> None:
    """A COCO file_name / VOC <filename> longer than the file system allows is a reported
    entry like a missing image (Path.is_file() raises ENAMETOOLONG; images.is_file does not)."""
    name = "x" * length + ".png"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if fmt == "coco":
            _white_png(root / "train" / "a.png")
            ann = root / "annotations" / "instances_train.json"
            ann.parent.mkdir()
            ann.write_bytes(_coco_with("images", "file_name", name))
            _load_checked(ann, ann, "header", True)
        else:
            _white_png(root / "JPEGImages" / "0.png")
            (root / "Annotations").mkdir()
            (root / "Annotations" / "0.xml").write_text(VOC_XML.replace("a.png", "0.png"))
            (root / "Annotations" / "a.xml").write_bytes(_voc_with("filename", name))
            _load_checked(root, root / "Annotations" / "a.xml", "header", True)


# ----------------------------------------------------------------------------- 7. conversion round trip

CLASSES = ["cat", "dog", "bird"]


@st.composite
def coco_dataset(draw: st.DrawFn) -> list[tuple[int, int, list[tuple[int, list[float]]]]]:
    """1-3 images (W, H, [(label, xyxy)]): boxes inside the image, sides of 1 px or more,
    coordinates in hundredths or quarters of a pixel (halves, which VOC rounds up, are common)."""
    images = []
    for _ in range(draw(st.integers(1, 3))):
        w, h = draw(st.integers(4, 64)), draw(st.integers(4, 64))
        objects = []
        u = draw(st.sampled_from([100, 4]))
        for _ in range(draw(st.integers(0, 4))):
            x1, y1 = draw(st.integers(0, (w - 1) * u)) / u, draw(st.integers(0, (h - 1) * u)) / u
            x2 = draw(st.integers(math.ceil((x1 + 1) * u), w * u)) / u
            y2 = draw(st.integers(math.ceil((y1 + 1) * u), h * u)) / u
            objects.append((draw(st.integers(0, len(CLASSES) - 1)), [x1, y1, x2, y2]))
        images.append((w, h, objects))
    return images


def _write_coco_source(root: Path, images: list[tuple[int, int, list[tuple[int, list[float]]]]]) -> None:
    doc: dict[str, list] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
    }
    for i, (w, h, objects) in enumerate(images):
        Image.new("RGB", (w, h), (i * 60, 90, 30)).save(root / "train" / f"im{i}.png")
        doc["images"].append({"id": i + 1, "file_name": f"im{i}.png", "width": w, "height": h})
        for label, (x1, y1, x2, y2) in objects:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                }
            )
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))


def _round_half_up(v: float) -> float:
    return float(math.floor(v + 0.5))


@fast(10)
@given(images=coco_dataset())
@example(images=[(4, 4, [(0, [0.0, 0.0, 1.0, 1.0]), (0, [0.0, 0.0, 1.0, 1.0])])])  # a repeated box comes back once
def test_coco_voc_yolo_coco_keeps_boxes(images: list[tuple[int, int, list[tuple[int, list[float]]]]]) -> None:
    """VOC stores whole pixels (each corner rounded half up), YOLO 6-decimal fractions of
    the side, COCO 3 decimals: every box comes back as its VOC rounding, to 2e-3 px, so
    within half a pixel of the original. Boxes of one class that VOC rounds to the same
    pixels come back once: the YOLO reader drops repeated lines ('duplicate box', fixed)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "src"
        (src / "train").mkdir(parents=True)
        _write_coco_source(src, images)
        convert(src, "voc", tmp_path / "voc", check="header", progress=False)
        convert(tmp_path / "voc", "yolo", tmp_path / "yolo", check="header", progress=False)
        assert main(["convert", str(tmp_path / "yolo"), str(tmp_path / "coco"), "--to", "coco", "--header-only", "--quiet"]) == 0
        ds = load_dataset(tmp_path / "coco", "train", check="header", progress=False)
        assert ds.class_names == CLASSES and ds.report.errors == []
        got = {r.image_path.name: r for r in ds.records}
        assert sorted(got) == [f"im{i}.png" for i in range(len(images))]
        for i, (w, h, objects) in enumerate(images):
            rec = got[f"im{i}.png"]
            assert (rec.width, rec.height) == (w, h)
            back = sorted(
                ((CLASSES[int(k)], b) for k, b in zip(rec.labels, rec.boxes.tolist())),
                key=lambda t: (t[0], [round(v) for v in t[1]]),
            )
            rounded = {(CLASSES[k], tuple(_round_half_up(v) for v in b)): b for k, b in reversed(objects)}
            expect = sorted((c, list(r), original) for (c, r), original in rounded.items())
            assert [c for c, _ in back] == [c for c, _, _ in expect], f"{back} != {expect}"
            final = np.array([b for _, b in back]).reshape(-1, 4)
            np.testing.assert_allclose(final, np.array([r for _, r, _ in expect]).reshape(-1, 4), atol=2e-3)
            assert (np.abs(final - np.array([o for _, _, o in expect]).reshape(-1, 4)) <= 0.5 + 2e-3).all()
