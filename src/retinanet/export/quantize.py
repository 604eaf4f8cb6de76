"""Static int8 quantization of an exported model (onnxruntime.quantization, QDQ format).

Only the network (backbone, FPN, head) is quantized: the letterbox before it and the
box decoding / NMS after it stay in fp32 (box coordinates in 8 bits would be off by
hundreds of pixels). The network's nodes are found by the torch module path the
exporter writes into each node's metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from tqdm import tqdm

from ..config.export import CALIBRATION_METHODS, QuantizeConfig
from ..data.images import read_image, to_uint8
from ..preprocess import letterbox
from .metadata import INPUT_NAME, LETTERBOX_PREFIX, NAME_SCOPES_KEY, metadata_of, set_metadata
from .quiet import quiet_logger

NETWORK_SCOPES = ("backbone", "fpn", "head")  # torch module roots of the network part
PREDICTOR_SCOPES = ("head.cls_pred", "head.box_pred")
# Ops that only move or select values. A per-tensor DequantizeLinear (scale > 0, so
# monotonic) gives the same result before or after them, so after the network they run on
# the uint8 tensor and only what they keep is dequantized.
SELECTING_OPS = ("Transpose", "Reshape", "GatherElements", "ReduceMax")


def _scopes(node: onnx.NodeProto) -> list[str]:
    """Module path of a node, from the name_scopes metadata torch.onnx's exporter writes."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
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
    """At most ``n`` of ``files``, evenly spaced."""
    if len(files) <= n:
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


class _CalibrationReader(CalibrationDataReader):
    """Feeds each image letterboxed to the graph's full input square (its Resize is then
    the identity): content scaled as in real use, and every tensor of one shape, which
    the percentile and entropy calibrators need (a rectangular graph runs the same
    ranges on its smaller inputs). ``size`` None feeds the images as they are."""

    def __init__(self, files: list[Path], size: int | None) -> None:
        self.it = iter(tqdm(files, desc="calibrating", unit="img"))
        self.size = size

    def get_next(self):
        path = next(self.it, None)
        if path is None:
            return None
        img = read_image(path)  # (3, H, W) uint8
        if self.size is not None:
            boxed, _, _ = letterbox([img], self.size)  # (1, 3, S, S) in [0, 1]
            img = to_uint8(boxed[0])
        return {INPUT_NAME: img.permute(1, 2, 0).numpy()[None]}  # (3, H, W) -> (1, H, W, 3)


def _calibration_files(calibration: str | Path | list[Path], n: int) -> list[Path]:
    """A folder, a glob or a list of files -> at most ``n`` image paths, evenly spread."""
    from ..sources import expand_images

    files = list(calibration) if isinstance(calibration, list) else expand_images(calibration)
    return _spread([Path(f) for f in files], n)


def _check(cfg: QuantizeConfig) -> None:
    if cfg.method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {cfg.method!r}")
    if cfg.num_images < 1:
        raise ValueError(f"need at least one calibration image, got {cfg.num_images}")


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: str | Path | list[Path], cfg: QuantizeConfig | None = None) -> Path:
    """Static int8 quantization of an exported model: QDQ, per-channel int8 weights, uint8
    activations calibrated on images (a folder, a glob or a list of files)."""
    cfg = cfg or QuantizeConfig()
    _check(cfg)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    files = _calibration_files(calibration, cfg.num_images)
    model = onnx.load(str(fp32_path))
    nodes = network_nodes(model, cfg.op_types, cfg.fp32_predictors)
    if not nodes:
        raise RuntimeError(f"{fp32_path}: no network nodes found to quantize (not exported by this version?)")
    meta = metadata_of(model)
    size = int(meta.get("input_size", 0)) or None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnxruntime.set_default_logger_severity(3)  # the calibration session warns about the threshold inputs
    with quiet_logger(None):
        quantize_static(
            str(fp32_path),
            str(out_path),
            _CalibrationReader(files, size),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(cfg.op_types),
            nodes_to_quantize=nodes,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[cfg.method]),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    q = dequantize_late(onnx.load(str(out_path)))
    meta.update(
        precision="int8",
        calibration=f"{len(files)} images, {cfg.method}, {'per-channel' if cfg.per_channel else 'per-tensor'}",
    )
    set_metadata(q, meta)
    onnx.save(q, str(out_path))
    return out_path


def dequantize_late(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move each per-tensor DequantizeLinear after the network past the SELECTING_OPS that
    read it (in place; the outputs stay bit for bit the same). P3's class map, for one:
    its max over the classes and the gather of the best anchors' rows run on uint8, and 7,200
    maxima and 80,000 scores are dequantized instead of 921,600 scores twice (ONNX Runtime
    gives each reader of a DequantizeLinear its own copy)."""
    graph = model.graph
    sizes = {init.name: math.prod(init.dims) for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    network = set(network_nodes(model, SELECTING_OPS))
    pending = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    while pending:
        dq = pending.pop()
        readers = [n for n in graph.node if dq.output[0] in n.input]
        if (
            not readers
            or dq.output[0] in outputs
            or any(sizes.get(name, 0) != 1 for name in dq.input[1:])  # per-axis or not a constant
            or any(n.op_type not in SELECTING_OPS or n.name in network for n in readers)
            or any(n.input[0] != dq.output[0] or dq.output[0] in n.input[1:] for n in readers)  # as data only, not an index
        ):
            continue
        for reader in readers:
            out = reader.output[0]
            reader.input[0], reader.output[0] = dq.input[0], f"{out}_u8"
            late = onnx.helper.make_node("DequantizeLinear", [f"{out}_u8", *dq.input[1:]], [out], name=f"{out}_dequantized")
            graph.node.insert(list(graph.node).index(reader) + 1, late)
            pending.append(late)
        graph.node.remove(dq)
    return model
