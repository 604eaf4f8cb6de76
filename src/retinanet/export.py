"""ONNX export: one graph from a decoded uint8 image to final detections, NMS inside.

The exported graph, end to end:

    images uint8 (N, H, W, 3) RGB, any H and W (all images of one batch share them)
      -> letterbox (hand-built ONNX: Resize with antialias, pad bottom/right up to a
         multiple of 32, rectangular like eager predict; or to the full square)
      -> network (backbone, FPN, head; each level's batch norm folded into its own conv copy)
      -> per-level top-k of class logits, sigmoid, box decoding of those candidates only
         (their anchors computed from their indices: AnchorGenerator.anchors_at)
      -> class-aware NMS (ONNX NonMaxSuppression, one class with shifted boxes), best
         ``max_detections`` per image
      -> boxes divided by the letterbox scale and clipped to the image
    outputs: boxes (N, D, 4) float xyxy image pixels, scores (N, D), labels (N, D) int64
             (PAD_LABEL past the count), num_detections (N,) int64

``score_threshold`` and ``iou_threshold`` are optional inputs (shape (1,), defaulting to
the model's values), so a runtime can change them without re-exporting. The class names,
category ids, input size and thresholds travel in the model's metadata_props.

Exporter choice: torch.onnx's dynamo exporter (torch.export + onnxscript), the default in
torch 2.14. NMS is a torch custom op (``retinanet::nms``) whose eager implementation
follows the ONNX NonMaxSuppression contract and which the exporter translates to that
op. Antialiased resizing with sizes computed from the input shape does not survive
torch.export, so the letterbox is written directly in ONNX and joined in front of the
network with onnx.compose; with ``exclude_outside=1`` ORT's antialiased Resize matches
torch's ``interpolate(antialias=True)`` to 1e-6.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import TensorProto
from onnx import helper as oh
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .anchors import index_div
from .boxes import BoxCoder
from .config import PostprocessConfig
from .preprocess import RECT_STRIDE, letterbox

EXPORT_FORMAT = "retinanet-mobilenet-onnx/1"
OPSET = 18  # Resize's antialias attribute needs opset 18
PAD_LABEL = -1  # label of the padding rows past num_detections

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
SCORE_INPUT = "score_threshold"
LETTERBOX_PREFIX = "letterbox/"
IOU_INPUT = "iou_threshold"


@dataclass
class ExportConfig:
    """Options of `retinanet export`; None means the model's own value."""

    input_size: int | None = None
    """Longest side the graph letterboxes to (default: the model's input_size)."""
    rect: bool | None = None
    """Pad the letterboxed image only up to a multiple of 32 (a 4:3 photo at 320 runs at
    320 x 256, as eager predict does), instead of to the full square (default: the model's
    ``rect``)."""
    score_thresh: float | None = None
    """Default of the graph's score_threshold input."""
    nms_iou: float | None = None
    """Default of the graph's iou_threshold input."""
    max_detections: int | None = None
    """Rows of the padded outputs (detections kept per image)."""
    topk: int | None = None
    """Candidates kept per pyramid level before NMS."""
    fold_bn: bool = True
    """Fold every batch norm into its conv (the head's per level into per-level copies) and
    the input's division by std into the stem conv (speed)."""
    opset: int = OPSET
    """ONNX opset (18 or newer: antialiased Resize)."""
    check: bool = True
    """Run onnx.checker on the result."""


