import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss as tv_focal

from retinanet.anchors import AnchorGenerator
from retinanet.boxes import BoxCoder, batched_box_ioa, batched_box_iou
from retinanet.config import LossConfig
from retinanet.losses import DetectionLoss, paired_box_iou, quality_focal_loss, sigmoid_focal_loss
from retinanet.data.labels import CROWD_LABEL, PAD_LABEL
from retinanet.matcher import BACKGROUND, IGNORE, Matcher


@pytest.fixture(params=[None, 55], ids=["one-slice", "slices"])
def cpu_chunk(request, monkeypatch):
    """The negative term's slice size: the default (these small tensors fit one slice), or
    55 elements, 11 anchors of 5 classes: 120 anchors in 11 slices, the last one short."""
    if request.param:
        monkeypatch.setattr("retinanet.losses.CPU_CHUNK", request.param)


def test_focal_loss_equals_torchvision(cpu_chunk):
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


def test_focal_loss_backward_twice_is_a_clear_error():
    x = torch.randn(2, 6, 3, requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.tensor([[0, BACKGROUND, IGNORE, 2, BACKGROUND, 1]] * 2))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


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


# --- quality focal loss (Li et al. 2020) and the loss options --------------------------------


def test_quality_focal_loss_equals_one_hot_reference(cpu_chunk):
    n, m, k = 3, 40, 5
    logits = torch.randn(n, m, k) * 3
    labels = torch.randint(0, k, (n, m))
    kind = torch.randint(0, 3, (n, m))  # 0 fg, 1 bg, 2 ignore
    matches_label = torch.where(kind == 0, labels, torch.where(kind == 1, BACKGROUND, IGNORE))
    quality = torch.rand(int((kind == 0).sum()))  # one IoU target per foreground anchor, row-major
    for beta in (2.0, 1.5, 0.0):
        x = logits.clone().requires_grad_(True)
        ours = quality_focal_loss(x, matches_label, quality, beta)
        # Reference: a dense (N, M, K) target, y = IoU at the true class of foreground anchors.
        target = torch.zeros(n, m, k)
        target[kind == 0] = F.one_hot(labels[kind == 0], k).float() * quality[:, None]
        y = logits.clone().requires_grad_(True)
        bce = F.binary_cross_entropy_with_logits(y, target, reduction="none")
        ref = ((target - torch.sigmoid(y)).abs().pow(beta) * bce * (kind != 2)[..., None]).sum()
        torch.testing.assert_close(ours, ref)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(x.grad, y.grad)


def test_paired_box_iou_is_the_diagonal_of_box_iou():
    a = torch.rand(7, 2) * 50
    a = torch.cat([a, a + torch.rand(7, 2) * 30 + 1], dim=1)
    b = a + torch.randn(7, 4) * 5
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 1)
    torch.testing.assert_close(paired_box_iou(a, b), box_iou(a, b).diagonal())


def _random_batch(n=3, g=6, k=4, hw=(128, 96), seed=0):
    """Anchors of a 3-level, 9-per-location generator and a padded batch with crowd slots."""
    gen = torch.Generator().manual_seed(seed)
    anchor_gen = AnchorGenerator((32.0, 64.0, 128.0), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0), (8, 16, 32))
    anchors, counts = anchor_gen(hw)
    xy = torch.rand(n, g, 2, generator=gen) * 90
    boxes = torch.cat([xy, xy + torch.rand(n, g, 2, generator=gen) * 80 + 4], dim=-1)
    labels = torch.randint(0, k, (n, g), generator=gen)
    labels[torch.rand(n, g, generator=gen) < 0.3] = PAD_LABEL
    labels[torch.rand(n, g, generator=gen) < 0.1] = CROWD_LABEL
    m = anchors.shape[0]
    cls = torch.randn(n, m, k, generator=gen) * 2
    box = torch.randn(n, m, 4, generator=gen) * 0.5
    return cls, box, anchors, counts, boxes, labels


def _todays_loss(cfg, cls_logits, box_deltas, anchors, gt_boxes, gt_labels):
    """The loss as it was before the assigner / cls_loss options (paper matcher, focal loss,
    normaliser momentum 0), written out from the public pieces."""
    coder = BoxCoder()
    valid = gt_labels >= 0
    iou = batched_box_iou(gt_boxes, anchors)
    crowd = gt_labels == CROWD_LABEL
    ioa = batched_box_ioa(gt_boxes, anchors).masked_fill(~crowd[:, :, None], 0).max(dim=1).values
    matches = Matcher(cfg.fg_iou, cfg.bg_iou, cfg.low_quality_matches, cfg.crowd_ioa)(iou, valid, ioa)
    fg = matches >= 0
    safe = matches.clamp(min=0)
    matches_label = torch.where(fg, torch.gather(gt_labels, 1, safe), matches)
    norm = fg.sum().float().clamp(min=1.0)
    cls = sigmoid_focal_loss(cls_logits, matches_label, cfg.alpha, cfg.gamma) / norm
    n_idx, a_idx = fg.nonzero(as_tuple=True)
    pred = box_deltas[n_idx, a_idx]
    target_boxes = gt_boxes[n_idx, safe[n_idx, a_idx]]
    if cfg.box_loss == "smooth_l1":
        target = coder.encode(target_boxes, anchors[a_idx])
        box = F.smooth_l1_loss(pred, target, beta=cfg.smooth_l1_beta, reduction="sum")
    else:
        box = generalized_box_iou_loss(coder.decode(pred, anchors[a_idx]), target_boxes, reduction="sum")
    return cls + cfg.box_weight * box / norm


