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
    parity.py    eager PyTorch vs ONNX Runtime detections

The options live in config/export.py (ExportConfig, QuantizeConfig).
"""

from ..config.export import OPSET, ExportConfig, QuantizeConfig
from .graph import PAD_LABEL, DetectionGraph, class_aware_nms, level_candidates
from .letterbox import letterbox_graph
from .metadata import EXPORT_FORMAT, INPUT_NAME, IOU_INPUT, OUTPUT_NAMES, SCORE_INPUT, read_metadata, set_metadata
from .ops import onnx_nms
from .parity import WORKING_CONF, match_detections, parity_report
from .quantize import network_nodes, quantize_int8
from .writer import export_onnx

__all__ = [
    "EXPORT_FORMAT", "INPUT_NAME", "IOU_INPUT", "OPSET", "OUTPUT_NAMES", "PAD_LABEL", "SCORE_INPUT", "WORKING_CONF",
    "DetectionGraph", "ExportConfig", "QuantizeConfig",
    "class_aware_nms", "export_onnx", "letterbox_graph", "level_candidates", "match_detections", "network_nodes",
    "onnx_nms", "parity_report", "quantize_int8", "read_metadata", "set_metadata",
]  # fmt: skip
