"""Class losses (focal, quality focal) and box losses for the whole batch at once, as tensors.

torchvision's RetinaNet matches and computes its losses image by image in Python; here
one call covers the padded batch: (N, G) boxes against (M,) anchors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from .boxes import CPU_CHUNK, BoxCoder, area, batched_box_ioa, batched_box_iou
from .config import LossConfig
from .data.labels import CROWD_LABEL, PAD_LABEL
from .matcher import BACKGROUND, IGNORE, ATSSMatcher, Matcher

ASSIGNERS = ("paper", "atss")
CLS_LOSSES = ("focal", "quality_focal")
BOX_LOSSES = ("smooth_l1", "giou")


class _ClassLoss(torch.autograd.Function):
    """Summed sigmoid class loss over every (anchor, class) entry of (N, M, K) logits
    without a one-hot target. Every entry of a kept anchor is first scored as a negative,
    scale * p^gamma * (-log(1 - p)) with p = sigmoid(x); the entries at ``fg_index`` (flat
    indices, one per foreground anchor: its true class) are then swapped for
    ``positive(x_fg)``, a (F,) loss. The gradient is computed in the same pass and kept for
    the backward, which is one multiplication: the logits are the largest tensor of a
    training step, and autograd's backward through the elementwise chain cost as much again
    as the forward. The negative gradient is scale * p^gamma * (gamma (1 - p) (-log(1 - p))
    + p); -log(1 - p) is -log(sigmoid(-x)), which equals softplus(x) to rounding and is twice
    as fast on a CPU (log1p is not vectorised there). On a CPU the anchors are taken in
    slices of about CPU_CHUNK elements, so the chain's eight steps work in cache instead of
    making eight trips through memory (forward and backward on (8, 19206, 80) logits about
    2.7x faster; BENCHMARKS.md)."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, gamma: float, scale: float, fg_index: Tensor, positive) -> Tensor:
        k = x.shape[-1]
        rows, weights = x.reshape(-1, k), (keep * scale).reshape(-1, 1)  # keep: (N, M) 0/1
        step = max(1, CPU_CHUNK // k) if x.device.type == "cpu" else rows.shape[0]
        grad = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        parts = []
        for i in range(0, rows.shape[0], step):
            xs, ws = rows[i : i + step], weights[i : i + step]
            p = torch.sigmoid(xs)
            q = torch.sigmoid(-xs)  # 1 - p without cancellation
            s = q.log().neg_()  # -log(1 - p) = softplus(x)
            p_gamma = (p * p if gamma == 2.0 else p.pow(gamma)).mul_(ws)
            parts.append((p_gamma * s).sum())
            if grad is not None:
                torch.mul(s.mul_(q).mul_(gamma).add_(p), p_gamma, out=grad[i : i + step])
        if fg_index.numel():  # foreground anchors are kept: their weight is scale
            x_fg = rows.reshape(-1)[fg_index]
            negative = torch.sigmoid(x_fg).pow(gamma) * torch.sigmoid(-x_fg).log().neg() * scale
            with torch.enable_grad():
                x_fg = x_fg.detach().requires_grad_(True)
                pos = positive(x_fg)
                (pos_grad,) = torch.autograd.grad(pos.sum(), x_fg)
            parts += [-negative.sum(), pos.detach().sum()]
            if grad is not None:
                grad.view(-1)[fg_index] = pos_grad
        if grad is not None:
            ctx.grad = grad.view_as(x)  # not save_for_backward: backward scales it in place
        return torch.stack(parts).sum() if parts else x.new_zeros(())

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad, ctx.grad = ctx.grad, None  # scaled in place, so one backward only (no retain_graph)
        if grad is None:
            raise RuntimeError("the focal loss's class term was already backpropagated; it supports one backward pass")
        return grad.mul_(grad_output), None, None, None, None, None


def _foreground_index(matches_label: Tensor, k: int) -> Tensor:
    """Flat indices into (N, M, K) logits of each foreground anchor's true class, in the
    row-major order of ``matches_label >= 0``."""
    flat = matches_label.reshape(-1)
    rows = (flat >= 0).nonzero().squeeze(1)
    return rows * k + flat[rows]


def _class_loss(logits: Tensor, matches_label: Tensor, gamma: float, scale: float, positive) -> Tensor:
    """_ClassLoss on (N, M, K) logits: ignored anchors dropped, every foreground anchor's
    true-class entry scored by ``positive``."""
    x = logits.float()
    keep = (matches_label != IGNORE).to(x.dtype)
    return _ClassLoss.apply(x, keep, gamma, scale, _foreground_index(matches_label, x.shape[-1]), positive)


def sigmoid_focal_loss(logits: Tensor, matches_label: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed sigmoid focal loss (Lin et al. 2017, eq. 5) without a one-hot target tensor.

    logits: (N, M, K); matches_label: (N, M) long, the class of a foreground anchor,
    BACKGROUND for a negative one, IGNORE for one that takes no loss.
    Every entry is scored as a negative, (1 - alpha) p^gamma (-log(1 - p)), except the one
    positive entry of each foreground anchor: alpha (1 - p)^gamma (-log p).
    """

    def positive(x_fg: Tensor) -> Tensor:
        return alpha * (1 - torch.sigmoid(x_fg)).pow(gamma) * F.softplus(-x_fg)  # -log p = softplus(-x)

    return _class_loss(logits, matches_label, gamma, 1 - alpha, positive)


def quality_focal_loss(logits: Tensor, matches_label: Tensor, fg_quality: Tensor, beta: float = 2.0) -> Tensor:
    """Summed quality focal loss (Li et al. 2020, "Generalized Focal Loss", eq. 5) without a
    one-hot target tensor: |y - p|^beta * BCE(x, y) over every (anchor, class) entry.

    logits: (N, M, K); matches_label: (N, M) as for sigmoid_focal_loss; fg_quality: (F,)
    the target y of the true class of each foreground anchor (its IoU), in the row-major
    order of ``matches_label >= 0``, a label (no gradient flows into it). Every other entry
    has target 0 and is scored p^beta (-log(1 - p)) = p^beta BCE(x, 0); the true-class entry
    of each foreground anchor is |y - p|^beta BCE(x, y). No alpha: GFL drops it.
    """
    y = fg_quality.detach().float()

    def positive(x_fg: Tensor) -> Tensor:
        return (y - torch.sigmoid(x_fg)).abs().pow(beta) * F.binary_cross_entropy_with_logits(x_fg, y, reduction="none")

    return _class_loss(logits, matches_label, beta, 1.0, positive)  # BCE(x, 0) = -log(1 - p)


def paired_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of each box of ``a`` with the box of ``b`` at the same index: (F, 4), (F, 4) -> (F,)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


class DetectionLoss(nn.Module):
    """Assignment + class loss + box loss, each divided by a running count of foreground anchors.

    Assignment: the paper's IoU matcher or ATSS (``cfg.assigner``); class loss: focal or
    quality focal (``cfg.cls_loss``). The count is summed over processes under
    torch.distributed and divided by the world size, so DDP's gradient average equals the
    single-process loss on the global batch. ``anchors_per_location`` (A) only matters to
    ATSS, which takes atss_topk locations, i.e. atss_topk * A anchors, per level.
    """

    def __init__(self, cfg: LossConfig, box_coder: BoxCoder, anchors_per_location: int | None = None):
        super().__init__()
        for key, value, allowed in (
            ("box_loss", cfg.box_loss, BOX_LOSSES),
            ("assigner", cfg.assigner, ASSIGNERS),
            ("cls_loss", cfg.cls_loss, CLS_LOSSES),
        ):
            if value not in allowed:
                raise ValueError(f"loss.{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        self.cfg = cfg
        self.box_coder = box_coder
        if cfg.assigner == "atss":
            if anchors_per_location is None:
                raise ValueError("loss.assigner=atss needs anchors_per_location (A): it takes atss_topk locations per level")
            self.matcher = ATSSMatcher(cfg.atss_topk, anchors_per_location, cfg.crowd_ioa)
        else:
            self.matcher = Matcher(cfg.fg_iou, cfg.bg_iou, cfg.low_quality_matches, cfg.crowd_ioa)
        # Running foreground count; -1 until the first training batch sets it.
        self.register_buffer("fg_running", torch.tensor(-1.0))

    def match(
        self, anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_per_level: list[int] | None = None
    ) -> Tensor:
        """(N, M) matched box index per anchor, or BACKGROUND / IGNORE. ATSS needs
        ``num_per_level``, the anchors per pyramid level (model.anchors()'s second output)."""
        valid = gt_labels >= 0
        iou = batched_box_iou(gt_boxes, anchors)  # (N, G, M)
        crowd_ioa = None
        crowd = gt_labels == CROWD_LABEL
        if crowd.any():
            ioa = batched_box_ioa(gt_boxes, anchors).masked_fill(~crowd[:, :, None], 0)  # (N, G, M)
            crowd_ioa = ioa.max(dim=1).values  # (N, M)
        if isinstance(self.matcher, ATSSMatcher):
            if num_per_level is None:
                raise ValueError("loss.assigner='atss' needs the anchors per level: pass num_per_level")
            return self.matcher(iou, valid, gt_boxes, anchors, list(num_per_level), crowd_ioa)
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

    def class_loss(
        self, cls_logits: Tensor, matches_label: Tensor, pred: Tensor, target_boxes: Tensor, fg_anchors: Tensor
    ) -> Tensor:
        """Summed class loss. pred (F, 4) deltas, target_boxes (F, 4), fg_anchors (F, 4) of the
        foreground anchors in the row-major order of ``matches_label >= 0``."""
        if self.cfg.cls_loss == "focal":
            return sigmoid_focal_loss(cls_logits, matches_label, self.cfg.alpha, self.cfg.gamma)
        # GFL: the IoU is a label (detached); the box branch learns from the box loss only.
        with torch.no_grad():
            quality = paired_box_iou(self.box_coder.decode(pred, fg_anchors), target_boxes)  # (F,)
        return quality_focal_loss(cls_logits, matches_label, quality, self.cfg.qfl_beta)

    def box_loss(self, pred: Tensor, target_boxes: Tensor, fg_anchors: Tensor) -> Tensor:
        """Summed box loss of the foreground anchors: pred (F, 4) deltas, targets (F, 4) xyxy."""
        if self.cfg.box_loss == "smooth_l1":
            target = self.box_coder.encode(target_boxes, fg_anchors)
            return F.smooth_l1_loss(pred, target, beta=self.cfg.smooth_l1_beta, reduction="sum")
        decoded = self.box_coder.decode(pred, fg_anchors)
        return generalized_box_iou_loss(decoded, target_boxes, reduction="sum")

    def forward(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        num_per_level: list[int] | None = None,
    ) -> dict[str, Tensor]:
        """cls_logits (N, M, K), box_deltas (N, M, 4), anchors (M, 4),
        gt_boxes (N, G, 4) xyxy pixels, gt_labels (N, G) long (PAD_LABEL / CROWD_LABEL allowed),
        num_per_level: anchors per pyramid level (needed by ATSS, unused by the paper's matcher).
        Returns {'loss', 'cls', 'box', 'num_fg'}."""
        if gt_labels.shape[1] == 0:  # no boxes in the whole batch: one padding slot keeps gathers valid
            gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
            gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), PAD_LABEL)
        with torch.no_grad():
            matches = self.match(anchors, gt_boxes.float(), gt_labels, num_per_level)  # (N, M)
            fg = matches >= 0
            safe = matches.clamp(min=0)
            matched_labels = torch.gather(gt_labels, 1, safe)  # (N, M)
            matches_label = torch.where(fg, matched_labels, matches)  # class, BACKGROUND or IGNORE
            num_fg = fg.sum().float()
        norm = self.normalizer(num_fg)
        n_idx, a_idx = fg.nonzero(as_tuple=True)  # row-major, the order of x[fg] in the class losses
        pred = box_deltas[n_idx, a_idx].float()  # (F, 4)
        target_boxes = gt_boxes[n_idx, safe[n_idx, a_idx]].float()  # (F, 4)
        fg_anchors = anchors[a_idx]
        cls = self.class_loss(cls_logits, matches_label, pred, target_boxes, fg_anchors) / norm
        box = self.cfg.box_weight * self.box_loss(pred, target_boxes, fg_anchors) / norm
        return {"loss": cls + box, "cls": cls.detach(), "box": box.detach(), "num_fg": num_fg}


__all__ = ["sigmoid_focal_loss", "quality_focal_loss", "paired_box_iou", "DetectionLoss", "BACKGROUND", "IGNORE"]
