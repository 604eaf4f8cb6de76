import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss as tv_focal

from retinanet.boxes import BoxCoder
from retinanet.config import LossConfig
from retinanet.losses import DetectionLoss, sigmoid_focal_loss
from retinanet.data.labels import CROWD_LABEL, PAD_LABEL
from retinanet.matcher import BACKGROUND, IGNORE


def test_focal_loss_equals_torchvision():
    n, m, k = 3, 40, 5
    logits = torch.randn(n, m, k) * 3
    labels = torch.randint(0, k, (n, m))
    kind = torch.randint(0, 3, (n, m))  # 0 fg, 1 bg, 2 ignore
    matches_label = torch.where(kind == 0, labels, torch.where(kind == 1, BACKGROUND, IGNORE))
    for alpha, gamma in [(0.25, 2.0), (0.5, 1.5), (0.25, 0.0)]:
        x = logits.clone().requires_grad_(True)
        ours = sigmoid_focal_loss(x, matches_label, alpha, gamma)
        onehot = F.one_hot(labels, k).float() * (kind == 0)[..., None]
        y = logits.clone().requires_grad_(True)
        ref = (tv_focal(y, onehot, alpha, gamma, reduction="none") * (kind != 2)[..., None]).sum()
        torch.testing.assert_close(ours, ref)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(x.grad, y.grad)


def _loss(box_loss="smooth_l1"):
    return DetectionLoss(LossConfig(box_loss=box_loss, normalizer_momentum=0.0), BoxCoder())


def _setup():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 10.0, 10.0, 20.0], [5.0, 5.0, 15.0, 15.0]])
    gt_boxes = torch.tensor([[[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    gt_labels = torch.tensor([[1, PAD_LABEL], [PAD_LABEL, PAD_LABEL]])  # image 1 has no boxes
    return anchors, gt_boxes, gt_labels


def test_image_without_boxes_gives_finite_loss_and_zero_box_loss():
    anchors, gt_boxes, gt_labels = _setup()
    cls = torch.randn(2, 4, 3, requires_grad=True)
    box = torch.randn(2, 4, 4, requires_grad=True)
    for kind in ("smooth_l1", "giou"):
        empty = _loss(kind)(cls[1:], box[1:], anchors, gt_boxes[1:], gt_labels[1:])
        assert torch.isfinite(empty["loss"]) and empty["box"].item() == 0.0 and empty["num_fg"].item() == 0
        empty["loss"].backward()
        assert torch.isfinite(cls.grad).all()
        both = _loss(kind)(cls, box, anchors, gt_boxes, gt_labels)
        assert torch.isfinite(both["loss"]) and both["box"].item() > 0


def test_box_losses_equal_reference():
    anchors, gt_boxes, gt_labels = _setup()
    cls = torch.randn(2, 4, 3)
    box = torch.randn(2, 4, 4) * 0.1
    # Anchor 0 has IoU 9/11 with the box: the only foreground anchor. Anchor 3: IoU < 0.4.
    coder = BoxCoder()
    out = _loss("smooth_l1")(cls, box, anchors, gt_boxes, gt_labels)
    target = coder.encode(gt_boxes[0, :1], anchors[:1])
    expected = F.smooth_l1_loss(box[0, :1], target, beta=0.1, reduction="sum")
    torch.testing.assert_close(out["box"], expected)
    assert out["num_fg"].item() == 1
    out = _loss("giou")(cls, box, anchors, gt_boxes, gt_labels)
    expected = generalized_box_iou_loss(coder.decode(box[0, :1], anchors[:1]), gt_boxes[0, :1], reduction="sum")
    torch.testing.assert_close(out["box"], expected)


def test_crowd_region_ignores_anchors_inside_it():
    anchors, gt_boxes, gt_labels = _setup()
    cls = torch.randn(2, 4, 3)
    box = torch.zeros(2, 4, 4)
    crowd_boxes = gt_boxes.clone()
    crowd_boxes[1, 0] = torch.tensor([0.0, 10.0, 10.0, 20.0])  # covers anchor 2 of image 1
    crowd_labels = gt_labels.clone()
    crowd_labels[1, 0] = CROWD_LABEL
    loss = _loss()
    plain = loss(cls, box, anchors, gt_boxes, gt_labels)["cls"]
    with_crowd = loss(cls, box, anchors, crowd_boxes, crowd_labels)["cls"]
    x = cls[1, 2].float()
    anchor2_as_negative = (0.75 * torch.sigmoid(x) ** 2 * F.softplus(x)).sum()
    torch.testing.assert_close(plain - with_crowd, anchor2_as_negative)


def test_running_normaliser():
    anchors, gt_boxes, gt_labels = _setup()
    loss = DetectionLoss(LossConfig(normalizer_momentum=0.5), BoxCoder())
    cls, box = torch.zeros(2, 4, 3), torch.zeros(2, 4, 4)
    a = loss(cls, box, anchors, gt_boxes, gt_labels)
    assert loss.fg_running.item() == 1.0  # first batch sets it
    gt_labels2 = gt_labels.clone()
    gt_labels2[1, 0] = 0
    gt_boxes2 = gt_boxes.clone()
    gt_boxes2[1, 0] = anchors[3]
    b = loss(cls, box, anchors, gt_boxes2, gt_labels2)
    assert b["num_fg"].item() == 2 and loss.fg_running.item() == 1.5
    assert a["cls"] > 0 and b["cls"] > 0


def test_batch_without_any_box_slot():
    anchors, _, _ = _setup()
    cls = torch.randn(2, 4, 3, requires_grad=True)
    out = _loss()(cls, torch.zeros(2, 4, 4), anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long))
    x = cls.detach().float()
    expected = (0.75 * torch.sigmoid(x) ** 2 * F.softplus(x)).sum()  # every anchor a negative, normaliser 1
    torch.testing.assert_close(out["cls"], expected)
    assert out["box"].item() == 0.0
