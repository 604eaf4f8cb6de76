"""Anchor assignment for the whole padded batch at once (no Python loop over images or boxes).

Two assigners: Matcher, the paper's fixed IoU thresholds (Lin et al. 2017), and
ATSSMatcher, adaptive thresholds per box (Zhang et al. 2020). Each anchor gets the index
of the ground-truth box it is assigned to, or one of the named values below.
"""

from __future__ import annotations

import torch
from torch import Tensor

BACKGROUND = -1  # assigned to no box (paper: IoU < bg_iou with every box): negative for every class
IGNORE = -2  # no loss at all: the paper's band bg_iou <= IoU < fg_iou, or inside a crowd region


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
        return ignore_crowd(matches, crowd_ioa, self.crowd_ioa)


def ignore_crowd(matches: Tensor, crowd_ioa: Tensor | None, thresh: float) -> Tensor:
    """Background anchors covered at least ``thresh`` by a crowd region take no loss.

    matches (N, M); crowd_ioa (N, M) or None (no crowd region in the batch)."""
    if crowd_ioa is None:
        return matches
    return torch.where((matches == BACKGROUND) & (crowd_ioa >= thresh), IGNORE, matches)


# A positive anchor's centre must lie this many pixels inside its box (ATSS reference
# code, atss_core/modeling/rpn/atss/loss.py: min(l, t, r, b) > 0.01).
ATSS_INSIDE_MARGIN = 0.01


def _centres(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """xyxy (..., 4) -> centre x, centre y, each (...)."""
    return (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2


class ATSSMatcher:
    """Adaptive training sample selection (Zhang et al. 2020, "Bridging the Gap Between
    Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection", Alg. 1)
    for the whole padded batch.

    For each box, on each level, the ``topk`` locations whose centres are closest to the
    box's centre give the candidates (``topk * anchors_per_location`` anchors, as the
    reference code counts them with several anchors per location). The box's IoU threshold
    is mean + std of its candidates' IoUs, so it adapts to the box's size and shape instead
    of a fixed 0.5. A candidate is positive when its IoU reaches the threshold and its
    centre lies inside the box; an anchor positive for several boxes goes to the box of
    highest IoU. Everything else is BACKGROUND (no ignore band), except background anchors
    inside a crowd region, which are IGNORE as with the paper's matcher.
    """

    def __init__(self, topk: int = 9, anchors_per_location: int = 1, crowd_ioa: float = 0.5):
        if topk < 1 or anchors_per_location < 1:
            raise ValueError(f"need topk >= 1 and anchors_per_location >= 1, got {topk}, {anchors_per_location}")
        self.topk, self.anchors_per_location, self.crowd_ioa = topk, anchors_per_location, crowd_ioa

    def candidates(self, gt_boxes: Tensor, anchors: Tensor, num_per_level: list[int]) -> Tensor:
        """(N, G, C) anchor indices: on each level, the topk * A anchors nearest each box's centre.

        gt_boxes (N, G, 4), anchors (M, 4) ordered level by level, num_per_level sums to M.
        C = sum over levels of min(topk * A, M_l). A loop over the (at most 6) levels only."""
        gx, gy = _centres(gt_boxes)  # (N, G) each
        ax, ay = _centres(anchors)  # (M,) each
        out, start = [], 0
        for count in num_per_level:
            end = start + count
            # Squared distance: the same order as the paper's L2 distance, without the sqrt.
            d = (gx[..., None] - ax[start:end]) ** 2 + (gy[..., None] - ay[start:end]) ** 2  # (N, G, M_l)
            k = min(self.topk * self.anchors_per_location, count)
            out.append(d.topk(k, dim=-1, largest=False).indices + start)  # (N, G, k)
            start = end
        return torch.cat(out, dim=-1)

    def __call__(
        self,
        iou: Tensor,
        valid: Tensor,
        gt_boxes: Tensor,
        anchors: Tensor,
        num_per_level: list[int],
        crowd_ioa: Tensor | None = None,
    ) -> Tensor:
        """Assign anchors to boxes.

        iou (N, G, M), valid (N, G) bool (False for padding and crowd slots), gt_boxes
        (N, G, 4), anchors (M, 4), num_per_level: anchors per pyramid level (sums to M),
        crowd_ioa: optional (N, M) as for Matcher. Returns (N, M) long: box index,
        BACKGROUND or IGNORE."""
        n, g, m = iou.shape
        if sum(num_per_level) != m:
            raise ValueError(f"num_per_level sums to {sum(num_per_level)}, but there are {m} anchors")
        if g == 0:
            return ignore_crowd(iou.new_full((n, m), BACKGROUND, dtype=torch.long), crowd_ioa, self.crowd_ioa)
        cand = self.candidates(gt_boxes, anchors, num_per_level)  # (N, G, C)
        cand_iou = iou.gather(2, cand)  # (N, G, C)
        # Unbiased std (torch.std's default), as the paper's reference code computes it.
        thresh = cand_iou.mean(dim=-1, keepdim=True) + cand_iou.std(dim=-1, keepdim=True)  # (N, G, 1)
        ax, ay = _centres(anchors[cand])  # (N, G, C) each
        x1, y1, x2, y2 = gt_boxes.unbind(-1)  # (N, G) each
        margin = torch.stack([ax - x1[..., None], ay - y1[..., None], x2[..., None] - ax, y2[..., None] - ay])
        inside = margin.amin(dim=0) > ATSS_INSIDE_MARGIN  # (N, G, C)
        is_pos = (cand_iou >= thresh) & inside & valid[:, :, None]  # (N, G, C)
        # Candidate indices are distinct within a box (levels are disjoint), so no scatter collides.
        pos = torch.zeros_like(iou, dtype=torch.bool).scatter_(2, cand, is_pos)  # (N, G, M)
        # An anchor positive for several boxes goes to the one of highest IoU.
        best = iou.masked_fill(~pos, -1.0).argmax(dim=1)  # (N, M)
        matches = torch.where(pos.any(dim=1), best, BACKGROUND)
        return ignore_crowd(matches, crowd_ioa, self.crowd_ioa)
