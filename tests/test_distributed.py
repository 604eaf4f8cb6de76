"""torchrun: 2 processes (gloo on this CPU) reach the same weights as one process with
the same global batch."""

import json
import math
import os
import subprocess
import sys

import torch
import yaml

from retinanet.checkpoint import load_checkpoint
from retinanet.cli import main
from retinanet.data.synthetic import synthetic_root, load_synthetic


def write_subset(tmp_path, n=8):
    load_synthetic("train", progress=False)  # renders the cache on first use
    root = synthetic_root()
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    keep = {im["id"] for im in coco["images"][:n]}
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    (tmp_path / "subset.json").write_text(json.dumps(coco))
    spec = {"format": "coco", "root": str(root), "train": {"annotations": str(tmp_path / "subset.json"), "images": "images"}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "data.yaml"


# No trainable batch norm anywhere (frozen backbone BN, plain FPN, GroupNorm heads): with
# per-process batch norm, 2 x 2 images would legitimately differ from 1 x 4.
COMMON = [
    "model.input_size=128",
    "model.fpn.lite=false",
    "model.fpn.channels=64",
    "model.head.norm=gn",
    "train.epochs=1",
    "train.warmup_epochs=0.5",
    "data.workers=0",
    "data.val_split=none",
]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    spec = write_subset(tmp_path)
    out = tmp_path / "runs"
    assert main(["train", "--data", str(spec), *COMMON, "train.batch_size=4", f"train.out={out}", "--name", "single", "--no-progress", "--no-final"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "retinanet.cli", "train", "--data", str(spec), *COMMON, "train.batch_size=2",
        f"train.out={out}", "--name", "ddp", "--no-progress", "--no-final",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = load_checkpoint(out / "single" / "last.pt")
    ddp = load_checkpoint(out / "ddp" / "last.pt")
    assert single["step"] == ddp["step"] == 2
    for name, a in single["model"].items():
        b = ddp["model"][name]
        if name == "criterion.fg_running":  # each process keeps the global count / world size
            b = b * 2
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name} differs between 1 and 2 processes")
    # Training did move the weights: the class bias left its prior-probability initial value.
    prior_bias = -math.log((1 - 0.01) / 0.01)
    assert (ddp["model"]["head.cls_pred.1.bias"] - prior_bias).abs().max() > 1e-4
