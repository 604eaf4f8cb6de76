"""The contract every exported model carries, and the one thing the runtime side
(api.Detector) reads: tensor names, the format stamp and the metadata_props.

Kept free of torch and of the rest of the package, so that reading a model never
imports the exporter.
"""

from __future__ import annotations

from pathlib import Path

import onnx

EXPORT_FORMAT = "retinanet-mobilenet-onnx/1"

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
SCORE_INPUT = "score_threshold"
IOU_INPUT = "iou_threshold"

LETTERBOX_PREFIX = "letterbox/"  # name prefix of the letterbox's nodes (left in fp32 by quantize_int8)
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # node metadata: the torch module path of a node


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
    return meta
