"""One rule for where a model runs, shared by every command and every model format.

    device      checkpoint (.pt)          ONNX Runtime (.onnx)                 OpenVINO (.xml)
    auto        CUDA when present,        CUDA when this onnxruntime has it    the CPU
                else the CPU              and sees a GPU, else the CPU
    cpu         the CPU                   CPUExecutionProvider                 CPU
    cuda[:N]    that CUDA device          CUDAExecutionProvider, device N      (refused)
    gpu[.N], npu, ...                     (refused)            (refused)       that OpenVINO device

A LiteRT model (.tflite) runs on the CPU (XNNPACK): auto and cpu; other names are refused.

A name a format cannot use is refused in one line naming the model file. ONNX Runtime's
providers can also be listed outright (``Detector(..., providers=[...])``), as
``onnxruntime.InferenceSession`` takes them; the ones this onnxruntime lacks are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
DEVICE_NAMES = "auto, cpu, cuda, cuda:N (checkpoints and .onnx), or an OpenVINO device (gpu, gpu.N, npu) for .xml"

_CUDA = re.compile(r"cuda(:\d+)?")
_OPENVINO = re.compile(r"[a-z]+(\.\d+)?")


def check_device(name: str, setting: str = "device") -> str:
    """``name`` lower-cased and stripped, or a ValueError naming ``setting`` when it is not a device name at all."""
    norm = str(name).strip().lower()
    if norm in ("auto", "cpu") or _CUDA.fullmatch(norm) or _OPENVINO.fullmatch(norm):
        return norm
    raise ValueError(f"{setting}={name!r} is not a device: use {DEVICE_NAMES}")


def check_present(name: str, setting: str = "device") -> str:
    """check_device, and a CUDA name refused at once when neither torch nor onnxruntime sees
    CUDA here (before any model or data is read; what the name means waits for the model)."""
    norm = check_device(name, setting)
    if _CUDA.fullmatch(norm) and not torch.cuda.is_available():
        import onnxruntime as ort

        if CUDA_EP not in ort.get_available_providers():
            raise ValueError(f"{setting}={name} but CUDA is not available on this machine")
    return norm


def torch_device(name: str, where: str | Path = "model") -> torch.device:
    """The torch device for a checkpoint: auto, cpu or cuda[:N]."""
    from .runtime import resolve_device

    norm = check_device(name)
    if norm not in ("auto", "cpu") and not _CUDA.fullmatch(norm):
        raise ValueError(f"{where}: a checkpoint runs on auto, cpu, cuda or cuda:N, not {name!r} (an OpenVINO device name)")
    return resolve_device(norm)


def onnx_providers(name: str, providers: Sequence[Any] | None, path: str | Path, available: Sequence[str] | None = None) -> list[Any]:
    """ONNX Runtime execution providers for ``device=name`` (or the ``providers`` given,
    checked against the ones this onnxruntime has), the CPU last as the fallback."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if providers:
        missing = [p for p in (_provider_name(p) for p in providers) if p not in available]
        if missing:
            raise ValueError(f"{path}: this onnxruntime has no {', '.join(missing)} (it has {', '.join(available)})")
        return list(providers)
    norm = check_device(name)
    if norm == "cpu":
        return [CPU_EP]
    if norm == "auto":
        return [CUDA_EP, CPU_EP] if CUDA_EP in available and torch.cuda.is_available() else [CPU_EP]
    if not _CUDA.fullmatch(norm):
        raise ValueError(f"{path}: an .onnx model runs on auto, cpu, cuda or cuda:N, not {name!r} (an OpenVINO device name)")
    if CUDA_EP not in available:
        raise ValueError(f"{path}: device {name!r} needs onnxruntime-gpu (this onnxruntime has {', '.join(available)})")
    index = int(norm.partition(":")[2] or 0)
    return [(CUDA_EP, {"device_id": index}), CPU_EP]


def openvino_device(name: str, path: str | Path) -> str:
    """The OpenVINO device for ``device=name``: auto and cpu -> CPU; gpu, gpu.N, npu ... upper-cased."""
    norm = check_device(name)
    if _CUDA.fullmatch(norm):
        raise ValueError(f"{path}: OpenVINO has no device {name!r}; an .xml model runs on auto, cpu, gpu, gpu.N or npu")
    return "CPU" if norm in ("auto", "cpu") else norm.upper()


def litert_device(name: str, path: str | Path) -> str:
    """A LiteRT model runs on the CPU: 'auto' and 'cpu' give 'cpu'; any other device is refused."""
    norm = check_device(name)
    if norm not in ("auto", "cpu"):
        raise ValueError(f"{path}: a LiteRT model runs on the CPU here (auto or cpu), not {name!r}")
    return "cpu"


def _provider_name(p: Any) -> str:
    """A provider as InferenceSession takes it: a name, or a (name, options) pair."""
    return p[0] if isinstance(p, (tuple, list)) else str(p)
