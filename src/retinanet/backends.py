"""The runtimes behind api.Detector, one class per model format, each with the same
``run(images, conf, iou, max_det, agnostic)`` -> per image (boxes, scores, labels) in the
image's pixels, best first:

    TorchBackend     a RetinaNet (a .pt checkpoint's) in eager PyTorch, on any torch device
    OnnxBackend      a `retinanet export` .onnx (fp32 or int8) in ONNX Runtime: the graph
                     letterboxes the uint8 image itself
    OpenVinoBackend  a `retinanet export --format openvino` .xml in OpenVINO: letterboxed
                     here by preprocess.letterbox, as eager PyTorch does (export/openvino.py
                     says why)

Each also gives the model's defaults: score_thresh, nms_iou, max_detections, agnostic and
the threshold training stored (stored_conf, None when there is none).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data.images import to_uint8

CONF_KEY = "conf_threshold"  # the score threshold a checkpoint (top-level key), an export (metadata) or a model may carry


class TorchBackend:
    name = "torch"

    def __init__(self, model, device: str | torch.device, where: str | Path = "model"):
        from .devices import torch_device

        self.device = torch_device(str(device), where)  # 'auto': CUDA when present, else the CPU
        self.model = model.eval().to(self.device)
        post = model.cfg.postprocess
        self.score_thresh, self.nms_iou, self.max_detections = post.score_thresh, post.nms_iou, post.max_detections
        self.agnostic = bool(getattr(post, "agnostic", False))
        self.stored_conf: float | None = None  # set by Detector from the checkpoint, when it has one

    def run(self, images: list[Tensor], conf: float, iou: float, max_det: int, agnostic: bool) -> list[tuple[np.ndarray, ...]]:
        # This call's settings, never written into the model: concurrent calls stay independent.
        post = dataclasses.replace(
            self.model.cfg.postprocess, score_thresh=conf, nms_iou=iou, max_detections=max_det, agnostic=agnostic
        )
        dets = self.model.predict([im.to(self.device) for im in images], post=post)
        return [(d.boxes.cpu().numpy(), d.scores.cpu().numpy(), d.labels.cpu().numpy()) for d in dets]


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, threads: int | None, spin: bool = True, device: str = "auto", providers: Any = None):
        import onnxruntime as ort

        from .devices import onnx_providers

        from .export.metadata import read_metadata

        self.path = path
        self.meta = read_metadata(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # the overridable threshold inputs would warn on every load
        # ONNX Runtime's default: intra-op threads spin between the graph's ~500 ops instead
        # of sleeping and being woken for each (measured on 2 cores, 320 px: 8.3 ms instead
        # of 10.2). spin=False suits a machine shared with other busy threads, which
        # spinning threads would steal cores from.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        chosen = onnx_providers(device, providers, path, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=chosen)
        except Exception as e:
            raise RuntimeError(f"{path}: ONNX Runtime cannot load this model: {e}") from e
        _export_defaults(self, self.meta)

    def run(self, images: list[Tensor], conf: float, iou: float, max_det: int, agnostic: bool) -> list[tuple[np.ndarray, ...]]:
        # One run per group of same-sized images: the graph takes (N, H, W, 3) uint8.
        out: list[Any] = [None] * len(images)
        for idx in _same_size_groups(images).values():
            batch = np.stack([to_hwc_uint8(images[i]) for i in idx])  # (N, H, W, 3)
            feeds = {
                "images": batch,
                self.score_input: np.array([conf], np.float32),
                self.iou_input: np.array([graph_iou(iou, agnostic)], np.float32),
            }
            try:
                boxes, scores, labels, count = self.session.run(None, feeds)
            except Exception as e:  # onnxruntime's own error types: one line naming the file
                raise RuntimeError(f"{self.path}: ONNX Runtime failed on this model: {str(e).splitlines()[0]}") from e
            for j, i in enumerate(idx):
                out[i] = after_graph(*_rows(boxes, scores, labels, count, j), iou, max_det, agnostic)
        return out


def graph_iou(iou: float, agnostic: bool) -> float:
    """The IoU threshold fed to an exported graph, whose NMS is per class: ``iou``, or with
    ``agnostic`` 1.0, so that its NMS removes nothing and after_graph's class-agnostic NMS
    sees every candidate (per-class NMS first would drop boxes that agnostic NMS keeps)."""
    return 1.0 if agnostic else iou


def after_graph(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float, max_det: int, agnostic: bool
) -> tuple[np.ndarray, ...]:
    """One image's detections from an exported graph run at graph_iou(iou, agnostic) ->
    the final ones: class-agnostic NMS at ``iou`` when ``agnostic``, then the best ``max_det``."""
    found = agnostic_nms(boxes, scores, labels, iou) if agnostic else (boxes, scores, labels)
    return tuple(a[:max_det] for a in found)  # sorted best first: a cut keeps the best


def agnostic_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> tuple[np.ndarray, ...]:
    """Class-agnostic NMS over one image's detections (boxes (D, 4), scores, labels), best first."""
    if len(scores) < 2:
        return boxes, scores, labels
    from torchvision.ops import nms

    keep = nms(torch.from_numpy(np.ascontiguousarray(boxes)), torch.from_numpy(np.ascontiguousarray(scores)), iou).numpy()
    return boxes[keep], scores[keep], labels[keep]


