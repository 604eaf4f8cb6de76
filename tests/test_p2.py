"""The optional P2 level (stride 4) for tiny objects: the backbone taps C2 as well, the
pyramid gets one finer level, and training, prediction and export work unchanged."""

from __future__ import annotations

import pytest
import torch

from retinanet.config import apply_overrides, preset
from retinanet.data.images import read_image
from retinanet.model import build_model

P2 = ["fpn.min_level=2", "anchors.sizes=[16,32,64,128,256,512]"]


def p2_model(num_classes: int = 2, size: int = 128, rect: bool = True):
    return build_model(apply_overrides(preset("default", num_classes=num_classes, input_size=size, rect=rect), P2))


def test_p2_adds_the_stride_4_level():
    model = p2_model().eval()
    assert model.backbone.strides == (4, 8, 16, 32) and len(model.backbone.out_channels) == 4
    x = torch.rand(1, 3, 128, 96)
    cls, box = model(x)
    anchors, counts = model.anchors((128, 96))
    a = model.anchor_generator.num_anchors
    assert counts[0] == (128 // 4) * (96 // 4) * a and counts[1] == (128 // 8) * (96 // 8) * a
    assert cls.shape[1] == box.shape[1] == anchors.shape[0] == sum(counts)


def test_p2_needs_a_size_per_level():
    with pytest.raises(ValueError, match="sizes has 5 entries for 6 levels"):
        build_model(apply_overrides(preset("default", num_classes=2), ["fpn.min_level=2"]))


def test_p2_trains_and_exports_with_the_same_detections(tmp_path, coco128):
    from retinanet.api import Detector
    from retinanet.export import export_onnx

    torch.manual_seed(0)
    model = p2_model(num_classes=3, rect=False).train()  # a square export: half the export time of a rectangular one
    boxes = torch.tensor([[[10.0, 10.0, 20.0, 22.0], [40.0, 40.0, 100.0, 110.0]]]).repeat(2, 1, 1)  # (2, G, 4), a tiny box first
    labels = torch.tensor([[0, 2]]).repeat(2, 1)
    images = torch.rand(2, 3, 128, 128)  # batch norm in training needs 2 images
    losses = model.loss(model(images), (128, 128), boxes, labels)
    assert torch.isfinite(losses["loss"]) and losses["num_fg"] > 0
    losses["loss"].backward()
    assert model.fpn.lateral[0].weight.grad.abs().sum() > 0  # the P2 lateral learns
    model.eval()
    with torch.no_grad():  # head weights whose scores spread over (0, 1): no ties, something to compare
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.2)
    path = export_onnx(model, tmp_path / "p2.onnx")
    image = read_image(coco128 / "train2017" / "000000000009.jpg")
    eager, exported = Detector(model, conf=0.05).predict(image), Detector(path, conf=0.05).predict(image)
    assert len(eager) > 0 and len(eager) == len(exported)
    torch.testing.assert_close(torch.from_numpy(exported.boxes), torch.from_numpy(eager.boxes), atol=0.05, rtol=0)
