"""Every export format side by side -> BENCHMARKS.md, section "Inference -> Every format".

Speed: default preset, 80 classes, input 320, batch 1, end to end from a decoded COCO
photo to final boxes, for eager PyTorch, ONNX Runtime fp32 / int8, OpenVINO fp32 / int8
and LiteRT fp32 / int8, built from one model in one run and timed interleaved round by round
(retinanet.benchmark). int8 models are calibrated on 100 coco128 photos.
Targets: OpenVINO fp32 >= 1.15x ONNX Runtime fp32; the fastest int8 >= 1.6x ONNX Runtime fp32.

Accuracy (--checkpoint, a model trained on aquarium's train split): each format exported
from it (int8 calibrated on 100 aquarium train images, never test), COCO AP / AP50 on
aquarium's test split through api.Detector as it ships, and parity with eager: the share of
eager's detections scoring >= 0.25 that the format also finds at >= 0.25 (same class,
IoU >= 0.9 for fp32, >= 0.5 for int8). Target: every format within 1.5 AP50 points of eager.

    .venv/bin/python bench/formats.py --checkpoint bench/out/accuracy/auto30/aquarium_seed0/best.pt [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, write_report  # noqa: E402

from retinanet.api import Detector  # noqa: E402
from retinanet.benchmark import benchmark, format_rows  # noqa: E402
from retinanet.config import BenchConfig, EvalConfig, preset  # noqa: E402
from retinanet.model import build_model  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
PHOTO = DATASETS / "coco128" / "train2017" / "000000000009.jpg"
RUNTIMES = ("eager", "onnx", "int8", "openvino", "openvino-int8", "litert", "litert-int8")
EVAL_CONF = 0.01  # COCO AP wants every candidate above a low threshold
PARITY_CONF = 0.25  # the detections a user acts on


def speed(repeats: int, threads: int) -> str:
    cfg = BenchConfig(sizes=(320,), batch=1, num_classes=80, repeats=repeats, threads=threads)
    calibration = sorted((DATASETS / "coco128" / "train2017").glob("*.jpg"))[:100]
    rows = benchmark(lambda s: build_model(preset("default", num_classes=80, input_size=s)), cfg, RUNTIMES, peer=False,
                     image_path=str(PHOTO), calibration=calibration)  # fmt: skip
    ms = {r["runtime"]: r["ms"] for r in rows}
    ort = ms["onnx fp32"]
    ov_ratio = ort / ms["openvino fp32"]
    best_int8 = min((n for n in ms if "int8" in n), key=ms.get)
    int8_ratio = ort / ms[best_int8]
    lines = [format_rows(rows, 1), ""]
    lines.append(f"OpenVINO fp32 vs ONNX Runtime fp32: {ov_ratio:.2f}x (target >= 1.15x): {'met' if ov_ratio >= 1.15 else 'NOT met'}")
    lines.append(f"fastest int8 ({best_int8}) vs ONNX Runtime fp32: {int8_ratio:.2f}x (target >= 1.6x): {'met' if int8_ratio >= 1.6 else 'NOT met'}")
    lines.append("LiteRT runs the 320x320 square; the others letterbox this 640x480 photo to 320x256")
    return "\n".join(lines)


def _exports(model, calibration: list[Path], tmp: Path) -> dict[str, object]:
    from retinanet.config import ExportConfig, QuantizeConfig
    from retinanet.export import export_onnx, quantize_int8
    from retinanet.export.litert import export_litert
    from retinanet.export.openvino import export_openvino, quantize_openvino

    fp32 = export_onnx(model, tmp / "m.onnx", ExportConfig())
    xml = export_openvino(fp32, tmp / "m.xml")
    return {
        "eager PyTorch": model,
        "ONNX Runtime fp32": fp32,
        "ONNX Runtime int8": quantize_int8(fp32, tmp / "m.int8.onnx", calibration, QuantizeConfig()),
        "OpenVINO fp32": xml,
        "OpenVINO int8": quantize_openvino(xml, tmp / "m.int8.xml", calibration, num_images=QuantizeConfig.num_images),
        "LiteRT fp32": export_litert(model, tmp / "m.tflite"),
        "LiteRT int8": export_litert(model, tmp / "m.int8.tflite", calibration=calibration, num_images=QuantizeConfig.num_images),
    }


def _parity(eager: list, found: list, iou_min: float) -> float:
    from retinanet.export import match_detections

    total = sum(len(a) for a in eager)
    return sum(match_detections(a, b, iou_min=iou_min)[0] * len(a) for a, b in zip(eager, found)) / max(total, 1)


def accuracy(checkpoint: Path, threads: int) -> str:
    from accuracy import splits  # aquarium as the accuracy benchmark reads it (its defective boxes dropped)

    from retinanet.checkpoint import model_from_checkpoint
    from retinanet.evaluation import evaluate

    train, _, test = splits("aquarium")
    calibration = [r.image_path for r in train.records]
    model = model_from_checkpoint(checkpoint).eval()
    files = [r.image_path for r in test.records]
    lines = [f"checkpoint {checkpoint} (input {model.cfg.input_size}), aquarium test: {len(files)} images", "",
             "| format | AP | AP50 | AP50 - eager's (points) | parity with eager at >= 0.25 |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        eager_found = Detector(model, conf=PARITY_CONF).predict(files)
        ref = None
        for name, source in _exports(model, calibration, Path(tmp)).items():
            det = Detector(source, conf=EVAL_CONF, threads=threads)
            m = evaluate(det, test, EvalConfig(conf=EVAL_CONF), plots=False, progress=False).metrics
            ref = m["AP50"] if ref is None else ref
            iou_min = 0.5 if "int8" in name else 0.9
            par = _parity(eager_found, Detector(source, conf=PARITY_CONF, threads=threads).predict(files), iou_min)
            gap = (m["AP50"] - ref) * 100
            lines.append(f"| {name} | {m['AP']:.3f} | {m['AP50']:.3f} | {gap:+.1f} | {par:.1%} (IoU >= {iou_min}) |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, help="aquarium-trained checkpoint for the accuracy table")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = [machine(), ""]
    if not args.skip_speed:
        out += ["## Speed", "", speed(args.repeats, args.threads), ""]
        print("\n".join(out), flush=True)
    if args.checkpoint:
        out += ["## Accuracy", "", accuracy(args.checkpoint, args.threads)]
    text = "\n".join(out)
    write_report("formats", text)


if __name__ == "__main__":
    main()
