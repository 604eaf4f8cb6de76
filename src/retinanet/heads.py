"""Class and box subnets (Lin et al. 2017, Fig. 3): towers of ``depth`` convs whose
weights are shared across pyramid levels, then a predictor per anchor.

Plain: 3x3 convs of C channels with ReLU (optionally GroupNorm), 3x3 predictors.
Lite (TF's FPNLite heads): depthwise-separable convs + ReLU6 in the towers and in the
predictors. With norm='bn' the convs are shared but each level has its own batch norm,
because statistics differ between levels (as in TF's weight-shared box predictor).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class _Tower(nn.Module):
    def __init__(self, channels: int, depth: int, lite: bool, norm: str, num_levels: int):
        super().__init__()
        if norm not in ("bn", "gn", "none"):
            raise ValueError(f"head.norm must be 'bn', 'gn' or 'none', got {norm!r}")
        self.norm = norm
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()  # per layer: a ModuleList of one BN per level, or one GN
        for _ in range(depth):
            if lite:
                conv = nn.Sequential(
                    nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                    nn.Conv2d(channels, channels, 1, bias=norm == "none"),
                )
            else:
                conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=norm == "none")
            self.convs.append(conv)
            if norm == "bn":
                self.norms.append(nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_levels)))
            elif norm == "gn":
                self.norms.append(nn.GroupNorm(32 if channels % 32 == 0 else 8, channels))
        self.act = nn.ReLU6(inplace=True) if lite else nn.ReLU(inplace=True)

    def forward(self, x: Tensor, level: int) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norm == "bn":
                x = self.norms[i][level](x)
            elif self.norm == "gn":
                x = self.norms[i](x)
            x = self.act(x)
        return x


def _predictor(channels: int, out: int, lite: bool) -> nn.Module:
    if lite:
        return nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False), nn.Conv2d(channels, out, 1)
        )
    return nn.Conv2d(channels, out, 3, 1, 1)


class RetinaHead(nn.Module):
    """Returns cls logits (N, sum_l H_l*W_l*A, K) and box deltas (N, sum_l H_l*W_l*A, 4)."""

    def __init__(
        self,
        channels: int,
        num_anchors: int,
        num_classes: int,
        num_levels: int = 5,
        depth: int = 4,
        lite: bool = False,
        norm: str = "none",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_tower = _Tower(channels, depth, lite, norm, num_levels)
        self.box_tower = _Tower(channels, depth, lite, norm, num_levels)
        self.cls_pred = _predictor(channels, num_anchors * num_classes, lite)
        self.box_pred = _predictor(channels, num_anchors * 4, lite)  # class-agnostic (paper)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1:  # depthwise: std 0.01 would kill the signal
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Paper sec. 4.1: b = -log((1 - pi) / pi) so every anchor starts at foreground prob pi.
        cls_bias = self.cls_pred[-1].bias if lite else self.cls_pred.bias
        nn.init.constant_(cls_bias, -math.log((1 - prior_prob) / prior_prob))

    def level_maps(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per level: cls logits (N, A*K, H, W) and box deltas (N, A*4, H, W)."""
        return [
            (self.cls_pred(self.cls_tower(f, level)), self.box_pred(self.box_tower(f, level)))
            for level, f in enumerate(feats)
        ]

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        n = feats[0].shape[0]
        cls_out, box_out = [], []
        for c, b in self.level_maps(feats):
            # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A, K)
            cls_out.append(c.permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
            box_out.append(b.permute(0, 2, 3, 1).reshape(n, -1, 4))
        return torch.cat(cls_out, dim=1), torch.cat(box_out, dim=1)


# ----------------------------------------------------------------------------- inference


class _FoldedTower(nn.Module):
    """A head tower with each level's batch norm folded into that level's own copy of the
    conv before it. The trained head shares conv weights across levels but keeps a BN
    per level, so no runtime can fold it: the folded copies differ per level."""

    def __init__(self, tower: nn.Module, num_levels: int):
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            layers: list[nn.Module] = []
            for i, conv in enumerate(tower.convs):
                bn = tower.norms[i][level]
                if isinstance(conv, nn.Sequential):  # lite: depthwise (shared), pointwise (+ BN folded)
                    *rest, last = list(conv)
                    layers += [*rest, fuse_conv_bn_eval(copy.deepcopy(last), bn)]
                else:
                    layers.append(fuse_conv_bn_eval(copy.deepcopy(conv), bn))
                layers.append(copy.deepcopy(tower.act))
            self.levels.append(nn.Sequential(*layers))

    def forward(self, x: Tensor, level: int) -> Tensor:
        return self.levels[level](x)


def fold_head_bn(head: RetinaHead, num_levels: int) -> RetinaHead:
    """RetinaHead for inference: the same module and forward, with each tower replaced by
    its per-level folded copy (eval mode)."""
    folded = copy.copy(head)  # shallow: shares the predictors, gets its own module dict
    folded._modules = dict(head._modules)
    folded.cls_tower = _FoldedTower(head.cls_tower, num_levels)
    folded.box_tower = _FoldedTower(head.box_tower, num_levels)
    return folded
