"""export_litert: the network alone as a LiteRT (TFLite) flatbuffer, for phones and
microcontroller-class boards (LiteRT, formerly TensorFlow Lite):

    x float (1, 3, S, S) RGB in [0, 1], letterboxed to the input square
      -> backbone, FPN, head (export/raw.py's RawGraph, batch norms folded)
    outputs: cls_logits (1, M, K), box_deltas (1, M, 4), anchors (M, 4)

litert-torch converts the torch module directly (no ONNX on the way), in a child process
(_convert_in_child); it takes one fixed shape, so the graph runs one image at a time. The letterbox before and the decoding and
NMS after stay outside the graph, in preprocess.letterbox and postprocess.postprocess_raw
(backends.LiteRtBackend), as for the raw ONNX export. The metadata of every export (class
names, input size, thresholds) and the decode's level_counts and box_coder travel in the
flatbuffer's own metadata list, as JSON under the name metadata.LITERT_SECTION.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_atomic
from .metadata import LITERT_FORMAT, LITERT_IDENTIFIER, LITERT_SECTION
from .raw import RawGraph, raw_metadata

INSTALL_HINT = "LiteRT export needs litert-torch: pip install 'retinanet-mobilenet[litert]'"


def export_litert(model: nn.Module, path: str | Path, input_size: int | None = None) -> Path:
    """The network of ``model`` (a RetinaNet) at one input size, as a .tflite at ``path``."""
    path = Path(path)
    size = input_size or model.cfg.input_size
    if size < 32 or size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {size}")
    if importlib.util.find_spec("litert_torch") is None:
        raise RuntimeError(INSTALL_HINT)
    graph = RawGraph(model, size).eval()
    flat = _convert_in_child(graph, size)
    flat = with_metadata(flat, raw_metadata(model, graph, LITERT_FORMAT, batch="1"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, flat)
    return path


# litert-torch converts through JAX, whose threads make any later os.fork of the process
# unsafe (JAX itself warns of a likely deadlock; DataLoader workers fork): the conversion
# runs in a child process of its own.
_CHILD = """
import sys, torch, litert_torch
litert_torch.config.show_progress = False
graph = torch.load(sys.argv[1], weights_only=False)  # the parent's own temporary file
size = int(sys.argv[3])
with torch.no_grad():
    flat = litert_torch.convert(graph, (torch.rand(1, 3, size, size),)).model_content()
open(sys.argv[2], "wb").write(flat)
"""


def _convert_in_child(graph: nn.Module, size: int) -> bytes:
    """The flatbuffer of ``graph`` at a (1, 3, size, size) input, converted by litert-torch in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        module, out = Path(tmp) / "graph.pt", Path(tmp) / "graph.tflite"
        torch.save(graph, module)
        child = subprocess.run([sys.executable, "-c", _CHILD, str(module), str(out), str(size)], capture_output=True, text=True)
        if child.returncode != 0 or not out.is_file():
            lines = [line for line in child.stderr.strip().splitlines() if line.strip()] or [f"exit code {child.returncode}"]
            raise RuntimeError(f"litert-torch could not convert the model: {lines[-1]}")
        return out.read_bytes()


def with_metadata(flatbuffer: bytes, meta: dict[str, str]) -> bytes:
    """A LiteRT flatbuffer with ``meta`` added to its metadata list (JSON, under LITERT_SECTION)."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = LITERT_SECTION, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (LITERT_SECTION, LITERT_SECTION.encode())] + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=LITERT_IDENTIFIER)
    return bytes(builder.Output())
