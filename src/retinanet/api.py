"""Python API for inference: one ``Detector`` for checkpoints (.pt, run by PyTorch) and
exported models (.onnx run by ONNX Runtime, .xml by OpenVINO, .tflite by LiteRT; backends.py), with the same
inputs and outputs.

    from retinanet.api import Detector

    det = Detector("runs/train/best.pt")          # or "model.onnx", "model.xml", "model.tflite", or a RetinaNet
    r = det.predict("photo.jpg")                  # a Result
    r.boxes, r.scores, r.labels, r.names          # boxes (D, 4) xyxy in photo pixels
    rs = det.predict(["a.jpg", pil_image, rgb_array, chw_tensor])   # a list of Results
    for r in det.predict("folder/", stream=True): # one Result at a time (also videos, streams)
        r.save(f"out/{Path(r.source).name}")

Inputs (sources.py): a file path, a folder or glob (all images in it), an http(s) URL of an
image, a PIL image, a numpy array (H, W, 3) RGB / (H, W) grey / (H, W, 4) RGBA, uint8 or
float in [0, 1], a torch tensor (3, H, W) uint8 or float in [0, 1], a batch (N, H, W, 3)
array or (N, 3, H, W) tensor, or a list of any of these; with ``stream=True`` also video
files, video streams (rtsp://, http MJPEG) and webcams ("0"). One image gives one Result; a
batch, list, folder or glob gives a list. OpenCV users: cv2 decodes BGR, convert with
``frame[..., ::-1]`` first. Results (results.py) keep a reference to their image.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .backends import CONF_KEY, LiteRtBackend, OnnxBackend, OpenVinoBackend, TorchBackend, stored_conf
from .config import PredictConfig
from .results import Result, annotate, to_frame
from .sources import Input, expand_images, load_inputs, open_source, read_inputs

ONNX_SUFFIXES = (".onnx",)
OPENVINO_SUFFIXES = (".xml",)
LITERT_SUFFIXES = (".tflite",)
EXPORT_SUFFIXES = ONNX_SUFFIXES + OPENVINO_SUFFIXES + LITERT_SUFFIXES
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
Size = tuple[int, int]


# ----------------------------------------------------------------------------- Detector


@dataclasses.dataclass(frozen=True)
class _Settings:
    """One predict call's settings, checked."""

    conf: float
    iou: float
    max_det: int
    classes: list[int] | None
    agnostic: bool


