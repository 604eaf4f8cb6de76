"""ONNX export: one graph from a decoded uint8 image to final detections, NMS inside.

    images uint8 (N, H, W, 3) RGB, any H and W (all images of one batch share them)
      -> letterbox        letterbox.py  hand-built ONNX: antialiased Resize, pad to a
                                        multiple of 32 (or to the full square)
      -> DetectionGraph   graph.py      network, per-level top-k, decoding, class-aware NMS
                          ops.py        the custom NMS / index ops and their ONNX translations
    outputs: boxes (N, D, 4), scores (N, D), labels (N, D) (PAD_LABEL past the count),
             num_detections (N,)

    writer.py    export_onnx: torch.onnx export, the letterbox joined in front, post-passes
    metadata.py  the contract an exported file carries (names, format, metadata_props);
                 the only module api.Detector reads
    quantize.py  quantize_int8: static int8 of the network part (QDQ)
    openvino.py  export_openvino: an exported .onnx (fp32 or int8) -> OpenVINO IR, from the
                 letterbox's output on (the runtime letterboxes as eager PyTorch does)
    parity.py    eager PyTorch vs ONNX Runtime detections

The options live in config/export.py (ExportConfig, QuantizeConfig).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> the module of this package that defines it. Imported on first use, so
# reading an exported model's metadata (api.Detector) never loads torch.onnx, the graph
# or ONNX Runtime's quantizer.
_PUBLIC = {
    "OPSET": "..config.export", "ExportConfig": "..config.export", "QuantizeConfig": "..config.export",
    "PAD_LABEL": "..data.labels",
    "DetectionGraph": ".graph", "class_aware_nms": ".graph", "level_candidates": ".graph", "best_anchor_candidates": ".graph",
    "letterbox_graph": ".letterbox",
    "EXPORT_FORMAT": ".metadata", "INPUT_NAME": ".metadata", "IOU_INPUT": ".metadata", "OUTPUT_NAMES": ".metadata",
    "SCORE_INPUT": ".metadata", "read_metadata": ".metadata", "set_metadata": ".metadata",
    "onnx_nms": ".ops",
    "WORKING_CONF": ".parity", "match_detections": ".parity", "parity_report": ".parity",
    "network_nodes": ".quantize", "quantize_int8": ".quantize", "dequantize_late": ".quantize",
    "export_onnx": ".writer",
    "export_openvino": ".openvino",
}  # fmt: skip
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
