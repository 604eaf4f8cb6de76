import json

import pytest
import torch

from retinanet.config import PRESETS, preset
from retinanet.data.images import read_image
from retinanet.heads import RetinaHead
from retinanet.data.labels import PAD_LABEL
from retinanet.model import build_model
from retinanet.preprocess import letterbox


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_with_any_class_count(name):
    model = build_model(preset(name, num_classes=3, input_size=128)).eval()
    x = torch.rand(2, 3, 128, 96)  # not square: anchors follow the input size
    cls, box = model(x)
    anchors, counts = model.anchors((128, 96))
    assert cls.shape == (2, anchors.shape[0], 3) and box.shape == (2, anchors.shape[0], 4)
    assert len(counts) == 5


def test_preset_differences():
    default, full = preset("default"), preset("full")
    assert (default.fpn.channels, default.head.lite, default.input_size) == (128, True, 320)
    assert (full.fpn.channels, full.head.lite, full.input_size) == (256, False, 640)
    assert preset("v1").backbone.name == "mobilenet_v1"
    assert preset("v3").backbone.name == "mobilenet_v3_large"


@pytest.mark.parametrize("lite", [False, True])
def test_class_head_starts_at_prior_probability(lite):
    head = RetinaHead(32, num_anchors=9, num_classes=4, lite=lite, norm="none", prior_prob=0.01)
    cls, _ = head([torch.zeros(1, 32, 4, 4)])
    torch.testing.assert_close(torch.sigmoid(cls), torch.full_like(cls, 0.01))


def test_lite_head_is_separable_everywhere():
    head = RetinaHead(128, 9, 80, lite=True, norm="bn")
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (1, 1) or c.groups == c.in_channels for c in convs)


def coco_batch(root, names, size=256):
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    ids = {im["file_name"]: im["id"] for im in data["images"]}
    cat_index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    images = [read_image(root / "train2017" / n) for n in names]
    batch, scales, _ = letterbox(images, size)
    per_image = []
    for n, s in zip(names, scales):
        anns = [a for a in data["annotations"] if a["image_id"] == ids[n] and not a["iscrowd"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]) * s
        per_image.append((boxes, torch.tensor([cat_index[a["category_id"]] for a in anns])))
    g = max(len(b) for b, _ in per_image)
    gt_boxes = torch.zeros(len(names), g, 4)
    gt_labels = torch.full((len(names), g), PAD_LABEL)
    for i, (b, lab) in enumerate(per_image):
        gt_boxes[i, : len(b)], gt_labels[i, : len(b)] = b, lab
    return batch, gt_boxes, gt_labels


def test_a_few_steps_overfit_a_real_coco128_batch(coco128):
    batch, gt_boxes, gt_labels = coco_batch(coco128, ["000000000034.jpg", "000000000036.jpg", "000000000009.jpg"])
    model = build_model(preset("default", num_classes=80, input_size=256)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    hw = batch.shape[-2:]
    losses = []
    for _ in range(12):
        out = model.loss(model(batch), hw, gt_boxes, gt_labels)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert out["num_fg"] > 0


def test_predict_maps_boxes_to_original_pixels(coco128):
    model = build_model(preset("default", num_classes=2)).eval()
    model.cfg.postprocess.score_thresh = 0.0
    with torch.no_grad():  # spread the scores: an untrained head ties them all at the prior
        for conv in model.head.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.normal_(conv.weight, std=0.2)
    img = read_image(coco128 / "train2017" / "000000000009.jpg")  # 640 x 480
    det = model.predict(img)[0]
    assert len(det) == 100
    assert det.boxes[:, 2].max() <= 640 and det.boxes[:, 3].max() <= 480 and det.boxes.min() >= 0
    # the same image twice in one batch gives identical detections
    a, b = model.predict([img, img])
    torch.testing.assert_close(a.boxes, b.boxes)


def test_fuse_folds_head_batch_norm_with_the_same_outputs():
    model = build_model(preset("default", num_classes=3, input_size=128)).eval()
    with torch.no_grad():  # non-trivial statistics, so a wrong fold would show
        for bn in model.head.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 2.0)
        x = torch.rand(2, 3, 128, 128)
        before = model(x)
        model.fuse()
        after = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="fused"):
        model.train()


def test_rectangular_letterbox_pads_to_the_stride_only():
    from retinanet.preprocess import letterbox

    img = torch.randint(0, 255, (3, 480, 640), dtype=torch.uint8)  # 4:3 -> 240 x 320 content
    square, s1, _ = letterbox([img], 320)
    rect, s2, _ = letterbox([img], 320, stride=32)
    assert square.shape == (1, 3, 320, 320) and rect.shape == (1, 3, 256, 320)
    assert s1.item() == s2.item() == 0.5
    torch.testing.assert_close(rect, square[:, :, :256])  # same content, less padding
    tall = torch.randint(0, 255, (3, 700, 300), dtype=torch.uint8)  # batch: each side the max over images
    both, _, _ = letterbox([img, tall], 320, stride=32)
    assert both.shape == (2, 3, 320, 320)
