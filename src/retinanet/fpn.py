"""Feature pyramid P3..P7 on top of backbone features C3..C5 (Lin et al. 2017, FPN);
optionally a P2 level (stride 4) from C2 for tiny objects.

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
        in_channels: tuple[int, ...],
        channels: int = 256,
        lite: bool = False,
        min_level: int = 3,
        max_level: int = 7,
    ):
        super().__init__()
        if min_level not in (2, 3) or not 5 <= max_level <= 7:
            raise ValueError(f"levels must run from P2 or P3 to P5..P7, got P{min_level}..P{max_level}")
        if len(in_channels) != 6 - min_level:
            raise ValueError(f"P{min_level}..P5 need {6 - min_level} backbone features, got {len(in_channels)}")
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
            extra_in = ([in_channels[-1]] + [channels] * (max_level - 6))[: max_level - 5]  # P6 from C5, P7 from P6
            self.extra = nn.ModuleList(nn.Conv2d(c, channels, 3, 2, 1) for c in extra_in)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """feats [C_min .. C5] -> [P_min .. P_max], each (N, C, H_l, W_l)."""
        laterals = [self.lateral[-1](feats[-1])]  # top-down: from C5 to the finest level
        for conv, c in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            laterals.insert(0, conv(c) + F.interpolate(laterals[0], size=c.shape[-2:], mode="nearest"))
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        x = outs[-1] if self.lite else feats[-1]
        for i, conv in enumerate(self.extra):
            if not self.lite and i > 0:
                x = F.relu(x)
            x = conv(x)
            outs.append(x)
        return outs
