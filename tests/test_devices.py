"""One device rule for every format (retinanet.devices): what each name means for a
checkpoint, an .onnx and an OpenVINO .xml, ONNX Runtime providers listed outright, and the
one-line refusals naming the model file."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from retinanet.api import Detector
from retinanet.cli import main
from retinanet.devices import CPU_EP, CUDA_EP, check_device, onnx_providers, openvino_device, torch_device

CPU_ONLY = [CPU_EP]
WITH_CUDA = ["TensorrtExecutionProvider", CUDA_EP, CPU_EP]


@pytest.mark.parametrize("name", ["auto", "CPU", " cuda ", "cuda:1", "gpu", "gpu.1", "npu"])
def test_device_names_are_normalised(name):
    assert check_device(name) == name.strip().lower()


@pytest.mark.parametrize("name", ["", "cuda:x", "gpu.", "cuda:-1", "../cpu", "cpu;rm"])
def test_a_non_device_is_refused_naming_the_setting(name):
    with pytest.raises(ValueError, match=r"^--device=.* is not a device"):
        check_device(name, setting="--device")


def test_onnx_providers_per_device():
    assert onnx_providers("cpu", None, "m.onnx", WITH_CUDA) == [CPU_EP]
    assert onnx_providers("cuda", None, "m.onnx", WITH_CUDA) == [(CUDA_EP, {"device_id": 0}), CPU_EP]
    assert onnx_providers("cuda:1", None, "m.onnx", WITH_CUDA) == [(CUDA_EP, {"device_id": 1}), CPU_EP]
    # auto: CUDA only where this onnxruntime has it and torch sees a GPU
    assert onnx_providers("auto", None, "m.onnx", CPU_ONLY) == [CPU_EP]
    expected = [CUDA_EP, CPU_EP] if torch.cuda.is_available() else [CPU_EP]
    assert onnx_providers("auto", None, "m.onnx", WITH_CUDA) == expected


def test_onnx_refusals_name_the_file():
    with pytest.raises(ValueError, match=r"^m\.onnx: device 'cuda:1' needs onnxruntime-gpu"):
        onnx_providers("cuda:1", None, "m.onnx", CPU_ONLY)
    with pytest.raises(ValueError, match=r"^m\.onnx: an \.onnx model runs on auto, cpu, cuda or cuda:N, not 'npu'"):
        onnx_providers("npu", None, "m.onnx", WITH_CUDA)
    with pytest.raises(ValueError, match=r"^m\.onnx: this onnxruntime has no CUDAExecutionProvider"):
        onnx_providers("cpu", [(CUDA_EP, {"device_id": 0}), CPU_EP], "m.onnx", CPU_ONLY)


def test_listed_providers_win_over_the_device():
    listed = ["TensorrtExecutionProvider", CPU_EP]
    assert onnx_providers("cpu", listed, "m.onnx", WITH_CUDA) == listed


def test_openvino_and_torch_devices():
    assert [openvino_device(n, "m.xml") for n in ("auto", "cpu", "gpu.1", "npu")] == ["CPU", "CPU", "GPU.1", "NPU"]
    with pytest.raises(ValueError, match=r"^m\.xml: OpenVINO has no device 'cuda'"):
        openvino_device("cuda", "m.xml")
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^m\.pt: a checkpoint runs on auto, cpu, cuda or cuda:N, not 'gpu'"):
        torch_device("gpu", "m.pt")


def test_detector_takes_providers_for_an_onnx(exported):
    ckpt, onnx_path = exported
    det = Detector(onnx_path, providers=[CPU_EP], conf=0.03)
    assert det.backend.session.get_providers() == [CPU_EP]
    assert Detector(onnx_path, device="cpu").backend.session.get_providers() == [CPU_EP]
    missing = "BogusExecutionProvider"
    with pytest.raises(ValueError, match=rf"{onnx_path.name}: this onnxruntime has no {missing} \(it has .*{CPU_EP}"):
        Detector(onnx_path, providers=[missing])
    with pytest.raises(ValueError, match=rf"{ckpt.name}: providers= chooses ONNX Runtime's execution providers, for an \.onnx model only"):
        Detector(ckpt, providers=[CPU_EP])
    with pytest.raises(ValueError, match=rf"{ckpt.name}: a checkpoint runs on auto, cpu, cuda or cuda:N, not 'npu'"):
        Detector(ckpt, device="npu")
    if CUDA_EP not in ort.get_available_providers():
        with pytest.raises(ValueError, match=rf"{onnx_path.name}: device 'cuda' needs onnxruntime-gpu"):
            Detector(onnx_path, device="cuda")


def test_cli_refuses_a_device_for_the_wrong_format(exported, coco128, tmp_path, capsys):
    ckpt, onnx_path = exported
    image = str(sorted(coco128.glob("**/*.jpg"))[0])
    assert main(["predict", image, "--model", str(onnx_path), "--device", "gpu", "--out", str(tmp_path / "p")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"{onnx_path}: an .onnx model runs on auto, cpu, cuda or cuda:N, not 'gpu' (an OpenVINO device name)")
    assert main(["predict", image, "--model", str(onnx_path), "--device", "cpu!", "--out", str(tmp_path / "q")]) != 0
    assert "--device='cpu!' is not a device" in capsys.readouterr().err


def test_a_cuda_device_without_cuda_is_refused_before_any_work(tmp_path, capsys):
    if torch.cuda.is_available() or CUDA_EP in ort.get_available_providers():
        pytest.skip("this machine has CUDA")  # the refusal below is for machines without it
    assert main(["predict", str(tmp_path / "missing.jpg"), "--device", "cuda:1", "--out", str(tmp_path / "p")]) != 0
    assert capsys.readouterr().err.strip().endswith("--device=cuda:1 but CUDA is not available on this machine")
