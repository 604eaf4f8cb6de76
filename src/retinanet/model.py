"""RetinaNet on a MobileNet backbone: forward -> raw outputs; loss(); predict().

forward returns the two raw tensors (class logits, box deltas) and nothing else, so
training, validation loss and export all start from the same call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .anchors import anchors_for
from .backbones import Backbone, build_backbone, fold_bn
from .boxes import BoxCoder
from .config import ModelConfig, PostprocessConfig
from .fpn import FPN
from .heads import RetinaHead, fold_head_bn
from .losses import DetectionLoss
from .postprocess import Detections, postprocess
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, RECT_STRIDE, letterbox, padded_size


class RetinaNet(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        backbone: Backbone | None = None,
        fpn: FPN | None = None,
        head: RetinaHead | None = None,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
    ):
        super().__init__()
        if not isinstance(cfg.input_size, int):
            raise ValueError(
                f"model.input_size={cfg.input_size!r}: a model needs a number of pixels "
                "('auto' is resolved from the training data when `retinanet train` starts)"
            )
        self.cfg = cfg
        # C3..C5 (strides 8, 16, 32), and C2 (stride 4) first when the pyramid starts at P2.
        feature_strides = tuple(2**lv for lv in range(cfg.fpn.min_level, 6))
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone, feature_strides)
        self.fpn = fpn if fpn is not None else FPN(
            self.backbone.out_channels, cfg.fpn.channels, cfg.fpn.lite, cfg.fpn.min_level, cfg.fpn.max_level
        )
        levels = range(cfg.fpn.min_level, cfg.fpn.max_level + 1)
        self.anchor_generator = anchors_for(cfg)
        self.head = head if head is not None else RetinaHead(
            cfg.fpn.channels,
            self.anchor_generator.num_anchors,
            cfg.num_classes,
            num_levels=len(levels),
            depth=cfg.head.depth,
            lite=cfg.head.lite,
            norm=cfg.head.norm,
            prior_prob=cfg.head.prior_prob,
        )
        self.box_coder = BoxCoder()
        self.criterion = DetectionLoss(cfg.loss, self.box_coder, self.anchor_generator.num_anchors)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if class_names is not None and len(class_names) != cfg.num_classes:
            raise ValueError(f"{len(class_names)} class names for {cfg.num_classes} classes")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(cfg.num_classes)]
        if category_ids is not None and len(category_ids) != cfg.num_classes:
            raise ValueError(f"{len(category_ids)} category ids for {cfg.num_classes} classes")
        # The dataset's own id of each contiguous label 0..K-1 (COCO ids are not contiguous).
        self.category_ids = list(category_ids) if category_ids else list(range(cfg.num_classes))
        self.fused = False  # set by fuse(): batch norm folded, inference only
        self.backbone_frozen = False  # set by freeze_backbone()
        # Depthwise convs run about twice as fast in channels-last layout on CPU.
        self.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Stop (or restart) training the backbone: its weights get no gradients and its
        batch norm keeps its ImageNet statistics. Stages frozen by the config stay frozen."""
        self.backbone_frozen = frozen
        for i, stage in enumerate(self.backbone.stages):
            for p in stage.parameters():
                p.requires_grad_(not frozen and i >= self.cfg.backbone.freeze_stages)
        self.train(self.training)

    def fuse(self, channels_last: bool = True) -> RetinaNet:
        """Inference only, in place: fold every batch norm into the conv before it (the head's
        per-level BNs into per-level conv copies). Same outputs, fewer passes over the
        activations; the model can no longer be trained. ``channels_last`` also converts the
        weights to the memory format PyTorch's CPU convs run fastest in (eager inference)."""
        if not self.fused:
            self.eval()
            fold_bn(self.backbone)
            fold_bn(self.fpn)
            if self.cfg.head.norm == "bn":
                self.head = fold_head_bn(self.head, self.fpn.num_levels)
            if channels_last:
                self.to(memory_format=torch.channels_last)
        self.fused = True
        return self.eval()

    def train(self, mode: bool = True) -> RetinaNet:
        if mode and self.fused:
            raise RuntimeError("this model was fused for inference (model.fuse()); rebuild it to train")
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
        return self

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W) RGB in [0, 1] -> cls logits (N, M, K), box deltas (N, M, 4)."""
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.head(self.fpn(self.backbone(x)))

    def anchors(self, image_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        """Anchors (M, 4) for an input of this size, and the number per level."""
        return self.anchor_generator(image_hw, device=self.mean.device)

    def loss(self, outputs: tuple[Tensor, Tensor], image_hw: tuple[int, int], gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """outputs of forward; gt_boxes (N, G, 4) xyxy input pixels; gt_labels (N, G) with
        PAD_LABEL for padding and CROWD_LABEL for ignore regions."""
        cls_logits, box_deltas = outputs
        anchors, counts = self.anchors(image_hw)
        if anchors.shape[0] != cls_logits.shape[1]:
            raise RuntimeError(f"{anchors.shape[0]} anchors but the head produced {cls_logits.shape[1]} predictions")
        return self.criterion(cls_logits, box_deltas, anchors, gt_boxes, gt_labels, counts)

    def postprocess(
        self,
        outputs: tuple[Tensor, Tensor],
        image_hw: tuple[int, int],
        scales: Tensor | None = None,
        orig_sizes: Tensor | None = None,
        post: PostprocessConfig | None = None,
    ) -> list[Detections]:
        """Detections from forward's outputs. ``post`` (thresholds, top-k, NMS) applies to
        this call only; None uses the model's ``cfg.postprocess``. The model is not changed."""
        anchors, counts = self.anchors(image_hw)
        post = self.cfg.postprocess if post is None else post
        return postprocess(*outputs, anchors, counts, post, self.box_coder, scales, orig_sizes)

    @torch.no_grad()
    def predict(self, images: list[Tensor] | Tensor, post: PostprocessConfig | None = None) -> list[Detections]:
        """images: (3, H, W) uint8 / [0, 1] float tensors of any sizes, or a batch of them.
        Returns one Detections per image, boxes in that image's pixels. ``post`` overrides
        the model's post-processing settings for this call only (thread-safe: nothing is
        written into the model).

        With ``cfg.rect`` images run in groups of one padded input size, so an image's
        detections never depend on the other images of the call (padding it to a larger
        neighbour's size would change them), as in the exported graph."""
        if isinstance(images, Tensor) and images.ndim == 3:
            images = [images]
        images = list(images)
        size, stride = self.cfg.input_size, RECT_STRIDE if self.cfg.rect else None
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(padded_size(*img.shape[-2:], size, stride), []).append(i)
        was_training = self.training
        self.eval()
        out: list[Detections] = [None] * len(images)  # type: ignore[list-item]
        for idx in groups.values():
            batch, scales, sizes = letterbox([images[i] for i in idx], size, stride)
            batch = batch.to(self.mean.device)
            for i, det in zip(idx, self.postprocess(self(batch), batch.shape[-2:], scales, sizes, post)):
                out[i] = det
        self.train(was_training)
        return out


def build_model(cfg: ModelConfig, class_names: list[str] | None = None, category_ids: list[int] | None = None) -> RetinaNet:
    return RetinaNet(cfg, class_names=class_names, category_ids=category_ids)
