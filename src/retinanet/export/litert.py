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

int8 (``calibration`` given): static post-training quantization through PyTorch's PT2E flow
with litert-torch's quantizer (per-channel symmetric int8 weights; per-tensor int8
activations whose min-max ranges are observed on the calibration images, letterboxed to
the square). The input stays float; the class and box outputs come out as int8 with their
scale and zero point, which backends.LiteRtBackend dequantizes.
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


def export_litert(
    model: nn.Module,
    path: str | Path,
    input_size: int | None = None,
    calibration: str | Path | list[Path] | None = None,
    num_images: int = 100,
) -> Path:
    """The network of ``model`` (a RetinaNet) at one input size, as a .tflite at ``path``:
    fp32, or int8 calibrated on at most ``num_images`` of ``calibration`` (a folder, a glob
    or a list of image files) when it is given."""
    path = Path(path)
    size = input_size or model.cfg.input_size
    if size < 32 or size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {size}")
    if importlib.util.find_spec("litert_torch") is None:
        raise RuntimeError(INSTALL_HINT)
    graph = RawGraph(model, size).eval()
    meta = raw_metadata(model, graph, LITERT_FORMAT, batch="1")
    images = None
    if calibration is not None:
        images = calibration_batch(calibration, num_images, size)
        meta.update(precision="int8", calibration=f"{len(images)} images, PT2E min-max, per-channel int8 weights")
    flat = with_metadata(_convert_in_child(graph, size, images), meta)
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
example = (torch.rand(1, 3, size, size),)
quant = {}
if len(sys.argv) > 4:  # int8: PT2E static quantization, observers run on the calibration images
    import dataclasses
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    images = torch.load(sys.argv[4], weights_only=True)
    # litert-torch's config, with min-max activation observers instead of its histogram ones:
    # the same accuracy measured (BENCHMARKS.md), at less than half the calibration time
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    quantizer = PT2EQuantizer().set_global(dataclasses.replace(config, input_activation=act, output_activation=act))
    graph = prepare_pt2e(torch.export.export(graph, example).module(), quantizer)
    from tqdm import tqdm
    with torch.no_grad():  # the bar goes to the parent's stdout; stderr is kept for errors
        for i in tqdm(range(len(images)), desc="calibrating", unit="img", file=sys.stdout):
            graph(images[i : i + 1].float() / 255)
    graph = convert_pt2e(graph, fold_quantize=False)
    quant = {"quant_config": QuantConfig(pt2e_quantizer=quantizer)}
with torch.no_grad():
    flat = litert_torch.convert(graph, example, **quant).model_content()
open(sys.argv[2], "wb").write(flat)
"""


def calibration_batch(calibration: str | Path | list[Path], num_images: int, size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 (a quarter of float's memory): at most ``num_images``
    calibration images, evenly spread, each letterboxed to the square as the .tflite takes
    its input."""
    from ..data.images import read_image
    from ..preprocess import letterbox
    from .quantize import _calibration_files

    if num_images < 1:
        raise ValueError(f"need at least one calibration image, got {num_images}")
    files = _calibration_files(calibration, num_images)
    if not files:
        raise ValueError(f"{calibration}: no calibration images found")
    return torch.cat([(letterbox([read_image(f)], size)[0] * 255).round().to(torch.uint8) for f in files])


def _convert_in_child(graph: nn.Module, size: int, calibration: torch.Tensor | None = None) -> bytes:
    """The flatbuffer of ``graph`` at a (1, 3, size, size) input, converted by litert-torch in
    a child process; int8 when ``calibration`` (N, 3, size, size) uint8 images are given."""
    with tempfile.TemporaryDirectory() as tmp:
        module, out = Path(tmp) / "graph.pt", Path(tmp) / "graph.tflite"
        torch.save(graph, module)
        argv = [sys.executable, "-c", _CHILD, str(module), str(out), str(size)]
        if calibration is not None:
            torch.save(calibration, Path(tmp) / "calibration.pt")
            argv.append(str(Path(tmp) / "calibration.pt"))
        # int8: the calibration's progress bar shows on our stdout
        child = subprocess.run(argv, stdout=None if calibration is not None else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
