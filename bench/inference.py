"""Issue "Inference and deployment" benchmark -> BENCHMARKS.md, section "Inference".

Speed: default preset, 80 classes, input size 320 (the 640x480 photo letterboxes to
320x256 in every runtime, as in the peer's own transform), batch 1, end to end from a
decoded COCO photo to final boxes in its pixels, for eager PyTorch, TorchScript, ONNX Runtime fp32 and int8,
beside the torchvision-assembled peer (retinanet/peer.py) in the same run, interleaved.
Targets: ORT fp32 <= 25 ms and >= 8x the peer; int8 <= 0.7x fp32; eager >= 4x the peer.

Accuracy (--checkpoint, a model trained on raccoon): COCO AP / AP50 (pycocotools) on
raccoon's 40 test images for eager, ORT fp32 and ORT int8 (calibrated on the 160 train
images, never on test).

    .venv/bin/python bench/inference.py [--repeats 30] [--checkpoint runs/train/raccoon/best.pt]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from retinanet.api import Detector
from retinanet.benchmark import benchmark, format_rows, machine_line
from retinanet.config import BenchConfig, preset
from retinanet.model import build_model

DATASETS = ROOT.parent / "shared" / "datasets"
PHOTO = DATASETS / "coco128" / "train2017" / "000000000009.jpg"
TARGET_MS, TARGET_VS_PEER, TARGET_INT8_RATIO, TARGET_EAGER_VS_PEER = 25.0, 8.0, 0.7, 4.0


def speed(repeats: int, threads: int, calibration: list[Path]) -> str:
    cfg = BenchConfig(sizes=(320,), batch=1, num_classes=80, repeats=repeats, threads=threads)
    rows = benchmark(
        lambda size: build_model(preset("default", num_classes=80, input_size=size)),
        cfg,
        ("eager", "torchscript", "onnx", "int8"),
        peer=True,
        image_path=str(PHOTO),
        calibration=calibration,
    )
    by = {r["runtime"]: r for r in rows}
    fp32, int8, eager = by["onnx fp32"], by["onnx int8"], by["eager"]
    checks = [
        f"ONNX Runtime fp32 {fp32['ms']:.1f} ms (target <= {TARGET_MS:.0f}): {'met' if fp32['ms'] <= TARGET_MS else 'NOT met'}",
        f"ONNX Runtime fp32 vs peer {fp32['vs_peer']:.1f}x (target >= {TARGET_VS_PEER:.0f}x): {'met' if fp32['vs_peer'] >= TARGET_VS_PEER else 'NOT met'}",
        f"int8 / fp32 time {int8['ms'] / fp32['ms']:.2f} (target <= {TARGET_INT8_RATIO}): {'met' if int8['ms'] / fp32['ms'] <= TARGET_INT8_RATIO else 'NOT met'}",
        f"eager vs peer {eager['vs_peer']:.1f}x (target >= {TARGET_EAGER_VS_PEER:.0f}x): {'met' if eager['vs_peer'] >= TARGET_EAGER_VS_PEER else 'NOT met'}",
    ]
    return format_rows(rows, 1) + "\n\n" + "\n".join(f"- {c}" for c in checks)


def accuracy(checkpoint: Path, threads: int) -> str:
    from retinanet.checkpoint import model_from_checkpoint
    from retinanet.data.spec import load_dataset
    from retinanet.evaluation import score_detections
    from retinanet.config import ExportConfig, QuantizeConfig
    from retinanet.export import export_onnx, quantize_int8
    from retinanet.postprocess import Detections

    raccoon = DATASETS / "raccoon"
    test = load_dataset(raccoon, "test", progress=False)
    train = load_dataset(raccoon, "train", progress=False)
    model = model_from_checkpoint(checkpoint)
    # Evaluation keeps every candidate above a low threshold, as COCO AP wants.
    conf = 0.01
    lines = ["| runtime | AP | AP50 | AP75 |", "| --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "m.onnx", ExportConfig())
        int8 = quantize_int8(fp32, Path(tmp) / "m.int8.onnx", [r.image_path for r in train.records], QuantizeConfig(num_images=100))
        results = {}
        for name, source in (("eager PyTorch", model), ("ONNX Runtime fp32", fp32), ("ONNX Runtime int8", int8)):
            det = Detector(source, conf=conf, threads=threads)
            preds = det.predict([r.image_path for r in test.records])
            dets = [Detections(torch.from_numpy(p.boxes), torch.from_numpy(p.scores), torch.from_numpy(p.labels)) for p in preds]
            m = score_detections(test, dets, plots=False).metrics
            results[name] = m
            lines.append(f"| {name} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} |")
    drop = (results["ONNX Runtime fp32"]["AP50"] - results["ONNX Runtime int8"]["AP50"]) * 100
    lines.append(f"\nint8 AP50 drop vs fp32: {drop:.1f} points (target: within 1 point): {'met' if abs(drop) <= 1 else 'NOT met'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, help="raccoon-trained checkpoint for the int8 accuracy table")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line(args.threads)}\n")
    if not args.skip_speed:
        calibration = sorted((DATASETS / "coco128" / "train2017").glob("*.jpg"))
        print("### Speed (default preset, 80 classes, input size 320: the 4:3 photo runs at 320x256, batch 1, end to end)\n")
        print(speed(args.repeats, args.threads, calibration))
    if args.checkpoint:
        print(f"\n### int8 accuracy on raccoon test ({args.checkpoint})\n")
        print(accuracy(args.checkpoint, args.threads))


if __name__ == "__main__":
    main()
