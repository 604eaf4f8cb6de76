"""export_onnx: a RetinaNet -> one ONNX file, from a decoded uint8 image to final
detections, NMS inside.

    images uint8 (N, H, W, 3) RGB -> letterbox (letterbox.py, hand-built ONNX)
      -> DetectionGraph (graph.py, exported by torch.onnx) -> boxes, scores, labels, num_detections

``score_threshold`` and ``iou_threshold`` are optional inputs (shape (1,), defaulting to
the model's values), so a runtime can change them without re-exporting. The class names,
category ids, input size, thresholds and NMS mode (``agnostic``) travel in the model's
metadata_props (metadata.py), with the confidence threshold training chose (best.pt's
conf_threshold) when there is one.

Exporter choice: torch.onnx's dynamo exporter (torch.export + onnxscript), the default in
torch 2.14; the custom ops' translations are in ops.py.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import onnx
import torch
from onnx import TensorProto
from onnx import helper as oh
from torch import nn

from ..config import PostprocessConfig
from ..config.export import OPSET, ExportConfig
from ..preprocess import RECT_STRIDE
from .graph import DetectionGraph
from .letterbox import letterbox_graph
from .metadata import AGNOSTIC_KEY, CONF_THRESHOLD_KEY, EXPORT_FORMAT, IOU_INPUT, NAME_SCOPES_KEY, OUTPUT_NAMES, SCORE_INPUT, set_metadata
from .ops import onnx_translations
from .quiet import quiet_logger

KEPT_NODE_METADATA = (NAME_SCOPES_KEY,)  # the quantizer finds the network's nodes by it


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
    net = _export_network(graph, size, post, rect, cfg.opset)
    pre = letterbox_graph(size, opset=_main_opset(net), ir_version=net.ir_version, rect=rect)
    merged = onnx.compose.merge_models(pre, net, io_map=[("x", "x"), ("scale", "scale"), ("limits", "limits")])
    _dedupe_opsets(merged)
    _strip_node_metadata(merged)
    _add_threshold_defaults(merged, post)
    _name_output_dims(merged)
    set_metadata(merged, export_metadata(model, size, rect, post, graph.rows))
    merged.producer_name = "retinanet-mobilenet"
    if cfg.check:
        onnx.checker.check_model(merged, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(path))
    return path


def _resolve_post(model: nn.Module, cfg: ExportConfig) -> PostprocessConfig:
    """The model's post-processing with the export's overrides, checked."""
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


def _export_network(graph: DetectionGraph, size: int, post: PostprocessConfig, rect: bool, opset: int) -> onnx.ModelProto:
    """torch.onnx (dynamo) export of the DetectionGraph: batch dynamic, and with ``rect``
    height and width too (as RECT_STRIDE times a symbolic cell count, up to the square)."""
    example = (
        torch.rand(2, 3, size, size),  # x (N, 3, H, W)
        torch.ones(1),  # scale
        torch.tensor([size, size, size, size], dtype=torch.float32),  # limits
        torch.tensor([post.score_thresh]),
        torch.tensor([post.nms_iou]),
    )
    x_dims: dict = {0: torch.export.Dim("batch", min=1, max=1024)}
    if rect:
        cells = size // RECT_STRIDE
        x_dims.update({2: RECT_STRIDE * torch.export.Dim("h_cells", min=1, max=cells), 3: RECT_STRIDE * torch.export.Dim("w_cells", min=1, max=cells)})
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp, quiet_logger("onnx_ir"):
        program = torch.onnx.export(
            graph,
            example,
            dynamo=True,
            input_names=["x", "scale", "limits", SCORE_INPUT, IOU_INPUT],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=(x_dims, None, None, None, None),
            opset_version=opset,
            custom_translation_table=onnx_translations(),
            optimize=True,
            verbose=False,
        )
        net_path = Path(tmp) / "net.onnx"
        program.save(str(net_path), external_data=False)
        return onnx.load(str(net_path))


def export_metadata(model: nn.Module, size: int, rect: bool, post: PostprocessConfig, rows: int) -> dict[str, str]:
    """The metadata_props of an fp32 export (quantize_int8 adds precision and calibration);
    ``conf_threshold`` when the model came from a checkpoint that chose one (best.pt)."""
    threshold = getattr(model, "conf_threshold", None)
    extra = {CONF_THRESHOLD_KEY: str(float(threshold))} if threshold is not None else {}
    return {
        "format": EXPORT_FORMAT,
        "class_names": json.dumps(list(model.class_names)),
        "category_ids": json.dumps([int(c) for c in model.category_ids]),
        "input_size": str(size),
        "rect": str(rect).lower(),
        "input_format": "uint8 (N, H, W, 3) RGB",
        "score_thresh": str(post.score_thresh),
        "nms_iou": str(post.nms_iou),
        "max_detections": str(rows),
        "topk": str(post.topk),
        # The graph's NMS is per class; a runtime runs class-agnostic NMS after it when this is
        # true (api.Detector's default, from the model's postprocess.agnostic).
        AGNOSTIC_KEY: str(bool(post.agnostic)).lower(),
        "preset": str(model.cfg.preset),
        # The anchors the graph was built with (fitted to the training data when coverage.py
        # fitted them): per-level sizes, scales and ratios, as in model.anchors.
        "anchors": json.dumps({k: list(getattr(model.cfg.anchors, k)) for k in ("sizes", "scales", "ratios")}),
        "precision": "fp32",
        **extra,
    }


# ----------------------------------------------------------------------------- ModelProto post-passes


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


def _strip_node_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces and FX dumps: they carry this machine's
    file paths into a model that ships elsewhere, and megabytes of text."""
    for node in model.graph.node:
        kept = [(p.key, p.value) for p in node.metadata_props if p.key in KEPT_NODE_METADATA]
        del node.metadata_props[:]
        for key, value in kept:
            prop = node.metadata_props.add()
            prop.key, prop.value = key, value
