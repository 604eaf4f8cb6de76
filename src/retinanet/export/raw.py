"""export_raw: the network alone, for runtimes that cannot run the full graph's letterbox,
top-k and NMS (TensorRT, OpenCV's DNN module, NCNN, RKNN):

    x float (N, 3, S, S) RGB in [0, 1], letterboxed to the input square (resized so the
      longer side is S, padded bottom/right with 0)
      -> backbone, FPN, head (every batch norm folded into its conv)
    outputs: cls_logits (N, M, K)  class logits of every anchor (sigmoid gives the score)
             box_deltas (N, M, 4)  offsets (dx, dy, dw, dh) from each anchor
             anchors (M, 4)        the anchors, xyxy in input pixels (a constant)

One fixed input size, so the anchors are one constant output and the file carries
everything. postprocess.postprocess_raw turns the three outputs into detections with the
eager model's own decoding and NMS; the levels' anchor counts, the box coder and the
post-processing defaults are in the metadata_props beside the class names.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from ..config.export import OPSET
from .metadata import set_metadata
from .quiet import quiet_logger
from .writer import export_metadata

RAW_FORMAT = "retinanet-mobilenet-raw/1"
RAW_INPUT = "x"
RAW_OUTPUTS = ("cls_logits", "box_deltas", "anchors")


class RawGraph(nn.Module):
    """x (N, 3, S, S) in [0, 1] -> cls_logits (N, M, K), box_deltas (N, M, 4), anchors (M, 4)."""

    def __init__(self, model: nn.Module, input_size: int):
        super().__init__()
        model = copy.deepcopy(model).eval().cpu().fuse(channels_last=False)
        self.backbone, self.fpn, self.head = model.backbone, model.fpn, model.head
        self.register_buffer("mean", model.mean.clone(), persistent=False)
        self.register_buffer("std", model.std.clone(), persistent=False)
        anchors, counts = model.anchors((input_size, input_size))
        self.register_buffer("anchors", anchors.clone(), persistent=False)
        self.level_counts = list(counts)
        self.input_size = input_size

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cls_logits, box_deltas = self.head(self.fpn(self.backbone((x - self.mean) / self.std)))
        return cls_logits, box_deltas, self.anchors


def raw_metadata(model: nn.Module, graph: RawGraph, fmt: str, batch: str = "N") -> dict[str, str]:
    """What a network-only export carries: the class names, thresholds and sizes of every
    export, and what postprocess.postprocess_raw needs (level_counts, box_coder)."""
    size = graph.input_size
    meta = export_metadata(model, size, rect=False, post=model.cfg.postprocess, rows=model.cfg.postprocess.max_detections)
    coder = model.box_coder
    meta.update(
        format=fmt,
        input_format=f"float ({batch}, 3, {size}, {size}) RGB in [0, 1], letterboxed (resized, padded bottom/right with 0)",
        level_counts=json.dumps(graph.level_counts),
        box_coder=json.dumps({"weights": list(coder.weights), "clamp": float(coder.clamp)}),
    )
    return meta


def export_raw(model: nn.Module, path: str | Path, input_size: int | None = None, opset: int = OPSET) -> Path:
    """The network of ``model`` (a RetinaNet) alone, at one input size, as ONNX at ``path``."""
    path = Path(path)
    size = input_size or model.cfg.input_size
    if size < 32 or size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {size}")
    graph = RawGraph(model, size).eval()
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp, quiet_logger("onnx_ir"):
        program = torch.onnx.export(
            graph,
            (torch.rand(2, 3, size, size),),  # batch 2: a size-1 example would fix the batch at 1
            dynamo=True,
            input_names=[RAW_INPUT],
            output_names=list(RAW_OUTPUTS),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
        tmp_path = Path(tmp) / "raw.onnx"
        program.save(str(tmp_path), external_data=False)
        net = onnx.load(str(tmp_path))
    for node in net.graph.node:  # the exporter's stack traces would carry this machine's paths
        del node.metadata_props[:]
    set_metadata(net, raw_metadata(model, graph, RAW_FORMAT))
    net.producer_name = "retinanet-mobilenet"
    onnx.checker.check_model(net, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(net, str(path))
    return path
