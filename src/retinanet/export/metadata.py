"""The contract every exported model carries, and the one thing the runtime side
(backends.py) reads: tensor names, the format stamp and the metadata (an ONNX model's
metadata_props, an OpenVINO IR's rt_info section OPENVINO_SECTION, a LiteRT flatbuffer's
metadata entry LITERT_SECTION).

Kept free of torch and of the rest of the package, so that reading a model never
imports the exporter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import onnx

EXPORT_FORMAT = "retinanet-mobilenet-onnx/1"

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
SCORE_INPUT = "score_threshold"
IOU_INPUT = "iou_threshold"

OPENVINO_FORMAT = "retinanet-mobilenet-openvino/1"
OPENVINO_SECTION = "retinanet"  # the IR's rt_info section that holds the metadata
# The IR starts after the letterbox (export/openvino.py): the letterboxed image, its scale
# and the original [W, H, W, H] the boxes are clipped to, then the thresholds.
OPENVINO_INPUTS = ("x", "scale", "limits", SCORE_INPUT, IOU_INPUT)

LITERT_FORMAT = "retinanet-mobilenet-litert/1"
LITERT_SECTION = "retinanet"  # the flatbuffer metadata entry that holds the metadata, as JSON
LITERT_IDENTIFIER = b"TFL3"  # a TFLite / LiteRT flatbuffer's file identifier (bytes 4-8)
RAW_KEYS: dict[str, Callable[[str], Any]] = {"level_counts": json.loads, "box_coder": json.loads, "topk": int}

LETTERBOX_PREFIX = "letterbox/"  # name prefix of the letterbox's nodes (left in fp32 by quantize_int8)
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # node metadata: the torch module path of a node

# What the runtime side reads from metadata_props, and how each value must parse.
REQUIRED_KEYS: dict[str, Callable[[str], Any]] = {
    "class_names": json.loads,
    "category_ids": json.loads,
    "input_size": int,
    "score_thresh": float,
    "nms_iou": float,
    "max_detections": int,
}


def parse_bool(text: str) -> bool:
    """'true' / 'false', as the exporter writes them; ValueError otherwise."""
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text == "true"


# Optional keys: checked when present (exports of checkpoints without the value, or older exports, lack them).
CONF_THRESHOLD_KEY = "conf_threshold"  # the score with the best F1 on the validation split (training chose it)
AGNOSTIC_KEY = "agnostic"  # the model's postprocess.agnostic: the runtime's default NMS mode (absent: per class)
OPTIONAL_KEYS: dict[str, Callable[[str], Any]] = {CONF_THRESHOLD_KEY: float, AGNOSTIC_KEY: parse_bool}


def metadata_of(model: onnx.ModelProto) -> dict[str, str]:
    """A model's metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Write ``values`` into the model's metadata_props, replacing keys that exist."""
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
    meta = metadata_of(model)
    if meta.get("format") != EXPORT_FORMAT:
        raise RuntimeError(f"{path}: not exported by `retinanet export` (metadata format is {meta.get('format')!r})")
    _check_metadata(path, meta)
    _check_signature(path, model.graph)
    return meta


def _check_metadata(path: Path, meta: dict[str, str]) -> None:
    """Every key the runtime reads is there and parses; else one line naming what is wrong."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise RuntimeError(f"{path}: metadata lacks {', '.join(missing)}; export the model again with `retinanet export`")
    for key, parse in [*REQUIRED_KEYS.items(), *((k, p) for k, p in OPTIONAL_KEYS.items() if k in meta)]:
        try:
            parse(meta[key])
        except ValueError:
            raise RuntimeError(f"{path}: metadata {key}={meta[key]!r} does not parse; export the model again") from None
    names, ids = json.loads(meta["class_names"]), json.loads(meta["category_ids"])
    if not (isinstance(names, list) and isinstance(ids, list) and len(names) == len(ids)):
        raise RuntimeError(f"{path}: metadata class_names and category_ids are not two lists of the same length")


def _check_signature(path: Path, graph: onnx.GraphProto) -> None:
    """The graph takes and gives the tensors the runtime feeds and reads (a foreign graph
    stamped as ours would otherwise fail inside ONNX Runtime at the first image)."""
    inputs = {i.name for i in graph.input}  # the thresholds are inputs with a default initializer
    outputs = {o.name for o in graph.output}
    lacks = [f"input {n!r}" for n in (INPUT_NAME, SCORE_INPUT, IOU_INPUT) if n not in inputs]
    lacks += [f"output {n!r}" for n in OUTPUT_NAMES if n not in outputs]
    if lacks:
        raise RuntimeError(f"{path}: the graph lacks {', '.join(lacks)}: not a `retinanet export` model")


def read_openvino_metadata(path: str | Path, model: Any) -> dict[str, str]:
    """The metadata of an OpenVINO IR read by openvino.Core.read_model (``model``),
    checking it is one of ours and takes and gives the tensors the runtime uses."""
    path = Path(path)
    info = model.get_rt_info()
    section = info[OPENVINO_SECTION] if OPENVINO_SECTION in info.keys() else {}
    meta = {key: model.get_rt_info([OPENVINO_SECTION, key]).astype(str) for key in section}
    if meta.get("format") != OPENVINO_FORMAT:
        raise RuntimeError(f"{path}: not exported by `retinanet export --format openvino` (format is {meta.get('format')!r})")
    _check_metadata(path, meta)
    inputs = {name for port in model.inputs for name in port.get_names()}
    outputs = {name for port in model.outputs for name in port.get_names()}
    lacks = [f"input {n!r}" for n in OPENVINO_INPUTS if n not in inputs]
    lacks += [f"output {n!r}" for n in OUTPUT_NAMES if n not in outputs]
    if lacks:
        raise RuntimeError(f"{path}: the model lacks {', '.join(lacks)}: not a `retinanet export --format openvino` model")
    return meta


def read_litert_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a LiteRT (.tflite) export: the JSON in its flatbuffer metadata entry
    LITERT_SECTION, checked like an ONNX model's, with what the network-only decode needs."""
    path = Path(path)
    data = path.read_bytes()
    if data[4:8] != LITERT_IDENTIFIER:
        raise RuntimeError(f"{path}: not a LiteRT / TFLite flatbuffer (no {LITERT_IDENTIFIER.decode()} identifier)")
    from ai_edge_litert import schema_py_generated as schema

    try:  # a damaged or crafted file: flatbuffers raises on offsets outside the data
        model = schema.Model.GetRootAs(data, 0)
        entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
        index = entries.get(LITERT_SECTION.encode())
        raw = None if index is None else model.Buffers(index).DataAsNumpy()
        meta = json.loads(bytes(raw).decode()) if raw is not None and not isinstance(raw, int) else {}
    except Exception as e:
        raise RuntimeError(f"{path}: unreadable LiteRT metadata ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != LITERT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise RuntimeError(f"{path}: not exported by `retinanet export --format litert` (format is {found!r})")
    meta = {str(k): str(v) for k, v in meta.items()}
    _check_metadata(path, meta)
    for key, parse in RAW_KEYS.items():
        try:
            parse(meta[key])
        except (KeyError, ValueError):
            raise RuntimeError(f"{path}: metadata {key} is missing or does not parse; export the model again") from None
    return meta