def test_default_options_give_exactly_todays_loss():
    cls, box, anchors, counts, gt_boxes, gt_labels = _random_batch()
    assert (gt_labels == CROWD_LABEL).any() and (gt_labels == PAD_LABEL).any()
    for box_loss in ("smooth_l1", "giou"):
        cfg = LossConfig(box_loss=box_loss, normalizer_momentum=0.0)
        assert (cfg.assigner, cfg.cls_loss) == ("paper", "focal")  # the defaults
        x, d = cls.clone().requires_grad_(True), box.clone().requires_grad_(True)
        x_ref, d_ref = cls.clone().requires_grad_(True), box.clone().requires_grad_(True)
        for per_level in (None, counts):  # the paper's matcher ignores the level counts
            ours = DetectionLoss(cfg, BoxCoder(), anchors_per_location=9)(x, d, anchors, gt_boxes, gt_labels, per_level)
            assert ours["num_fg"] > 0
            ref = _todays_loss(cfg, x_ref, d_ref, anchors, gt_boxes, gt_labels)
            assert torch.equal(ours["loss"], ref)
        ours["loss"].backward()
        ref.backward()
        assert torch.equal(x.grad, x_ref.grad) and torch.equal(d.grad, d_ref.grad)


def test_quality_focal_option_targets_the_predicted_box_iou():
    cls, box, anchors, counts, gt_boxes, gt_labels = _random_batch()
    cfg = LossConfig(cls_loss="quality_focal", normalizer_momentum=0.0)
    loss = DetectionLoss(cfg, BoxCoder(), anchors_per_location=9)
    out = loss(cls, box, anchors, gt_boxes, gt_labels)
    # Same assignment as the focal loss; class target = IoU of the decoded prediction.
    matches = loss.match(anchors, gt_boxes, gt_labels)
    fg = matches >= 0
    safe = matches.clamp(min=0)
    matches_label = torch.where(fg, torch.gather(gt_labels, 1, safe), matches)
    n_idx, a_idx = fg.nonzero(as_tuple=True)
    decoded = BoxCoder().decode(box[n_idx, a_idx], anchors[a_idx])
    quality = box_iou(decoded, gt_boxes[n_idx, safe[n_idx, a_idx]]).diagonal()
    expected = quality_focal_loss(cls, matches_label, quality, 2.0) / fg.sum()
    torch.testing.assert_close(out["cls"], expected)
    # The target is detached: no gradient reaches the box deltas through the class loss
    # (box_weight 0 leaves only the class loss's path to them).
    d = box.clone().requires_grad_(True)
    cfg.box_weight = 0.0
    DetectionLoss(cfg, BoxCoder(), anchors_per_location=9)(cls, d, anchors, gt_boxes, gt_labels)["loss"].backward()
    assert (d.grad == 0).all()


def test_atss_option_assigns_with_the_level_counts():
    cls, box, anchors, counts, gt_boxes, gt_labels = _random_batch()
    cfg = LossConfig(assigner="atss", normalizer_momentum=0.0)
    loss = DetectionLoss(cfg, BoxCoder(), anchors_per_location=9)
    with pytest.raises(ValueError, match="num_per_level"):
        loss(cls, box, anchors, gt_boxes, gt_labels)
    out = loss(cls, box, anchors, gt_boxes, gt_labels, counts)
    assert torch.isfinite(out["loss"]) and out["num_fg"] > 0
    matches = loss.match(anchors, gt_boxes, gt_labels, counts)
    # No ignore band: IGNORE only where a crowd region covers a background anchor.
    no_crowd = gt_labels.clone()
    no_crowd[no_crowd == CROWD_LABEL] = PAD_LABEL
    assert (matches == IGNORE).any() and not (loss.match(anchors, gt_boxes, no_crowd, counts) == IGNORE).any()
    # Empty batches work as with the paper's matcher.
    empty = loss(cls, box, anchors, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.long), counts)
    assert torch.isfinite(empty["loss"]) and empty["box"].item() == 0.0


@pytest.mark.parametrize("field, value", [("assigner", "atts"), ("cls_loss", "qfl"), ("box_loss", "l1")])
def test_unknown_option_names_the_key(field, value):
    with pytest.raises(ValueError, match=f"loss.{field}"):
        DetectionLoss(LossConfig(**{field: value}), BoxCoder())
