"""Feature pyramid P3..P7 on top of backbone features C3..C5 (Lin et al. 2017, FPN).

Plain: 1x1 laterals, nearest top-down upsampling, 3x3 output convs, P6 by a stride-2 3x3
conv on C5 and P7 by a stride-2 conv on ReLU(P6), as in the RetinaNet paper.
Lite (TF's FPNLite): the same graph with depthwise-separable 3x3 convs + batch norm +
ReLU6, and P6/P7 made from the previous pyramid level.

torchvision's FeaturePyramidNetwork only offers plain convs, so both live here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def separable_conv(cin: int, cout: int, stride: int = 1, act: bool = True, bias: bool = False) -> nn.Sequential:
    """3x3 depthwise conv + BN + ReLU6, then 1x1 pointwise conv (+ BN + ReLU6 when ``act``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=bias or not act),
    ]
    if act:
        layers += [nn.BatchNorm2d(cout), nn.ReLU6(inplace=True)]
    return nn.Sequential(*layers)


class FPN(nn.Module):
    def __init__(
        self,
        in_channels: tuple[int, int, int],
        channels: int = 256,
        lite: bool = False,
        min_level: int = 3,
        max_level: int = 7,
    ):
        super().__init__()
        if min_level != 3 or not 5 <= max_level <= 7:
            raise ValueError(f"levels must run from P3 to P5..P7, got P{min_level}..P{max_level}")
        self.lite = lite
        self.num_levels = max_level - min_level + 1
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        if lite:
            self.output = nn.ModuleList(separable_conv(channels, channels) for _ in in_channels)
            self.extra = nn.ModuleList(
                separable_conv(channels, channels, stride=2) for _ in range(max_level - 5)
            )
        else:
            self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, 1, 1) for _ in in_channels)
            extra_in = [in_channels[-1]] + [channels] * (max_level - 6)
            self.extra = nn.ModuleList(nn.Conv2d(c, channels, 3, 2, 1) for c in extra_in)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        l5 = self.lateral[2](c5)
        l4 = self.lateral[1](c4) + F.interpolate(l5, size=c4.shape[-2:], mode="nearest")
        l3 = self.lateral[0](c3) + F.interpolate(l4, size=c3.shape[-2:], mode="nearest")
        outs = [self.output[0](l3), self.output[1](l4), self.output[2](l5)]
        x = outs[-1] if self.lite else c5
        for i, conv in enumerate(self.extra):
            if not self.lite and i > 0:
                x = F.relu(x)
            x = conv(x)
            outs.append(x)
        return outs  # [P3 .. P7], each (N, C, H_l, W_l)
