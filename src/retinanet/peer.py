"""The peer a PyTorch user would otherwise assemble: torchvision's RetinaNet on
MobileNetV2 features (C3, C4, C5 at strides 8/16/32) with a 256-channel FPN and P6/P7,
the paper's anchors (3 scales x 3 ratios, 32..512 px) and torchvision's RetinaNetHead.

Built only from public torchvision APIs; used by `retinanet benchmark` and every
benchmark in bench/, so that our numbers are always ratios against the same thing
measured in the same run.
"""

from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .backbones import install_offline_weights


def build_peer(num_classes: int = 80, size: int = 320, pretrained: bool = True, trainable_layers: int = 6) -> RetinaNet:
    weights = None
    if pretrained:
        install_offline_weights()  # same file torchvision would download, put where it looks
        weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    # mobilenet_backbone's stages start at features [0, 2, 4, 7, 14, 18]: 2 -> stride 8
    # (32 ch), 3 -> stride 16 (64 ch), 5 -> stride 32 (1280 ch, the last layer).
    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v2",
        weights=weights,
        fpn=True,
        trainable_layers=trainable_layers,
        returned_layers=[2, 3, 5],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchors, min_size=size, max_size=size)


if __name__ == "__main__":
    from torch.utils.flop_counter import FlopCounterMode

    m = build_peer().eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m([torch.rand(3, 320, 320)])
    print(f"peer: {fc.get_total_flops() / 1e9:.1f} GFLOP at 320, {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M params")