def stored_conf(value: Any) -> float | None:
    """A model's stored score threshold (checkpoint key or ONNX metadata CONF_KEY) as a float
    in [0, 1), or None when it is absent or not such a number."""
    try:
        conf = float(value)
    except (TypeError, ValueError, RuntimeError):  # absent, text, a tensor of many values
        return None
    return conf if 0 <= conf < 1 else None


def to_hwc_uint8(t: Tensor) -> np.ndarray:
    t = to_uint8(t)
    # uint8 input (the usual case) stays in numpy, not torch: a torch op here would wake PyTorch's OpenMP threads, which then spin
    # on the cores ONNX Runtime is about to use (bench/inference.py: 11.6 -> 10.1 ms on 2 cores).
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0))  # (3, H, W) -> (H, W, 3)


def _export_defaults(backend: Any, meta: dict[str, str]) -> None:
    """An exported model's defaults from its metadata, on ``backend``: the threshold input
    names, score_thresh, nms_iou, max_detections, agnostic (its postprocess.agnostic) and
    stored_conf (the threshold training chose, or None)."""
    from .export.metadata import AGNOSTIC_KEY, IOU_INPUT, SCORE_INPUT, parse_bool

    backend.score_input, backend.iou_input = SCORE_INPUT, IOU_INPUT
    backend.score_thresh = float(meta["score_thresh"])
    backend.nms_iou = float(meta["nms_iou"])
    backend.max_detections = int(meta["max_detections"])
    backend.agnostic = parse_bool(meta.get(AGNOSTIC_KEY, "false"))
    backend.stored_conf = stored_conf(meta.get(CONF_KEY))


def _rows(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, count: np.ndarray, j: int) -> tuple[np.ndarray, ...]:
    """Image j's detections from an exported graph's padded outputs (its first count[j] rows)."""
    n = int(count[j])
    return boxes[j, :n], scores[j, :n], labels[j, :n]


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None, device: str = "auto"):
        from .devices import openvino_device
        from .export.metadata import parse_bool, read_openvino_metadata
        from .export.openvino import openvino_core

        self.path = path
        if not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing (an OpenVINO model is a .xml and a .bin)")
        core = openvino_core()  # one per process: see its docstring
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise RuntimeError(f"{path}: OpenVINO cannot read this model: {_first_line(e)}") from e
        self.meta = read_openvino_metadata(path, model)
        self.device = openvino_device(device, path)
        config: dict[str, Any] = {}
        if self.device == "CPU":  # fp32 as exported: the CPU plugin would run bf16 where the CPU has it
            config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        try:
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as e:
            raise RuntimeError(f"{path}: OpenVINO cannot compile this model for {self.device}: {_first_line(e)}") from e
        self.request = self.compiled.create_infer_request()
        _export_defaults(self, self.meta)
        self.input_size = int(self.meta["input_size"])
        self.rect = parse_bool(self.meta.get("rect", "false"))

    def run(self, images: list[Tensor], conf: float, iou: float, max_det: int, agnostic: bool) -> list[tuple[np.ndarray, ...]]:
        from .export.openvino import openvino_inputs

        out: list[Any] = [None] * len(images)
        for idx in _same_size_groups(images).values():  # scale and limits are one per run
            feeds = openvino_inputs([images[i] for i in idx], self.input_size, self.rect, conf, graph_iou(iou, agnostic))
            try:
                res = self.request.infer(feeds)
            except Exception as e:
                raise RuntimeError(f"{self.path}: OpenVINO failed on this model: {_first_line(e)}") from e
            boxes, scores, labels, count = (res[self.compiled.output(name)] for name in ("boxes", "scores", "labels", "num_detections"))
            for j, i in enumerate(idx):
                out[i] = after_graph(*_rows(boxes, scores, labels, count, j), iou, max_det, agnostic)
        return out