@contextlib.contextmanager
def _quiet_logger(name: str | None, level: int = logging.ERROR):
    """Silence one library logger for a block: the exporter's onnx_ir warns about an
    internal empty attribute, the quantizer (root logger) advises a pre-processing step
    that does not apply to a graph with its own letterbox."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


# ----------------------------------------------------------------------------- NMS op


@torch.library.custom_op("retinanet::nms", mutates_args=())
def onnx_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: Tensor, score_threshold: Tensor) -> Tensor:
    """ONNX NonMaxSuppression, in torch: boxes (N, C, 4) xyxy, scores (N, K, C).

    Returns selected (S, 3) int64 rows [image, class, box]: per image and class the boxes
    with score > score_threshold that survive greedy NMS at iou_threshold, at most
    max_per_class of them, best first.
    """
    rows = []
    for i in range(boxes.shape[0]):
        cls, idx = (scores[i] > score_threshold).nonzero(as_tuple=True)  # (P,), (P,)
        s = scores[i, cls, idx]
        kept = batched_nms(boxes[i, idx].float(), s.float(), cls, float(iou_threshold))  # sorted by score
        cls, idx = cls[kept], idx[kept]
        # At most max_per_class per class: rank of each kept box within its class.
        same = cls[:, None] == cls[None, :]  # (P', P')
        rank = torch.tril(same.long(), diagonal=-1).sum(1)
        sel = rank < max_per_class
        rows.append(torch.stack([torch.full_like(idx[sel], i), cls[sel], idx[sel]], dim=1))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.int64, device=boxes.device)
    return torch.cat(rows).to(torch.int64)


@onnx_nms.register_fake
def _(boxes, scores, max_per_class, iou_threshold, score_threshold):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n, 3), dtype=torch.int64)


def _nms_to_onnx(boxes, scores, max_per_class: int, iou_threshold, score_threshold):
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes, scores, op.Constant(value_ints=[max_per_class]), iou_threshold, score_threshold, center_point_box=0
    )


def _index_div_to_onnx(index, divisor):
    from onnxscript import opset18 as op

    if isinstance(divisor, int):
        divisor = op.Constant(value_int=divisor)
    return op.Div(index, op.CastLike(divisor, index))


# ----------------------------------------------------------------------------- torch part


def level_candidates(logits: Tensor, top_k: int, pad: int, row: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``top_k`` best pairs of one level, with a static shape.

    logits (N, P), pair index i * row + j (here anchor * K + class) -> scores (N, top_k),
    i (N, top_k), j (N, top_k).
    With ``pad`` the level may have fewer than top_k pairs (a small rectangular input):
    ``pad`` lowest-float logits are appended and, if picked, come out as score -1 (never a
    detection) at index 0.

    postprocess.select_candidates thresholds first and sorts only crowded levels, which
    needs data-dependent shapes; taking the top-k first and leaving the threshold to NMS's
    score_threshold keeps the same candidates (those above the threshold among each
    level's best topk).
    """
    pairs = logits.shape[1]
    if pad:
        # The lowest float rather than -inf: int8 calibration computes a range for every tensor.
        logits = torch.cat([logits, logits.new_full((logits.shape[0], pad), torch.finfo(logits.dtype).min)], 1)
    top, flat = logits.topk(top_k, dim=1)  # sigmoid is monotonic
    scores = torch.sigmoid(top)
    if pad:
        real = flat < pairs
        scores, flat = torch.where(real, scores, -1.0), torch.where(real, flat, 0)
    i = index_div(flat, row)
    return scores, i, flat - i * row


