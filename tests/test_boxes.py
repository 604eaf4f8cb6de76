import math

import pytest
import torch
from torchvision.ops import box_iou

from retinanet.boxes import BoxCoder, batched_box_ioa, batched_box_iou


def random_boxes(n: int, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * size
    wh = torch.rand(n, 2) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.fixture(params=[None, 100, 1], ids=["one-slice", "slices", "one-anchor-slices"])
def cpu_chunk(request, monkeypatch):
    """The IoU's slice size: the default (these small matrices fit one slice), 100 elements
    (7 of 50 anchors a slice against 2 x 7 boxes, the last slice short), or 1 (one anchor)."""
    if request.param:
        monkeypatch.setattr("retinanet.boxes.CPU_CHUNK", request.param)


def test_batched_iou_equals_torchvision_per_image(cpu_chunk):
    a = torch.stack([random_boxes(7), random_boxes(7)])  # (N=2, G=7, 4)
    b = random_boxes(50)
    ours = batched_box_iou(a, b)
    assert ours.shape == (2, 7, 50)
    for i in range(2):
        torch.testing.assert_close(ours[i], box_iou(a[i], b))


def test_batched_iou_against_each_images_own_boxes(cpu_chunk):
    a = torch.stack([random_boxes(7), random_boxes(7)])  # (N=2, G=7, 4)
    b = torch.stack([random_boxes(50), random_boxes(50)])  # (N=2, M=50, 4)
    ours = batched_box_iou(a, b)
    assert ours.shape == (2, 7, 50)
    for i in range(2):
        torch.testing.assert_close(ours[i], box_iou(a[i], b[i]))


def test_ioa_hand_computed(cpu_chunk):
    region = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0], [2.0, 2.0, 4.0, 4.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(batched_box_ioa(region, boxes), torch.tensor([[[0.25, 1.0, 0.0]]]))


def test_encode_decode_round_trip():
    coder = BoxCoder()
    anchors = random_boxes(200)
    boxes = random_boxes(200)
    deltas = coder.encode(boxes, anchors)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, rtol=1e-4, atol=1e-3)


def test_encode_hand_computed():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = torch.tensor([[5.0, 0.0, 25.0, 10.0]])  # centre +10 in x, twice as wide
    torch.testing.assert_close(coder.encode(box, anchor), torch.tensor([[1.0, 0.0, math.log(2.0), 0.0]]))


def test_decode_clamps_huge_deltas():
    coder = BoxCoder()
    out = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0))
