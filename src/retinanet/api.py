"""Python API for inference: one ``Detector`` for checkpoints (.pt, run by PyTorch) and
exported models (.onnx, run by ONNX Runtime), with the same inputs and outputs.

    from retinanet.api import Detector

    det = Detector("runs/train/best.pt")          # or "model.onnx", or a RetinaNet
    r = det.predict("photo.jpg")                  # a Result
    r.boxes, r.scores, r.labels, r.names          # boxes (D, 4) xyxy in photo pixels
    rs = det.predict(["a.jpg", pil_image, rgb_array, chw_tensor])   # a list of Results

Inputs: a file path, a folder or glob (all images in it), a PIL image, a numpy array
(H, W, 3) RGB / (H, W) grey / (H, W, 4) RGBA, uint8 or float in [0, 1], a torch tensor
(3, H, W) uint8 or float in [0, 1], a batch (N, H, W, 3) array or (N, 3, H, W) tensor, or
a list of any of these. One image gives one Result; a batch, list, folder or glob gives
a list. OpenCV users: cv2 decodes BGR, convert with ``frame[..., ::-1]`` first.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .config import PredictConfig
from .data.coco import coco_results
from .data.images import IMAGE_SUFFIXES, read_image_for, to_rgb, to_uint8
from .data.yolo import yolo_line
from .draw import class_color, draw_boxes

ONNX_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class Result:
    """Detections of one image, best first. Boxes are xyxy in the image's own pixels."""

    boxes: np.ndarray
    """(D, 4) float32 x1, y1, x2, y2."""
    scores: np.ndarray
    """(D,) float32 class probabilities."""
    labels: np.ndarray
    """(D,) int64 contiguous class index 0..K-1."""
    names: list[str]
    """Class name of each detection."""
    image_size: tuple[int, int]
    """(height, width) of the image."""
    source: str | None = None
    """File the image came from, when it came from a file."""
    category_ids: list[int] = field(default_factory=list)
    """The dataset's own category id of each detection (COCO ids for a COCO-trained model)."""

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries: bbox [x, y, w, h], the dataset's category id, score."""
        return coco_results(image_id, self.boxes, self.scores, self.category_ids)

    def to_yolo(self, with_score: bool = False) -> list[str]:
        """YOLO txt lines: ``label cx cy w h`` normalised by the image size (+ score)."""
        h, w = self.image_size
        scores = self.scores.tolist() if with_score else [None] * len(self)
        return [yolo_line(label, box, w, h, s) for box, label, s in zip(self.boxes.tolist(), self.labels.tolist(), scores)]


# ----------------------------------------------------------------------------- inputs


