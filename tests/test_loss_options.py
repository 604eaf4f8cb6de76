"""The loss options of LossConfig (assigner='atss', cls_loss='quality_focal') train a real
model: a few steps on a tiny batch must overfit it, as the default loss does in test_model."""

import time

import pytest
import torch

from retinanet.config import preset
from retinanet.data.labels import PAD_LABEL
from retinanet.model import build_model

SIZE = 128
# The quality focal loss first rises for about 10 steps: its class targets are the IoUs of
# the predicted boxes, which grow as the boxes improve. 25 steps take about 2 s per option
# on an idle 2-core CPU.
STEPS = 25


def _tiny_batch():
    """Two noisy 128 px images with a few flat-coloured rectangles (class = colour)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE, generator=gen) * 0.3
    colours = torch.tensor([[1.0, 0.2, 0.2], [0.2, 0.3, 1.0]])
    boxes = torch.tensor(
        [
            [[10.0, 12.0, 50.0, 60.0], [70.0, 20.0, 120.0, 50.0], [40.0, 80.0, 100.0, 124.0]],
            [[20.0, 20.0, 100.0, 110.0], [5.0, 100.0, 30.0, 125.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[0, 1, 0], [1, 0, PAD_LABEL]])
    for i in range(2):
        for (x1, y1, x2, y2), label in zip(boxes[i].int().tolist(), labels[i].tolist()):
            if label >= 0:
                images[i, :, y1:y2, x1:x2] = colours[label][:, None, None]
    return images, boxes, labels


@pytest.mark.parametrize(
    "options",
    [{"assigner": "atss"}, {"cls_loss": "quality_focal"}, {"assigner": "atss", "cls_loss": "quality_focal"}],
    ids=["atss", "quality_focal", "atss+quality_focal"],
)
def test_a_few_steps_overfit_a_tiny_batch(options):
    overrides = {f"loss.{k}": v for k, v in options.items()}
    model = build_model(preset("default", num_classes=2, input_size=SIZE, **overrides)).train()
    assert all(getattr(model.cfg.loss, k) == v for k, v in options.items())
    images, gt_boxes, gt_labels = _tiny_batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    hw = images.shape[-2:]
    losses = []
    start = time.perf_counter()
    for _ in range(STEPS):
        out = model.loss(model(images), hw, gt_boxes, gt_labels)
        assert torch.isfinite(out["loss"]) and out["num_fg"] > 0
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    print(options, [round(v, 3) for v in losses], f"{time.perf_counter() - start:.1f} s")
    assert losses[-1] < 0.5 * losses[0], losses
