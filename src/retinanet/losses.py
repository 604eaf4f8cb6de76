"""Focal loss and box losses for the whole batch at once, as tensors.

torchvision's RetinaNet matches and computes its losses image by image in Python; here
one call covers the padded batch: (N, G) boxes against (M,) anchors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from .boxes import BoxCoder, batched_box_ioa, batched_box_iou
from .config import LossConfig
from .data.labels import CROWD_LABEL, PAD_LABEL
from .matcher import BACKGROUND, IGNORE, Matcher


def sigmoid_focal_loss(logits: Tensor, matches_label: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed sigmoid focal loss (Lin et al. 2017, eq. 5) without a one-hot target tensor.

    logits: (N, M, K); matches_label: (N, M) long, the class of a foreground anchor,
    BACKGROUND for a negative one, IGNORE for one that takes no loss.
    Every entry is first scored as a negative, (1 - alpha) p^gamma (-log(1 - p)); the
    one positive entry of each foreground anchor is then swapped for
    alpha (1 - p)^gamma (-log p). The full-size work is four elementwise ops.
    """
    x = logits.float()
    p = torch.sigmoid(x)
    p_gamma = p * p if gamma == 2.0 else p.pow(gamma)
    neg = (1 - alpha) * (p_gamma * F.softplus(x)).sum(dim=-1)  # (N, M): -log(1-p) = softplus(x)
    total = neg[matches_label != IGNORE].sum()
    fg = matches_label >= 0
    if fg.any():
        x_fg = x[fg].gather(1, matches_label[fg][:, None]).squeeze(1)  # (F,) logit of the true class
        p_fg = torch.sigmoid(x_fg)
        pos = alpha * (1 - p_fg).pow(gamma) * F.softplus(-x_fg)  # -log p = softplus(-x)
        total = total - ((1 - alpha) * p_fg.pow(gamma) * F.softplus(x_fg)).sum() + pos.sum()
    return total


class DetectionLoss(nn.Module):
    """Matching + focal loss + box loss, each divided by a running count of foreground anchors.

    The count is summed over processes under torch.distributed and divided by the world
    size, so DDP's gradient average equals the single-process loss on the global batch.
    """

    def __init__(self, cfg: LossConfig, box_coder: BoxCoder):
        super().__init__()
        if cfg.box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"loss.box_loss must be 'smooth_l1' or 'giou', got {cfg.box_loss!r}")
        self.cfg = cfg
        self.box_coder = box_coder
        self.matcher = Matcher(cfg.fg_iou, cfg.bg_iou, cfg.low_quality_matches, cfg.crowd_ioa)
        # Running foreground count; -1 until the first training batch sets it.
        self.register_buffer("fg_running", torch.tensor(-1.0))

    def match(self, anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """(N, M) matched box index per anchor, or BACKGROUND / IGNORE."""
        valid = gt_labels >= 0
        iou = batched_box_iou(gt_boxes, anchors)  # (N, G, M)
        crowd_ioa = None
        crowd = gt_labels == CROWD_LABEL
        if crowd.any():
            ioa = batched_box_ioa(gt_boxes, anchors).masked_fill(~crowd[:, :, None], 0)  # (N, G, M)
            crowd_ioa = ioa.max(dim=1).values  # (N, M)
        return self.matcher(iou, valid, crowd_ioa)

    def normalizer(self, num_fg: Tensor) -> Tensor:
        if dist.is_available() and dist.is_initialized():
            num_fg = num_fg.clone()
            dist.all_reduce(num_fg)
            num_fg = num_fg / dist.get_world_size()
        num_fg = num_fg.clamp(min=1.0)
        m = self.cfg.normalizer_momentum
        if not self.training or m == 0:
            return num_fg
        with torch.no_grad():
            if self.fg_running < 0:
                self.fg_running.copy_(num_fg)
            else:
                self.fg_running.mul_(m).add_((1 - m) * num_fg)
        return self.fg_running.clone()

    def forward(
        self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor
    ) -> dict[str, Tensor]:
        """cls_logits (N, M, K), box_deltas (N, M, 4), anchors (M, 4),
        gt_boxes (N, G, 4) xyxy pixels, gt_labels (N, G) long (PAD_LABEL / CROWD_LABEL allowed).
        Returns {'loss', 'cls', 'box', 'num_fg'}."""
        if gt_labels.shape[1] == 0:  # no boxes in the whole batch: one padding slot keeps gathers valid
            gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
            gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), PAD_LABEL)
        with torch.no_grad():
            matches = self.match(anchors, gt_boxes.float(), gt_labels)  # (N, M)
            fg = matches >= 0
            safe = matches.clamp(min=0)
            matched_labels = torch.gather(gt_labels, 1, safe)  # (N, M)
            matches_label = torch.where(fg, matched_labels, matches)  # class, BACKGROUND or IGNORE
            num_fg = fg.sum().float()
        norm = self.normalizer(num_fg)
        cls = sigmoid_focal_loss(cls_logits, matches_label, self.cfg.alpha, self.cfg.gamma) / norm

        n_idx, a_idx = fg.nonzero(as_tuple=True)
        pred = box_deltas[n_idx, a_idx].float()  # (F, 4)
        target_boxes = gt_boxes[n_idx, safe[n_idx, a_idx]].float()  # (F, 4)
        fg_anchors = anchors[a_idx]
        if self.cfg.box_loss == "smooth_l1":
            target = self.box_coder.encode(target_boxes, fg_anchors)
            box = F.smooth_l1_loss(pred, target, beta=self.cfg.smooth_l1_beta, reduction="sum")
        else:
            decoded = self.box_coder.decode(pred, fg_anchors)
            box = generalized_box_iou_loss(decoded, target_boxes, reduction="sum")
        box = self.cfg.box_weight * box / norm
        return {"loss": cls + box, "cls": cls.detach(), "box": box.detach(), "num_fg": num_fg}


__all__ = ["sigmoid_focal_loss", "DetectionLoss", "BACKGROUND", "IGNORE"]
