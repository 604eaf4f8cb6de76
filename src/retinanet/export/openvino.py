"""export_openvino: an exported fp32 ONNX model -> OpenVINO IR (``.xml`` + ``.bin``), for
OpenVINO's CPU, GPU and NPU plugins; quantize_openvino: that IR -> int8 IR (NNCF).

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

int8 is NNCF's post-training quantization of the fp32 IR, calibrated on images fed as the
runtime feeds them, not quantize_int8's QDQ ONNX: OpenVINO 2026.4 runs a residual Add whose
inputs are both int8 wrongly on this network (scores near 0, with the QDQ ONNX or with
NNCF's defaults alike), so the Adds stay in fp32 (NNCF's ignored_scope).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import onnx
from onnx.utils import Extractor

from ..config.export import QuantizeConfig
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


@functools.cache
def openvino_core():
    """The process's one ``openvino.Core``, with its CPU plugin loaded first.

    Each Core loads a CPU plugin of its own, and the plugin swaps the calling thread's
    signal stack when it loads and puts back the one it replaced when it is freed. Two
    Cores freed in the order they were made leave the thread on an unmapped stack, and the
    next signal caught there (a child process ending under a SIGCHLD handler, as PyTorch's
    DataLoader installs) kills the process. One Core that lives as long as the process,
    loaded before any other (NNCF makes its own), keeps every later swap nested inside it."""
    import openvino as ov

    core = ov.Core()
    core.get_property("CPU", "FULL_DEVICE_NAME")  # loads the CPU plugin now
    return core


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert a `retinanet export` ONNX file to OpenVINO IR at ``xml_path`` (its weights
    in the .bin beside it); returns the .xml path."""
    import openvino as ov

    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if xml_path.suffix.lower() != ".xml":
        raise ValueError(f"{xml_path}: an OpenVINO model is written as a .xml file (with its .bin beside it)")
    meta = read_metadata(onnx_path)  # one of ours, or a one-line error
    if meta.get("precision", "fp32") != "fp32":  # see the module docstring: int8 IR comes from quantize_openvino
        raise ValueError(f"{onnx_path}: only fp32 exports convert to OpenVINO (this one is {meta['precision']}); "
                         "quantize the fp32 IR instead (quantize_openvino)")
    net = _without_letterbox(onnx.load(str(onnx_path)))
    with tempfile.TemporaryDirectory() as tmp:
        net_path = Path(tmp) / "net.onnx"
        onnx.save(net, str(net_path))
        # Core.read_model (the runtime's ONNX reader), not openvino.convert_model: the same
        # graph, without the conversion tool's usage reporting.
        model = openvino_core().read_model(str(net_path))
    for key, value in {**meta, "format": OPENVINO_FORMAT, "input_format": OPENVINO_INPUT_FORMAT}.items():
        model.set_rt_info(value, [OPENVINO_SECTION, key])
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # fp16 weights would move the boxes
    return xml_path


def openvino_inputs(images: list, size: int, rect: bool, conf: float, iou: float) -> dict:
    """The IR's inputs for images of one size: letterboxed as eager PyTorch does, their
    scale, the original [W, H, W, H] and the two thresholds (numpy, by input name)."""
    import numpy as np

    from ..preprocess import RECT_STRIDE, letterbox

    x, scales, sizes = letterbox(images, size, RECT_STRIDE if rect else None)
    h, w = (float(v) for v in sizes[0])
    return {
        "x": x.numpy(),
        "scale": np.array([float(scales[0])], np.float32),
        "limits": np.array([w, h, w, h], np.float32),
        SCORE_INPUT: np.array([conf], np.float32),
        IOU_INPUT: np.array([iou], np.float32),
    }


def quantize_openvino(xml_path: str | Path, out_path: str | Path, calibration: str | Path | list[Path], num_images: int = QuantizeConfig.num_images) -> Path:
    """int8 IR of an fp32 IR from export_openvino (NNCF post-training quantization,
    calibrated on ``calibration``: a folder, a glob or a list of image files)."""
    import openvino as ov

    from ..data.images import read_image
    from .metadata import parse_bool, read_openvino_metadata
    from .quantize import _calibration_files

    try:
        import nncf
    except ImportError as e:
        raise RuntimeError(f"OpenVINO int8 needs NNCF: pip install 'retinanet-mobilenet[openvino]' ({e})") from None
    xml_path, out_path = Path(xml_path), Path(out_path)
    try:
        model = openvino_core().read_model(str(xml_path))
    except Exception as e:
        raise RuntimeError(f"{xml_path}: OpenVINO cannot read this model: {str(e).strip().splitlines()[0]}") from e
    meta = read_openvino_metadata(xml_path, model)  # one of ours, or a one-line error
    if meta.get("precision", "fp32") != "fp32":
        raise ValueError(f"{xml_path}: only an fp32 IR is quantized (this one is {meta['precision']})")
    files = _calibration_files(calibration, num_images)
    if not files:
        raise ValueError(f"{calibration}: no calibration images found")
    size, rect = int(meta["input_size"]), parse_bool(meta.get("rect", "false"))
    conf, iou = float(meta["score_thresh"]), float(meta["nms_iou"])
    feed = lambda f: openvino_inputs([read_image(f)], size, rect, conf, iou)  # noqa: E731
    q = nncf.quantize(model, nncf.Dataset(files, feed), subset_size=len(files), ignored_scope=nncf.IgnoredScope(types=["Add"]))
    meta = {**meta, "precision": "int8", "calibration": f"{len(files)} images, NNCF min-max, Adds in fp32"}
    for key, value in meta.items():
        q.set_rt_info(value, [OPENVINO_SECTION, key])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out_path), compress_to_fp16=False)
    return out_path


def _without_letterbox(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph from the letterbox's outputs (and the thresholds) to the detections."""
    net = Extractor(model).extract_model(list(OPENVINO_INPUTS), list(OUTPUT_NAMES))
    # The thresholds' default initializers would make OpenVINO fold them into constants.
    kept = [init for init in net.graph.initializer if init.name not in (SCORE_INPUT, IOU_INPUT)]
    del net.graph.initializer[:]
    net.graph.initializer.extend(kept)
    del net.metadata_props[:]  # they travel in rt_info, under our own section
    return net
