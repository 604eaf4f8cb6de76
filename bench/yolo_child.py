"""Runs inside the Ultralytics peer environment that bench/yolo_peer.py builds (never in
.venv, never imported by the package): builds a nano YOLO from its model yaml (random
weights; nothing is downloaded), exports it to ONNX with NMS inside, or trains it and
times its epochs. Prints one JSON line.

    python yolo_child.py export yolo11n OUT_DIR 320 CONF
    python yolo_child.py train yolo11n OUT_DIR 320 DATA_YAML EPOCHS BATCH THREADS
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")  # no update checks, no telemetry; this machine reaches PyPI only


def export(name: str, out: Path, size: int, conf: float) -> dict:
    from ultralytics import YOLO

    from ultralytics.utils.torch_utils import get_flops

    model = YOLO(f"{name}.yaml")
    params = sum(p.numel() for p in model.model.parameters())
    gflops = get_flops(model.model, imgsz=size)  # Ultralytics' count at the size x size square
    # nms=True puts YOLO11's NMS in the graph, at the same score threshold as ours is timed
    # at; YOLO26 is end to end (one box per object) without it, filtered by the timer.
    kwargs = {} if name.startswith("yolo26") else {"nms": True, "conf": conf}
    path = model.export(format="onnx", imgsz=size, dynamic=True, batch=1, simplify=True, device="cpu", **kwargs)
    target = out / f"{name}.onnx"
    Path(path).replace(target)
    return {"model": name, "onnx": str(target), "params_m": params / 1e6, "gflops": gflops}


def train(name: str, out: Path, size: int, data: str, epochs: int, batch: int, threads: int) -> dict:
    import torch
    from ultralytics import YOLO

    model = YOLO(f"{name}.yaml")
    marks: dict[str, list[float]] = {"start": [], "end": []}
    count = {"images": 0}

    def on_train_start(trainer) -> None:
        # Ultralytics sets torch to cpu_count - 1 threads (1 on 2 cores); ours trains on `threads`.
        torch.set_num_threads(threads)

    def on_start(trainer) -> None:
        count["images"] = len(trainer.train_loader.dataset)
        count["threads"] = torch.get_num_threads()
        marks["start"].append(time.perf_counter())

    def on_end(trainer) -> None:
        marks["end"].append(time.perf_counter())

    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_epoch_start", on_start)
    model.add_callback("on_train_epoch_end", on_end)
    model.train(
        data=data, epochs=epochs, imgsz=size, batch=batch, workers=0, device="cpu", plots=False, val=False,
        project=str(out), name=name, exist_ok=True, pretrained=False, amp=False, verbose=False,
    )
    seconds = [e - s for s, e in zip(marks["start"], marks["end"])]
    return {"model": name, "images": count["images"], "threads": count["threads"], "epoch_seconds": seconds}


def main() -> None:
    command, name, out, size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    if command == "export":
        result = export(name, out, size, float(sys.argv[5]))
    elif command == "train":
        threads = int(sys.argv[8])
        os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch loads: Ultralytics would set 1
        result = train(name, out, size, sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), threads)
    else:
        raise SystemExit(f"unknown command {command!r}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
