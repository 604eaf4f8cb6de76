"""export_openvino: an exported ONNX model (fp32, or the int8 one of quantize_int8) ->
OpenVINO IR (``.xml`` + ``.bin``), for OpenVINO's CPU, GPU and NPU plugins.

    x float (N, 3, H, W) in [0, 1], letterboxed by the caller; scale (1,); limits (4,);
    score_threshold (1,); iou_threshold (1,)
      -> the ONNX graph's network, decoding and class-aware NMS
      -> boxes (N, D, 4), scores (N, D), labels (N, D), num_detections (N,)

The IR starts after the letterbox. OpenVINO runs the ONNX letterbox's antialiased Resize
with other weights than torch and ONNX Runtime (up to 59 grey levels apart at edges, 2 on
average, on a coco128 photo), and the scores move with it; so the runtime side
(backends.OpenVinoBackend) letterboxes with preprocess.letterbox, as eager PyTorch does,
and feeds x. The thresholds are plain inputs (IR has no optional inputs); their defaults
are in the metadata.

The metadata travels in the IR's rt_info, section OPENVINO_SECTION: every key of the ONNX
model's metadata_props, with ``format`` set to OPENVINO_FORMAT.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx.utils import Extractor

from .metadata import (
    IOU_INPUT,
    OPENVINO_FORMAT,
    OPENVINO_INPUTS,
    OPENVINO_SECTION,
    OUTPUT_NAMES,
    SCORE_INPUT,
    read_metadata,
)

OPENVINO_INPUT_FORMAT = "float (N, 3, H, W) in [0, 1], letterboxed (resized to input_size, padded bottom/right)"


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert a `retinanet export` ONNX file to OpenVINO IR at ``xml_path`` (its weights
    in the .bin beside it); returns the .xml path."""
    import openvino as ov

    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if xml_path.suffix.lower() != ".xml":
        raise ValueError(f"{xml_path}: an OpenVINO model is written as a .xml file (with its .bin beside it)")
    meta = read_metadata(onnx_path)  # one of ours, or a one-line error
    if meta.get("precision", "fp32") != "fp32":
        # Measured: OpenVINO 2026.4 runs quantize_int8's QDQ graph (even with only the
        # convs quantized) to scores near 0 where ONNX Runtime gives the fp32 model's.
        raise ValueError(f"{onnx_path}: only fp32 exports convert to OpenVINO (this one is {meta['precision']})")
    net = _without_letterbox(onnx.load(str(onnx_path)))
    with tempfile.TemporaryDirectory() as tmp:
        net_path = Path(tmp) / "net.onnx"
        onnx.save(net, str(net_path))
        # Core.read_model (the runtime's ONNX reader), not openvino.convert_model: the same
        # graph, without the conversion tool's usage reporting.
        model = ov.Core().read_model(str(net_path))
    for key, value in {**meta, "format": OPENVINO_FORMAT, "input_format": OPENVINO_INPUT_FORMAT}.items():
        model.set_rt_info(value, [OPENVINO_SECTION, key])
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # fp16 weights would move the boxes
    return xml_path


def _without_letterbox(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph from the letterbox's outputs (and the thresholds) to the detections."""
    net = Extractor(model).extract_model(list(OPENVINO_INPUTS), list(OUTPUT_NAMES))
    # The thresholds' default initializers would make OpenVINO fold them into constants.
    kept = [init for init in net.graph.initializer if init.name not in (SCORE_INPUT, IOU_INPUT)]
    del net.graph.initializer[:]
    net.graph.initializer.extend(kept)
    del net.metadata_props[:]  # they travel in rt_info, under our own section
    return net