class LiteRtBackend:
    """A LiteRT (.tflite) export: the network alone at one square size, one image per run;
    letterboxed by preprocess.letterbox and decoded by postprocess.postprocess_raw, as eager is."""

    name = "litert"

    def __init__(self, path: Path, threads: int | None):
        from .export.metadata import read_litert_metadata

        self.path = path
        self.meta = read_litert_metadata(path)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise RuntimeError(f"{path}: running a LiteRT model needs ai-edge-litert: pip install 'retinanet-mobilenet[litert]' ({e})") from None
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
            self.interpreter.allocate_tensors()
        except Exception as e:
            raise RuntimeError(f"{path}: LiteRT cannot load this model: {_first_line(e)}") from e
        _export_defaults(self, self.meta)
        self.input_size = int(self.meta["input_size"])
        self.topk = int(self.meta["topk"])
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        want = [1, 3, self.input_size, self.input_size]
        if len(inputs) != 1 or list(inputs[0]["shape"]) != want or len(outputs) != 3:
            raise RuntimeError(f"{path}: the model does not take one {tuple(want)} image and give three outputs: not a `retinanet export --format litert` model")
        self.input_index = inputs[0]["index"]
        # cls_logits, box_deltas, anchors: in the order the converter numbers its outputs
        self.outputs = sorted(outputs, key=lambda o: _output_number(o["name"]))

    def _output(self, detail: dict) -> np.ndarray:
        """An output as float: an int8 model's class and box outputs are integers with a scale and zero point."""
        value = self.interpreter.get_tensor(detail["index"])
        if value.dtype == np.float32:
            return value
        scale, zero = detail["quantization"]
        return (value.astype(np.float32) - zero) * np.float32(scale)

    def run(self, images: list[Tensor], conf: float, iou: float, max_det: int, agnostic: bool) -> list[tuple[np.ndarray, ...]]:
        from .config.model import PostprocessConfig
        from .postprocess import postprocess_raw
        from .preprocess import letterbox

        post = PostprocessConfig(score_thresh=conf, nms_iou=iou, max_detections=max_det, topk=self.topk, agnostic=agnostic)
        out = []
        for im in images:
            x, scales, sizes = letterbox([im], self.input_size)
            try:
                self.interpreter.set_tensor(self.input_index, x.numpy())
                self.interpreter.invoke()
                cls_logits, box_deltas, anchors = (self._output(o) for o in self.outputs)
            except Exception as e:
                raise RuntimeError(f"{self.path}: LiteRT failed on this model: {_first_line(e)}") from e
            det = postprocess_raw(cls_logits, box_deltas, anchors, self.meta, float(scales[0]), tuple(int(v) for v in sizes[0]), post)
            out.append((det.boxes.numpy(), det.scores.numpy(), det.labels.numpy()))
        return out


def _output_number(name: str) -> int:
    """The converter's output number in a tensor name ('serving_default_output_1_output' -> 1)."""
    import re

    found = re.findall(r"output_(\d+)", name)
    return int(found[-1]) if found else 0


def _same_size_groups(images: list[Tensor]) -> dict[tuple[int, int], list[int]]:
    """Indices of the images that share a (H, W): an exported graph runs one size at a time."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape[-2:]), []).append(i)
    return groups


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
