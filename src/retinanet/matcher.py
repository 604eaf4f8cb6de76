"""IoU matcher for the whole padded batch at once (no Python loop over images).

Each anchor gets the index of the ground-truth box it is assigned to, or one of the
named values below.
"""

from __future__ import annotations

import torch
from torch import Tensor

BACKGROUND = -1  # IoU < bg_iou with every box: trained as negative for every class
IGNORE = -2  # bg_iou <= IoU < fg_iou, or inside a crowd region: no loss at all


class Matcher:
    def __init__(self, fg_iou: float = 0.5, bg_iou: float = 0.4, low_quality_matches: bool = True, crowd_ioa: float = 0.5):
        if not 0 <= bg_iou <= fg_iou <= 1:
            raise ValueError(f"need 0 <= bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.low_quality_matches = low_quality_matches
        self.crowd_ioa = crowd_ioa

    def __call__(self, iou: Tensor, valid: Tensor, crowd_ioa: Tensor | None = None) -> Tensor:
        """Assign anchors to boxes.

        iou: (N, G, M) IoU of G (padded) boxes with M anchors.
        valid: (N, G) bool, True for real (non-padding, non-crowd) boxes.
        crowd_ioa: optional (N, M) largest fraction of each anchor inside a crowd region.
        Returns (N, M) long: box index in 0..G-1, BACKGROUND or IGNORE.
        """
        n, g, m = iou.shape
        if g == 0:
            matches = iou.new_full((n, m), BACKGROUND, dtype=torch.long)
        else:
            iou = iou.masked_fill(~valid[:, :, None], -1.0)  # padding never wins
            best_iou, matches = iou.max(dim=1)  # (N, M) over boxes
            original = matches.clone()
            matches[best_iou < self.fg_iou] = IGNORE
            matches[best_iou < self.bg_iou] = BACKGROUND
            if self.low_quality_matches:
                # Each box keeps the anchors of its highest IoU (ties included), even below
                # fg_iou, assigned to the box those anchors overlap most (as Detectron does).
                best_per_box = iou.max(dim=2, keepdim=True).values  # (N, G, 1)
                is_best = (iou == best_per_box) & valid[:, :, None] & (best_per_box > 0)
                keep = is_best.any(dim=1)  # (N, M)
                matches = torch.where(keep, original, matches)
        if crowd_ioa is not None:
            matches = torch.where((matches == BACKGROUND) & (crowd_ioa >= self.crowd_ioa), IGNORE, matches)
        return matches