def expand_images(source: str | Path) -> list[Path]:
    """A file, a folder (its images, sorted, not recursive) or a glob -> image files."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{text}: no images match this pattern")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    return [path]


def _writable(arr: np.ndarray) -> np.ndarray:
    """Contiguous and writable (torch.from_numpy warns on read-only arrays such as PIL's)."""
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()


def _array_to_chw(arr: np.ndarray, what: str) -> Tensor:
    """(H, W), (H, W, 1|3|4) uint8 or float in [0, 1] -> (3, H, W) uint8 or float tensor."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected an (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.shape[2] == 4:
            arr = np.asarray(to_rgb(Image.fromarray(arr, "RGBA")))
        return torch.from_numpy(_writable(arr)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{what}: a float image must hold finite values in [0, 1]")
        if arr.shape[2] == 4:  # composite on black, as to_rgb does
            arr = arr[..., :3] * arr[..., 3:]
        return torch.from_numpy(_writable(arr.astype(np.float32, copy=False))).permute(2, 0, 1)
    raise ValueError(f"{what}: unsupported dtype {arr.dtype} (use uint8, or float in [0, 1])")


def _tensor_to_chw(t: Tensor, what: str) -> Tensor:
    t = t.detach().cpu()
    if t.ndim == 2:
        t = t[None].expand(3, -1, -1)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"{what}: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.dtype == torch.uint8:
        return t
    if t.is_floating_point():
        if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
            raise ValueError(f"{what}: a float tensor must hold finite values in [0, 1]")
        return t.float()
    raise ValueError(f"{what}: unsupported dtype {t.dtype} (use uint8, or float in [0, 1])")


Size = tuple[int, int]


def load_inputs(source: Any) -> tuple[list[Tensor], list[str | None], bool]:
    """Any supported input -> (3, H, W) tensors, their file names, and whether it was one image."""
    return read_inputs(source)[:3]


def read_inputs(source: Any, min_side: int | None = None) -> tuple[list[Tensor], list[str | None], bool, list[Size | None]]:
    """load_inputs, plus per image the (H, W) of its file (None: the tensor's size). With
    ``min_side`` a large JPEG may decode reduced, its longer side kept at least that."""
    if isinstance(source, (str, Path)):
        files = expand_images(source)
        read = [read_image_for(p, min_side) for p in files]
        single = len(files) == 1 and Path(source).is_file()
        return [t for t, _ in read], [str(p) for p in files], single, [size for _, size in read]
    if isinstance(source, (list, tuple)):
        images, names, sizes = [], [], []
        for item in source:
            imgs, nms, _, szs = read_inputs(item, min_side)
            images, names, sizes = images + imgs, names + nms, sizes + szs
        return images, names, False, sizes
    images, single = _in_memory(source)
    return images, [None] * len(images), single, [None] * len(images)


def _in_memory(source: Any) -> tuple[list[Tensor], bool]:
    """A PIL image, array or tensor (or a batch of them) -> tensors, and whether it was one."""
    if isinstance(source, Image.Image):
        return [_array_to_chw(np.asarray(to_rgb(source)), "PIL image")], True
    if isinstance(source, np.ndarray):
        if source.ndim == 4:
            return [_array_to_chw(a, f"array batch[{i}]") for i, a in enumerate(source)], False
        return [_array_to_chw(source, "array")], True
    if isinstance(source, Tensor):
        if source.ndim == 4:
            return [_tensor_to_chw(t, f"tensor batch[{i}]") for i, t in enumerate(source)], False
        return [_tensor_to_chw(source, "tensor")], True
    raise ValueError(f"cannot predict on a {type(source).__name__}: give a path, PIL image, numpy array, tensor or a list")


# ----------------------------------------------------------------------------- backends


class _TorchBackend:
    name = "torch"

    def __init__(self, model, device: str | torch.device):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        post = model.cfg.postprocess
        self.score_thresh, self.nms_iou, self.max_detections = post.score_thresh, post.nms_iou, post.max_detections

    def run(self, images: list[Tensor], conf: float, iou: float, max_det: int) -> list[tuple[np.ndarray, ...]]:
        # This call's thresholds, never written into the model: concurrent calls stay independent.
        post = dataclasses.replace(self.model.cfg.postprocess, score_thresh=conf, nms_iou=iou, max_detections=max_det)
        dets = self.model.predict([im.to(self.device) for im in images], post=post)
        return [(d.boxes.cpu().numpy(), d.scores.cpu().numpy(), d.labels.cpu().numpy()) for d in dets]


class _OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, threads: int | None, spin: bool = True):
        import onnxruntime as ort

        from .export.metadata import IOU_INPUT, SCORE_INPUT, read_metadata

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
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeError(f"{path}: ONNX Runtime cannot load this model: {e}") from e
        self.score_input, self.iou_input = SCORE_INPUT, IOU_INPUT
        self.score_thresh = float(self.meta["score_thresh"])
        self.nms_iou = float(self.meta["nms_iou"])
        self.max_detections = int(self.meta["max_detections"])

    def run(self, images: list[Tensor], conf: float, iou: float, max_det: int) -> list[tuple[np.ndarray, ...]]:
        # One run per group of same-sized images: the graph takes (N, H, W, 3) uint8.
        out: list[Any] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        for idx in groups.values():
            batch = np.stack([_to_hwc_uint8(images[i]) for i in idx])  # (N, H, W, 3)
            feeds = {
                "images": batch,
                self.score_input: np.array([conf], np.float32),
                self.iou_input: np.array([iou], np.float32),
            }
            try:
                boxes, scores, labels, count = self.session.run(None, feeds)
            except Exception as e:  # onnxruntime's own error types: one line naming the file
                raise RuntimeError(f"{self.path}: ONNX Runtime failed on this model: {str(e).splitlines()[0]}") from e
            for j, i in enumerate(idx):
                n = min(int(count[j]), max_det)  # outputs are sorted best first: a cut keeps the best
                out[i] = (boxes[j, :n], scores[j, :n], labels[j, :n])
        return out


def _to_hwc_uint8(t: Tensor) -> np.ndarray:
    t = to_uint8(t)
    # uint8 input (the usual case) stays in numpy, not torch: a torch op here would wake PyTorch's OpenMP threads, which then spin
    # on the cores ONNX Runtime is about to use (bench/inference.py: 11.6 -> 10.1 ms on 2 cores).
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0))  # (3, H, W) -> (H, W, 3)


# ----------------------------------------------------------------------------- Detector


class Detector:
    """Loads a model once; ``predict`` runs it on images of any size.

    model: a checkpoint (.pt), an exported model (.onnx) or a built RetinaNet.
    conf, iou, max_det: defaults for predict (None: the model's own values).
    classes: keep only these classes (names or indices).
    device: torch device for checkpoints; threads: ONNX Runtime intra-op threads.
    spin: let ONNX Runtime's idle threads spin (its default, fastest) rather than sleep.
    batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: Any,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[str | int] | None = None,
        device: str = PredictConfig.device,
        threads: int | None = PredictConfig.threads,
        batch_size: int = PredictConfig.batch,
        spin: bool = True,
    ):
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: model file not found")
            if path.suffix.lower() in ONNX_SUFFIXES:
                self.backend: Any = _OnnxBackend(path, threads, spin)
                meta = self.backend.meta
                self.class_names = json.loads(meta["class_names"])
                self.category_ids = [int(c) for c in json.loads(meta["category_ids"])]
                self.input_size = int(meta["input_size"])
            elif path.suffix.lower() in CHECKPOINT_SUFFIXES:
                from .checkpoint import model_from_checkpoint

                model = model_from_checkpoint(path).fuse()  # ours alone: fold for inference
            else:
                raise ValueError(f"{path}: unknown model format {path.suffix!r}: expected a .pt checkpoint or an .onnx export")
            self.path: Path | None = path
        else:
            self.path = None
        if not isinstance(model, (str, Path)):
            if not hasattr(model, "predict") or not hasattr(model, "cfg"):
                raise ValueError(f"Detector needs a model path or a RetinaNet, got a {type(model).__name__}")
            self.backend = _TorchBackend(model, device)
            self.class_names = list(model.class_names)
            self.category_ids = [int(c) for c in model.category_ids]
            self.input_size = int(model.cfg.input_size)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.conf = self.backend.score_thresh if conf is None else _check_conf(conf)
        self.iou = self.backend.nms_iou if iou is None else _check_iou(iou)
        self.max_det = self.backend.max_detections if max_det is None else _check_max_det(max_det)
        self.classes = self.resolve_classes(classes)

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

    def predict(
        self,
        source: Any,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[str | int] | None = None,
    ) -> Result | list[Result]:
        """Detections for one image (a Result) or several (a list of Results, in input order)."""
        images, names, single, sizes = read_inputs(source, self.input_size)
        results = self.predict_tensors(images, names, conf, iou, max_det, classes, sizes)
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
    ) -> list[Result]:
        """(3, H, W) uint8 / float tensors -> Results (the step after input decoding).
        ``sizes``: per image, the (H, W) of the file it was decoded reduced from (None: the
        tensor's size); its boxes and image_size are given in that frame."""
        conf = self.conf if conf is None else _check_conf(conf)
        iou = self.iou if iou is None else _check_iou(iou)
        max_det = self.max_det if max_det is None else _check_max_det(max_det)
        keep_classes = self.classes if classes is None else self.resolve_classes(classes)
        names = names if names is not None else [None] * len(images)
        sizes = sizes if sizes is not None else [None] * len(images)
        results: list[Result] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            found = self.backend.run(chunk, conf, iou, max_det)
            for img, name, size, (boxes, scores, labels) in zip(chunk, names[start:], sizes[start:], found):
                if keep_classes is not None:
                    sel = np.isin(labels, keep_classes)
                    boxes, scores, labels = boxes[sel], scores[sel], labels[sel]
                labels = labels.astype(np.int64)
                shape = (int(img.shape[-2]), int(img.shape[-1]))
                results.append(
                    Result(
                        boxes=to_frame(boxes.astype(np.float32).reshape(-1, 4), shape, size or shape),
                        scores=scores.astype(np.float32),
                        labels=labels,
                        names=[self.class_names[i] for i in labels.tolist()],
                        image_size=size or shape,
                        source=name,
                        category_ids=[self.category_ids[i] for i in labels.tolist()],
                    )
                )
        return results


def to_frame(boxes: np.ndarray, shape: Size, size: Size) -> np.ndarray:
    """xyxy boxes on an (H, W) ``shape`` image -> on a ``size`` image of the same content
    (a JPEG's reduced decode to its file's pixels, and back for drawing)."""
    (h, w), (fh, fw) = shape, size
    if (h, w) == (fh, fw):
        return boxes
    frame = np.array([fw, fh, fw, fh], np.float32)
    return np.minimum(boxes * (frame / np.array([w, h, w, h], np.float32)), frame)


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


# ----------------------------------------------------------------------------- drawing


def annotate(image: Tensor | np.ndarray, result: Result) -> np.ndarray:
    """The image (3, H, W) tensor or (H, W, 3) array with boxes and ``name score`` labels
    drawn in the class palette (draw.py, shared with the evaluation plots); returns
    (H, W, 3) uint8 RGB. A reduced decode of the result's file gets its boxes scaled to it."""
    if isinstance(image, np.ndarray):
        image = _array_to_chw(image, "image")
    text = [f"{n} {s:.2f}" for n, s in zip(result.names, result.scores.tolist())]
    colors = [class_color(label) for label in result.labels.tolist()]
    boxes = to_frame(result.boxes, result.image_size, (int(image.shape[-2]), int(image.shape[-1])))
    drawn = draw_boxes(to_uint8(image), torch.from_numpy(boxes), text, colors)
    return drawn.permute(1, 2, 0).contiguous().numpy()  # (3, H, W) -> (H, W, 3)


__all__ = ["Detector", "Result", "annotate", "expand_images", "load_inputs", "read_inputs", "to_frame"]