def class_aware_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, max_out: int, iou_threshold: Tensor, score_threshold: Tensor
) -> Tensor:
    """ONNX NonMaxSuppression over candidates of several classes: boxes (N, C, 4), scores
    and labels (N, C) -> selected (S, 3) rows [image, 0, candidate].

    One-class NMS with each class's boxes shifted by label * (extent + 1), so classes never
    overlap (torchvision's batched_nms coordinate trick); an (N, K, C) score tensor for
    ONNX's class axis would be K times larger and its NMS scans every class's row. The
    extent is taken over the candidates above the threshold only, those NMS sees (as
    eager's batched_nms does): a huge low-score box would make the shift so large that
    float32 loses the small boxes' IoU. Finite stand-ins rather than inf, because int8
    calibration takes every tensor's range.
    """
    live, big = (scores > score_threshold)[..., None], torch.finfo(boxes.dtype).max  # (N, C, 1)
    lo = torch.where(live, boxes, big).amin(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    hi = torch.where(live, boxes, -big).amax(dim=(1, 2), keepdim=True)
    extent = torch.where(hi >= lo, hi - lo, 0.0)  # 0 when nothing passes (NMS keeps nothing)
    shifted = boxes + labels[..., None].to(boxes.dtype) * (extent + 1)
    return onnx_nms(shifted, scores[:, None, :], max_out, iou_threshold, score_threshold)


def _stem_conv(backbone: nn.Module) -> nn.Conv2d | None:
    """The backbone's first conv, when it is a plain conv over the 3 image channels."""
    stages = getattr(backbone, "stages", None)
    first = next((m for m in stages[0].modules() if isinstance(m, nn.Conv2d)), None) if stages else None
    if first is None or first.in_channels != 3 or first.groups != 1 or first.padding_mode != "zeros":
        return None
    return first


class DetectionGraph(nn.Module):
    """Letterboxed image -> final detections, with fixed-size padded outputs.

    forward(x (N, 3, H, W) float in [0, 1] as the letterbox makes it: with ``rect`` H and W
    multiples of 32, the longer one equal to ``input_size`` (the static top-k sizes assume
    it: the smallest input is 32 x input_size); else both ``input_size``), scale (1,),
    limits (4,) = [W, H, W, H],
    score_threshold (1,), iou_threshold (1,)) -> boxes (N, D, 4), scores (N, D),
    labels (N, D), num_detections (N,). The same code runs eagerly and is exported.

    Only the candidates are decoded: each level's top-k pairs pick their deltas and their
    anchors (computed from the index, AnchorGenerator.anchors_at), so no anchor grid and
    no concatenation of the full class map is ever built, and nothing depends on the
    input's size except through the feature maps' widths.
    """

    def __init__(self, model: nn.Module, input_size: int, post: PostprocessConfig, fold_bn: bool = True, rect: bool = False):
        super().__init__()
        model = copy.deepcopy(model).eval().cpu()  # the caller's model keeps its weights, device and mode
        if fold_bn:
            model.fuse(channels_last=False)
        self.backbone, self.fpn, self.head = model.backbone, model.fpn, model.head
        self.num_classes = model.num_classes
        self.box_coder = BoxCoder(model.box_coder.weights, model.box_coder.clamp)
        self.anchor_generator = gen = model.anchor_generator
        # Static top-k sizes: a level keeps min(topk, pairs of the largest input); with a
        # rectangular input the smallest one (RECT_STRIDE x input_size) may have fewer,
        # and is padded up to that.
        k = model.num_classes
        largest = gen((input_size, input_size))[1]
        smallest = gen((RECT_STRIDE, input_size))[1] if rect else largest
        self.level_k = [min(post.topk, c * k) for c in largest]
        self.level_pad = [max(0, top - c * k) for top, c in zip(self.level_k, smallest)]
        # Output rows D: max_detections, unless fewer candidates exist at all (tiny inputs).
        self.rows = min(post.max_detections, sum(self.level_k))
        self.register_buffer("mean", model.mean.clone(), persistent=False)
        # The division by std folded into the stem conv: conv(W, (x - m) / s) = conv(W / s,
        # x - m) exactly, as the conv's zero padding stays zero. One pass over the image
        # fewer (ONNX Runtime's int8 graph runs it channels-last, at 0.3 ms).
        self.std_folded = False
        stem = _stem_conv(self.backbone)
        if fold_bn and stem is not None:
            with torch.no_grad():
                stem.weight.div_(model.std.reshape(1, -1, 1, 1))
            self.std_folded = True
        else:
            self.register_buffer("std", model.std.clone(), persistent=False)

    def forward(
        self, x: Tensor, scale: Tensor, limits: Tensor, score_threshold: Tensor, iou_threshold: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = x.shape[0]
        x = x - self.mean
        feats = self.fpn(self.backbone(x if self.std_folded else x / self.std))
        level_scores, level_labels, level_deltas, level_anchors = [], [], [], []
        for level, (f, (cls_map, box_map)) in enumerate(zip(feats, self.head.level_maps(feats))):
            # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A*K): pair index anchor * K + class
            logits = cls_map.permute(0, 2, 3, 1).reshape(n, -1)
            scores, anchor, labels = level_candidates(logits, self.level_k[level], self.level_pad[level], self.num_classes)
            deltas = box_map.permute(0, 2, 3, 1).reshape(n, -1, 4)  # (N, A*4, H, W) -> (N, H*W*A, 4)
            level_deltas.append(torch.gather(deltas, 1, anchor[..., None].expand(-1, -1, 4)))  # (N, k_l, 4)
            level_anchors.append(self.anchor_generator.anchors_at(level, anchor, f.shape[3]))  # (N, k_l, 4)
            level_scores.append(scores)
            level_labels.append(labels)
        scores, labels = torch.cat(level_scores, 1), torch.cat(level_labels, 1)  # (N, C)
        boxes = self.box_coder.decode(torch.cat(level_deltas, 1), torch.cat(level_anchors, 1))  # (N, C, 4)

        d = self.rows
        selected = class_aware_nms(boxes, scores, labels, d, iou_threshold, score_threshold)  # (S, 3) [image, 0, box]

        # Best d survivors per image, without trusting the NMS output order: mark the
        # survivors in a dense (N, C) score map (others -1) and take its top d.
        kept = torch.full_like(scores, -1.0)
        kept = kept.index_put((selected[:, 0], selected[:, 2]), scores[selected[:, 0], selected[:, 2]])
        top_scores, top_idx = kept.topk(d, dim=1)  # (N, D), best first
        valid = top_scores >= 0  # (N, D)
        out_boxes = torch.gather(boxes, 1, top_idx[..., None].expand(-1, -1, 4)) / scale  # (N, D, 4)
        out_boxes = torch.minimum(out_boxes.clamp(min=0), limits) * valid[..., None]
        out_scores = top_scores * valid
        out_labels = torch.where(valid, torch.gather(labels, 1, top_idx), PAD_LABEL)
        return out_boxes, out_scores, out_labels, valid.sum(1)


# ----------------------------------------------------------------------------- ONNX letterbox


def letterbox_graph(size: int, opset: int = OPSET, ir_version: int | None = None, rect: bool = False) -> onnx.ModelProto:
    """images uint8 (N, H, W, 3) -> x (N, 3, S_h, S_w) float in [0, 1], scale (1,), limits (4,).

    Mirrors preprocess.letterbox: scale = size / max(H, W), resize to round(H * scale) x
    round(W * scale) (antialiased bilinear, half-pixel centres, edge weights renormalised
    as torch does), pad bottom/right with zeros: to size x size, or with ``rect`` only up
    to the next multiple of RECT_STRIDE.
    """
    f = TensorProto.FLOAT
    i64 = TensorProto.INT64

    def const(name: str, value, dtype=f) -> onnx.NodeProto:
        vals = value if isinstance(value, (list, tuple)) else [value]
        return oh.make_node("Constant", [], [name], value=oh.make_tensor(name, dtype, [len(vals)], vals))

    nodes = [
        const("c_size", float(size)),
        const("c_size_i", size, i64),
        const("c_one", 1.0),
        oh.make_node("Constant", [], ["c_inv255"], value=oh.make_tensor("c_inv255", f, [], [1 / 255])),
        oh.make_node("Constant", [], ["c_zero_u8"], value=oh.make_tensor("c_zero_u8", TensorProto.UINT8, [], [0])),
        const("c_zero_f", 0.0),
        const("c_three", 3, i64),
        const("c_i0", 0, i64),
        const("c_i1", 1, i64),
        const("c_i2", 2, i64),
        const("c_i3", 3, i64),
        oh.make_node("Shape", [INPUT_NAME], ["shape"]),  # (4,) N, H, W, 3
        oh.make_node("Slice", ["shape", "c_i0", "c_i1"], ["n"]),
        oh.make_node("Slice", ["shape", "c_i1", "c_i2"], ["h"]),
        oh.make_node("Slice", ["shape", "c_i2", "c_i3"], ["w"]),
        oh.make_node("Cast", ["h"], ["hf"], to=f),
        oh.make_node("Cast", ["w"], ["wf"], to=f),
        oh.make_node("Max", ["hf", "wf"], ["longest"]),
        oh.make_node("Div", ["c_size", "longest"], ["scale"]),
        # round(H * size / max): Round is half-to-even like Python's round().
        oh.make_node("Mul", ["hf", "c_size"], ["h_s"]),
        oh.make_node("Div", ["h_s", "longest"], ["h_r"]),
        oh.make_node("Round", ["h_r"], ["h_rr"]),
        oh.make_node("Max", ["h_rr", "c_one"], ["h_new_f"]),
        oh.make_node("Cast", ["h_new_f"], ["h_new"], to=i64),
        oh.make_node("Mul", ["wf", "c_size"], ["w_s"]),
        oh.make_node("Div", ["w_s", "longest"], ["w_r"]),
        oh.make_node("Round", ["w_r"], ["w_rr"]),
        oh.make_node("Max", ["w_rr", "c_one"], ["w_new_f"]),
        oh.make_node("Cast", ["w_new_f"], ["w_new"], to=i64),
        oh.make_node("Concat", ["n", "c_three", "h_new", "w_new"], ["sizes"], axis=0),
        # (N, H, W, 3) uint8 -> (N, 3, H, W) uint8 (a quarter of the bytes of a float
        # transpose) -> float in [0, 1] by DequantizeLinear (x * 1/255: one vectorised pass
        # for Cast and Div) -> resized
        oh.make_node("Transpose", [INPUT_NAME], ["img_u8_nchw"], perm=[0, 3, 1, 2]),
        oh.make_node("DequantizeLinear", ["img_u8_nchw", "c_inv255", "c_zero_u8"], ["img_01"]),
        oh.make_node(
            "Resize",
            ["img_01", "", "", "sizes"],
            ["resized"],
            mode="linear",
            antialias=1,
            exclude_outside=1,
            coordinate_transformation_mode="half_pixel",
        ),
        oh.make_node("Clip", ["resized", "c_zero_f", "c_one"], ["clipped"]),
    ]
    if rect:  # padded side = ceil(new / stride) * stride, never above size (a multiple of stride)
        nodes += [
            const("c_stride", RECT_STRIDE, i64),
            const("c_stride_m1", RECT_STRIDE - 1, i64),
        ]
        for side in ("h", "w"):
            nodes += [
                oh.make_node("Add", [f"{side}_new", "c_stride_m1"], [f"{side}_up"]),
                oh.make_node("Div", [f"{side}_up", "c_stride"], [f"{side}_cells"]),
                oh.make_node("Mul", [f"{side}_cells", "c_stride"], [f"{side}_out"]),
            ]
    else:
        nodes += [oh.make_node("Identity", ["c_size_i"], [f"{side}_out"]) for side in ("h", "w")]
    nodes += [
        oh.make_node("Sub", ["h_out", "h_new"], ["pad_h"]),
        oh.make_node("Sub", ["w_out", "w_new"], ["pad_w"]),
        const("c_pad_head", [0, 0, 0, 0, 0, 0], i64),
        oh.make_node("Concat", ["c_pad_head", "pad_h", "pad_w"], ["pads"], axis=0),  # begins then ends
        oh.make_node("Pad", ["clipped", "pads", "c_zero_f"], ["x"], mode="constant"),
        oh.make_node("Concat", ["wf", "hf", "wf", "hf"], ["limits"], axis=0),
    ]
    graph = oh.make_graph(
        nodes,
        "letterbox",
        [oh.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", "height", "width", 3])],
        [
            oh.make_tensor_value_info("x", f, ["batch", 3, "padded_height", "padded_width"] if rect else ["batch", 3, size, size]),
            oh.make_tensor_value_info("scale", f, [1]),
            oh.make_tensor_value_info("limits", f, [4]),
        ],
    )
    for i, node in enumerate(graph.node):
        node.name = f"{LETTERBOX_PREFIX}{i}_{node.op_type}"
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


# ----------------------------------------------------------------------------- export


def _resolve_post(model: nn.Module, cfg: ExportConfig) -> PostprocessConfig:
    post = copy.deepcopy(model.cfg.postprocess)
    for name in ("score_thresh", "nms_iou", "max_detections", "topk"):
        if getattr(cfg, name) is not None:
            setattr(post, name, getattr(cfg, name))
    if not 0 <= post.score_thresh < 1:
        raise ValueError(f"score threshold must be in [0, 1), got {post.score_thresh}")
    if not 0 < post.nms_iou <= 1:
        raise ValueError(f"NMS IoU must be in (0, 1], got {post.nms_iou}")
    if post.max_detections < 1 or post.topk < 1:
        raise ValueError(f"max_detections and topk must be positive, got {post.max_detections} and {post.topk}")
    return post


def export_onnx(model: nn.Module, path: str | Path, cfg: ExportConfig | None = None) -> Path:
    """Export ``model`` (a RetinaNet) to one ONNX file at ``path``; returns the path."""
    cfg = cfg or ExportConfig()
    path = Path(path)
    size = cfg.input_size or model.cfg.input_size
    if size < 32 or size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {size}")
    if cfg.opset < OPSET:
        raise ValueError(f"opset {cfg.opset} is too old: antialiased Resize needs opset {OPSET} or newer")
    post = _resolve_post(model, cfg)
    # A graph of size 32 has only one rectangular shape: the square.
    rect = (model.cfg.rect if cfg.rect is None else cfg.rect) and size > RECT_STRIDE
    graph = DetectionGraph(model, size, post, cfg.fold_bn, rect=rect).eval()
    example = (
        torch.rand(2, 3, size, size),
        torch.ones(1),
        torch.tensor([size, size, size, size], dtype=torch.float32),
        torch.tensor([post.score_thresh]),
        torch.tensor([post.nms_iou]),
    )
    batch = torch.export.Dim("batch", min=1, max=1024)
    x_dims: dict = {0: batch}
    if rect:
        cells = size // RECT_STRIDE
        x_dims.update({2: RECT_STRIDE * torch.export.Dim("h_cells", min=1, max=cells), 3: RECT_STRIDE * torch.export.Dim("w_cells", min=1, max=cells)})
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp, _quiet_logger("onnx_ir"):
        program = torch.onnx.export(
            graph,
            example,
            dynamo=True,
            input_names=["x", "scale", "limits", SCORE_INPUT, IOU_INPUT],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=(x_dims, None, None, None, None),
            opset_version=cfg.opset,
            custom_translation_table={
                torch.ops.retinanet.nms.default: _nms_to_onnx,
                torch.ops.retinanet.index_div.default: _index_div_to_onnx,
            },
            optimize=True,
            verbose=False,
        )
        net_path = Path(tmp) / "net.onnx"
        program.save(str(net_path), external_data=False)
        net = onnx.load(str(net_path))
    pre = letterbox_graph(size, opset=_main_opset(net), ir_version=net.ir_version, rect=rect)
    merged = onnx.compose.merge_models(pre, net, io_map=[("x", "x"), ("scale", "scale"), ("limits", "limits")])
    _dedupe_opsets(merged)
    _strip_node_metadata(merged)
    _add_threshold_defaults(merged, post)
    _name_output_dims(merged)
    metadata = {
        "format": EXPORT_FORMAT,
        "class_names": json.dumps(list(model.class_names)),
        "category_ids": json.dumps([int(c) for c in model.category_ids]),
        "input_size": str(size),
        "rect": str(rect).lower(),
        "input_format": "uint8 (N, H, W, 3) RGB",
        "score_thresh": str(post.score_thresh),
        "nms_iou": str(post.nms_iou),
        "max_detections": str(graph.rows),
        "topk": str(post.topk),
        "preset": str(model.cfg.preset),
        "precision": "fp32",
    }
    set_metadata(merged, metadata)
    merged.producer_name = "retinanet-mobilenet"
    if cfg.check:
        onnx.checker.check_model(merged, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(path))
    return path


def _main_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    """onnx.compose lists a domain once per input model; tools such as the quantizer want it once."""
    seen: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        seen[domain] = max(seen.get(domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(oh.make_opsetid(d, v) for d, v in seen.items())


def _add_threshold_defaults(model: onnx.ModelProto, post: PostprocessConfig) -> None:
    """Graph inputs with an initializer of the same name are optional: ORT uses the
    initializer unless the caller feeds the input."""
    names = {init.name for init in model.graph.initializer}
    for name, value in ((SCORE_INPUT, post.score_thresh), (IOU_INPUT, post.nms_iou)):
        if name not in names:
            model.graph.initializer.append(oh.make_tensor(name, TensorProto.FLOAT, [1], [float(value)]))


def _name_output_dims(model: onnx.ModelProto) -> None:
    """Every output's first axis is the input's batch axis."""
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims[0].dim_param = "batch"


KEPT_NODE_METADATA = ("pkg.torch.onnx.name_scopes",)  # the quantizer finds the network's nodes by it


def _strip_node_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces and FX dumps: they carry this machine's
    file paths into a model that ships elsewhere, and megabytes of text."""
    for node in model.graph.node:
        kept = [(p.key, p.value) for p in node.metadata_props if p.key in KEPT_NODE_METADATA]
        del node.metadata_props[:]
        for key, value in kept:
            prop = node.metadata_props.add()
            prop.key, prop.value = key, value


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an exported model, checking it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise RuntimeError(f"{path}: not a readable ONNX model: {e}") from e
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("format") != EXPORT_FORMAT:
        raise RuntimeError(f"{path}: not exported by `retinanet export` (metadata format is {meta.get('format')!r})")
    return meta


# ----------------------------------------------------------------------------- int8


@dataclass
class QuantizeConfig:
    """Static post-training quantization (onnxruntime.quantization, QDQ format)."""

    num_images: int = 100
    """Calibration images (an even spread over the calibration source)."""
    method: str = "minmax"
    """Activation range estimate: 'minmax', 'percentile' or 'entropy'."""
    per_channel: bool = True
    """One weight scale per output channel (needed for depthwise and BN-folded convs)."""
    op_types: tuple[str, ...] = ("Conv", "Add", "Clip", "Resize", "Concat")
    """Operators quantized inside the network; quantizing the ops between convs lets ORT
    keep tensors in int8 from one conv to the next instead of converting at every boundary."""
    fp32_predictors: bool = False
    """Keep the head's final class/box convs in fp32 (slower, may keep more accuracy)."""


WORKING_CONF = 0.3  # parity_report also counts the detections at or above this score
NETWORK_SCOPES = ("backbone", "fpn", "head")  # torch module roots of the network part
PREDICTOR_SCOPES = ("head.cls_pred", "head.box_pred")
_CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def _scopes(node: onnx.NodeProto) -> list[str]:
    """Module path of a node, from the name_scopes metadata torch.onnx's exporter writes."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [str(x) for x in json.loads(prop.value.replace("'", '"'))]
            except ValueError:
                return []
    return []


def network_nodes(model: onnx.ModelProto, op_types: Iterable[str], fp32_predictors: bool = False) -> list[str]:
    """Names of the nodes of the backbone, FPN and head with one of ``op_types``: the
    letterbox before and the box decoding / NMS after stay in fp32 (box coordinates in
    8 bits would be off by hundreds of pixels)."""
    wanted = set(op_types)
    names = []
    for node in model.graph.node:
        if node.op_type not in wanted or node.name.startswith(LETTERBOX_PREFIX):
            continue
        scopes = _scopes(node)
        # scopes[1] is "head" when the head runs as a module, "head.cls_tower" etc. when
        # DetectionGraph calls its level_maps method: the root module is what counts.
        if len(scopes) < 2 or scopes[1].split(".")[0] not in NETWORK_SCOPES:
            continue
        if fp32_predictors and any(sc.startswith(PREDICTOR_SCOPES) for sc in scopes):
            continue
        names.append(node.name)
    return names


def _spread(files: list[Path], n: int) -> list[Path]:
    if len(files) <= n:
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: str | Path | list[Path], cfg: QuantizeConfig | None = None) -> Path:
    """Static int8 quantization of an exported model: QDQ, per-channel int8 weights, uint8
    activations calibrated on images (a folder, a glob or a list of files)."""
    import numpy as np
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from tqdm import tqdm

    from .api import expand_images
    from .data.images import open_image

    cfg = cfg or QuantizeConfig()
    if cfg.method not in _CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(_CALIBRATION_METHODS)}, got {cfg.method!r}")
    if cfg.num_images < 1:
        raise ValueError(f"need at least one calibration image, got {cfg.num_images}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    files = list(calibration) if isinstance(calibration, list) else expand_images(calibration)
    files = _spread([Path(f) for f in files], cfg.num_images)
    model = onnx.load(str(fp32_path))
    nodes = network_nodes(model, cfg.op_types, cfg.fp32_predictors)
    if not nodes:
        raise RuntimeError(f"{fp32_path}: no network nodes found to quantize (not exported by this version?)")

    size = int({p.key: p.value for p in model.metadata_props}.get("input_size", 0)) or None

    class Reader(CalibrationDataReader):
        """Feeds each image letterboxed to the graph's full input square (its Resize is then
        the identity): content scaled as in real use, and every tensor of one shape, which
        the percentile and entropy calibrators need (a rectangular graph runs the same
        ranges on its smaller inputs)."""

        def __init__(self) -> None:
            self.it = iter(tqdm(files, desc="calibrating", unit="img"))

        def get_next(self):
            path = next(self.it, None)
            if path is None:
                return None
            img = torch.from_numpy(np.array(open_image(path), dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W)
            if size is not None:
                boxed, _, _ = letterbox([img], size)  # (1, 3, S, S) in [0, 1]
                img = (boxed[0] * 255).round().to(torch.uint8)
            return {INPUT_NAME: img.permute(1, 2, 0).numpy()[None]}  # (1, H, W, 3)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnxruntime.set_default_logger_severity(3)  # the calibration session warns about the threshold inputs
    with _quiet_logger(None):
        quantize_static(
            str(fp32_path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(cfg.op_types),
            nodes_to_quantize=nodes,
            calibrate_method=getattr(CalibrationMethod, _CALIBRATION_METHODS[cfg.method]),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    q = onnx.load(str(out_path))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(
        precision="int8",
        calibration=f"{len(files)} images, {cfg.method}, {'per-channel' if cfg.per_channel else 'per-tensor'}",
    )
    set_metadata(q, meta)
    onnx.save(q, str(out_path))
    return out_path


# ----------------------------------------------------------------------------- parity


def match_detections(a, b, iou_min: float = 0.9, px_tol: float = 0.5) -> tuple[float, float]:
    """Two Results of one image -> (fraction of a's detections that b has with the same
    label, at IoU >= iou_min or with every coordinate within px_tol pixels, largest
    coordinate difference among those pairs in pixels). The pixel rule covers boxes
    clipped to zero area at an image edge, whose IoU with anything is 0. Greedy, closest
    first; an empty ``a`` counts as fully matched when ``b`` is empty too."""
    from torchvision.ops import box_iou

    if len(a) == 0:
        return (1.0 if len(b) == 0 else 0.0), 0.0
    if len(b) == 0:
        return 0.0, float("inf")
    ba, bb = torch.from_numpy(a.boxes).float(), torch.from_numpy(b.boxes).float()
    diff = (ba[:, None, :] - bb[None, :, :]).abs().amax(dim=2)  # (Da, Db)
    ok = (box_iou(ba, bb) >= iou_min) | (diff <= px_tol)
    ok &= torch.from_numpy(a.labels)[:, None] == torch.from_numpy(b.labels)[None, :]
    diff = diff.masked_fill(~ok, float("inf"))
    matched, worst = 0, 0.0
    for i in range(len(a)):
        j = int(diff[i].argmin())
        if torch.isfinite(diff[i, j]):
            matched += 1
            worst = max(worst, float(diff[i, j]))
            diff[:, j] = float("inf")  # each detection of b matches once
    return matched / len(a), worst


def parity_report(model: nn.Module, onnx_path: str | Path, images: list, conf: float | None = None) -> dict[str, float]:
    """Eager PyTorch vs ONNX Runtime on the same images: the fraction of eager detections
    the ONNX model reproduces (all of them, and those scoring at least WORKING_CONF, the
    ones a user acts on) and the largest box coordinate difference among matches, in pixels."""
    from .api import Detector

    eager = Detector(model, conf=conf)
    ort_det = Detector(onnx_path, conf=conf)
    ra, rb = eager.predict(list(images)), ort_det.predict(list(images))
    matched = matched_working = count = count_working = 0
    worst = 0.0
    for a, b in zip(ra, rb):
        f, w = match_detections(a, b)
        matched += f * len(a)
        count += len(a)
        worst = max(worst, w) if len(a) else worst
        strong = a.scores >= WORKING_CONF
        if strong.any():
            sub = type(a)(a.boxes[strong], a.scores[strong], a.labels[strong], [], a.image_size)
            fs, _ = match_detections(sub, b)
            matched_working += fs * int(strong.sum())
            count_working += int(strong.sum())
    return {
        "images": len(ra),
        "detections": count,
        "matched": matched / count if count else 1.0,
        "detections_working": count_working,
        "matched_working": matched_working / count_working if count_working else 1.0,
        "max_box_diff": worst,
    }


# ----------------------------------------------------------------------------- CLI


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="checkpoint (.pt) to export")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (onnx)")
    p.add_argument("--output", "-o", help="output file (default: the checkpoint's path with .onnx)")
    p.add_argument("--size", type=int, default=None, help="input size the graph letterboxes to (default: the model's)")
    p.add_argument("--conf", type=float, default=None, help="default score threshold (an input of the graph)")
    p.add_argument("--iou", type=float, default=None, help="default NMS IoU threshold (an input of the graph)")
    p.add_argument("--max-det", type=int, default=None, help="detections per image (fixed output rows)")
    p.add_argument("--topk", type=int, default=None, help="candidates per pyramid level before NMS")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument(
        "--square",
        action="store_true",
        help="letterbox to the full size x size square (one fixed input shape) instead of padding to a multiple of 32",
    )
    shape.add_argument(
        "--rect", action="store_true", help="pad only to a multiple of 32 even if the checkpoint's model.rect is false"
    )
    p.add_argument("--no-fold-bn", action="store_true", help="keep every batch norm (and the input scaling) as separate ops")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--int8", action="store_true", help="also write a static int8 model (<output stem>.int8.onnx)")
    p.add_argument("--calibration", help="images for int8 calibration: folder or glob (required with --int8)")
    p.add_argument("--calibration-images", type=int, default=QuantizeConfig.num_images, help="calibration images used (default 100)")
    p.add_argument("--calibration-method", default=QuantizeConfig.method, choices=list(_CALIBRATION_METHODS))
    p.add_argument("--fp32-predictors", action="store_true", help="int8: keep the final class/box convs in fp32")
    p.add_argument("--verify", help="images (folder or glob) to compare eager PyTorch and ONNX Runtime detections on")


def run(args) -> int:
    from .checkpoint import model_from_checkpoint

    ckpt = Path(args.checkpoint)
    if args.int8 and not args.calibration:
        raise ValueError("--int8 needs --calibration IMAGES (a folder or glob of representative images)")
    model = model_from_checkpoint(ckpt)
    out = Path(args.output) if args.output else ckpt.with_suffix(".onnx")
    cfg = ExportConfig(
        input_size=args.size,
        score_thresh=args.conf,
        nms_iou=args.iou,
        max_detections=args.max_det,
        topk=args.topk,
        fold_bn=not args.no_fold_bn,
        opset=args.opset,
        rect=False if args.square else True if args.rect else None,
    )
    export_onnx(model, out, cfg)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, fp32)")
    outputs = [out]
    if args.int8:
        q_out = out.with_name(out.stem + ".int8.onnx")
        qcfg = QuantizeConfig(
            num_images=args.calibration_images, method=args.calibration_method, fp32_predictors=args.fp32_predictors
        )
        quantize_int8(out, q_out, args.calibration, qcfg)
        print(f"wrote {q_out} ({q_out.stat().st_size / 1e6:.1f} MB, int8)")
        outputs.append(q_out)
    if args.verify:
        from .api import expand_images

        images = expand_images(args.verify)[:16]
        for path in outputs:
            r = parity_report(model, path, images)
            print(
                f"{path.name}: eager vs onnxruntime on {r['images']} images: {r['matched']:.1%} of "
                f"{r['detections']} detections matched, {r['matched_working']:.1%} of the "
                f"{r['detections_working']} scoring >= {WORKING_CONF}; max box difference {r['max_box_diff']:.3f} px"
            )
    return 0


__all__: Iterable[str] = [
    "PAD_LABEL",
    "DetectionGraph",
    "ExportConfig",
    "QuantizeConfig",
    "export_onnx",
    "letterbox_graph",
    "match_detections",
    "parity_report",
    "quantize_int8",
    "read_metadata",
]