class Detector:
    """Loads a model once; ``predict`` runs it on images of any size.

    model: a checkpoint (.pt), an exported model (.onnx, OpenVINO's .xml, LiteRT's .tflite) or a built RetinaNet.
    conf: default score threshold (None: the one the checkpoint or export stores, else
    PredictConfig.fallback_conf, 0.25). iou, max_det: NMS IoU and detections per image
    (None: the model's own values). agnostic: class-agnostic NMS (None: the model's own
    postprocess.agnostic, which an export stores; default per class). classes: keep only
    these classes (names or indices).
    device: where it runs, one rule for every format (retinanet.devices): auto, cpu, cuda or
    cuda:N for a checkpoint or an .onnx (auto: CUDA when present), an OpenVINO device (cpu,
    gpu, gpu.N, npu) for an .xml. providers: ONNX Runtime execution providers, listed as
    InferenceSession takes them, instead of the ones ``device`` picks.
    threads: ONNX Runtime / OpenVINO CPU threads.
    spin: let ONNX Runtime's idle threads spin (its default, fastest) rather than sleep.
    batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: Any,
        conf: float | None = PredictConfig.conf,
        iou: float | None = PredictConfig.iou,
        max_det: int | None = PredictConfig.max_det,
        classes: Sequence[str | int] | None = None,
        device: str = PredictConfig.device,
        threads: int | None = PredictConfig.threads,
        batch_size: int = PredictConfig.batch,
        spin: bool = True,
        agnostic: bool | None = PredictConfig.agnostic,
        providers: Sequence[Any] | None = None,
    ):
        self.path: Path | None = None
        stored = None
        if isinstance(model, (str, Path)):
            self.path = Path(model)
            model, stored = self._load(self.path, threads, spin, device, providers)
        if model is not None:  # a RetinaNet, or a checkpoint's
            if not hasattr(model, "predict") or not hasattr(model, "cfg"):
                raise ValueError(f"Detector needs a model path or a RetinaNet, got a {type(model).__name__}")
            self.backend: Any = TorchBackend(model, device, self.path or "model")
            # a checkpoint's stored threshold, or the one a loaded model carries (RetinaNet.conf_threshold)
            self.backend.stored_conf = stored if stored is not None else stored_conf(getattr(model, CONF_KEY, None))
            self.class_names = list(model.class_names)
            self.category_ids = [int(c) for c in model.category_ids]
            self.input_size = int(model.cfg.input_size)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        fallback = self.backend.stored_conf if self.backend.stored_conf is not None else PredictConfig.fallback_conf
        self.conf = fallback if conf is None else _check_conf(conf)
        self.iou = self.backend.nms_iou if iou is None else _check_iou(iou)
        self.max_det = self.backend.max_detections if max_det is None else _check_max_det(max_det)
        self.agnostic = self.backend.agnostic if agnostic is None else bool(agnostic)
        self.classes = self.resolve_classes(classes)

    def _load(self, path: Path, threads: int | None, spin: bool, device: str, providers: Any) -> tuple[Any, float | None]:
        """An .onnx, .xml or .tflite export (its backend set up here; gives None) or a checkpoint's model and
        the score threshold it stores (None: none)."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file not found")
        if providers and path.suffix.lower() not in ONNX_SUFFIXES:
            raise ValueError(f"{path}: providers= chooses ONNX Runtime's execution providers, for an .onnx model only")
        if path.suffix.lower() in ONNX_SUFFIXES:
            self.backend = OnnxBackend(path, threads, spin, device, providers)
        elif path.suffix.lower() in OPENVINO_SUFFIXES:
            self.backend = OpenVinoBackend(path, threads, device)
        elif path.suffix.lower() in LITERT_SUFFIXES:
            from .devices import litert_device

            litert_device(device, path)
            self.backend = LiteRtBackend(path, threads)
        if path.suffix.lower() in EXPORT_SUFFIXES:
            meta = self.backend.meta
            self.class_names = json.loads(meta["class_names"])
            self.category_ids = [int(c) for c in json.loads(meta["category_ids"])]
            self.input_size = int(meta["input_size"])
            return None, None
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            from .checkpoint import load_checkpoint, model_from_checkpoint

            state = load_checkpoint(path)
            return model_from_checkpoint(state).fuse(), stored_conf(state.get(CONF_KEY))  # ours alone: fold for inference
        raise ValueError(
            f"{path}: unknown model format {path.suffix!r}: expected a .pt checkpoint, an .onnx export, an OpenVINO .xml or a LiteRT .tflite"
        )

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolve_classes(self, classes: Iterable[str | int] | None) -> list[int] | None:
        """Class names or indices -> sorted label indices (None: all classes)."""
        if classes is None:
            return None
        out = set()
        for c in classes:
            if isinstance(c, str) and c.strip().lstrip("-").isdigit():
                c = int(c)
            if isinstance(c, (int, np.integer)):
                if not 0 <= int(c) < self.num_classes:
                    raise ValueError(f"class index {c} out of range: the model has {self.num_classes} classes")
                out.add(int(c))
            elif c in self.class_names:
                out.add(self.class_names.index(c))
            else:
                shown = ", ".join(self.class_names[:10]) + (", ..." if self.num_classes > 10 else "")
                raise ValueError(f"unknown class {c!r}; the model's classes are: {shown}")
        return sorted(out)

    def settings(
        self, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
        classes: Sequence[str | int] | None = None, agnostic: bool | None = None,
    ) -> _Settings:  # fmt: skip
        """This call's settings: each given one checked, each None the Detector's own."""
        return _Settings(
            conf=self.conf if conf is None else _check_conf(conf),
            iou=self.iou if iou is None else _check_iou(iou),
            max_det=self.max_det if max_det is None else _check_max_det(max_det),
            classes=self.classes if classes is None else self.resolve_classes(classes),
            agnostic=self.agnostic if agnostic is None else bool(agnostic),
        )

    def predict(
        self,
        source: Any,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[str | int] | None = None,
        agnostic: bool | None = None,
        stream: bool = False,
    ) -> Result | list[Result] | Iterator[Result]:
        """Detections for one image (a Result) or several (a list of Results, in input order).

        stream=True returns an iterator that decodes, runs and yields one batch of images at
        a time (a folder is never decoded whole; beyond the Results the caller keeps, one
        batch of images is held) and also takes video files, streams and webcams, one Result
        per frame.
        Sources are checked at the call either way (a missing file raises at once)."""
        settings = self.settings(conf, iou, max_det, classes, agnostic)
        inputs, single = open_source(source, self.input_size, videos=stream)
        if stream:
            return self._run(inputs, settings)
        results = list(self._run(inputs, settings))
        return results[0] if single else results

    def predict_tensors(
        self,
        images: list[Tensor],
        names: list[str | None] | None = None,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[str | int] | None = None,
        sizes: Sequence[Size | None] | None = None,
        agnostic: bool | None = None,
    ) -> list[Result]:
        """(3, H, W) uint8 / float tensors -> Results (the step after input decoding).
        ``sizes``: per image, the (H, W) of the file it was decoded reduced from (None: the
        tensor's size); its boxes and image_size are given in that frame."""
        names = names if names is not None else [None] * len(images)
        sizes = sizes if sizes is not None else [None] * len(images)
        inputs = [Input(img, name, size) for img, name, size in zip(images, names, sizes)]
        return list(self._run(inputs, self.settings(conf, iou, max_det, classes, agnostic)))

    def _run(self, inputs: Iterable[Input], s: _Settings) -> Iterator[Result]:
        """Results in input order, one batch of batch_size inputs taken at a time."""
        batch: list[Input] = []
        for item in inputs:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from self._run_batch(batch, s)
                batch = []
        if batch:
            yield from self._run_batch(batch, s)

    def _run_batch(self, batch: list[Input], s: _Settings) -> list[Result]:
        found = self.backend.run([item.image for item in batch], s.conf, s.iou, s.max_det, s.agnostic)
        results = []
        for item, (boxes, scores, labels) in zip(batch, found):
            if s.classes is not None:
                sel = np.isin(labels, s.classes)
                boxes, scores, labels = boxes[sel], scores[sel], labels[sel]
            labels = labels.astype(np.int64)
            shape = (int(item.image.shape[-2]), int(item.image.shape[-1]))
            frame = item.size or shape
            results.append(
                Result(
                    boxes=to_frame(boxes.astype(np.float32).reshape(-1, 4), shape, frame),
                    scores=scores.astype(np.float32),
                    labels=labels,
                    names=[self.class_names[i] for i in labels.tolist()],
                    image_size=frame,
                    source=item.source,
                    category_ids=[self.category_ids[i] for i in labels.tolist()],
                    image=item.image,
                    frame=item.frame,
                )
            )
        return results


def _check_conf(conf: float) -> float:
    if not 0 <= conf < 1:
        raise ValueError(f"confidence threshold must be in [0, 1), got {conf}")
    return float(conf)


def _check_iou(iou: float) -> float:
    if not 0 < iou <= 1:
        raise ValueError(f"NMS IoU threshold must be in (0, 1], got {iou}")
    return float(iou)


def _check_max_det(n: int) -> int:
    if n < 1:
        raise ValueError(f"max detections must be at least 1, got {n}")
    return int(n)


__all__ = ["Detector", "Result", "annotate", "expand_images", "load_inputs", "read_inputs", "to_frame"]
