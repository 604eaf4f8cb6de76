"""Fine-tuning from a trained detector (train.weights / --weights): a 4-class detector of
the built-in shapes starts a 1-class raccoon model. Every layer but the class predictor's
final conv comes from the checkpoint, that conv starts afresh with the prior bias, the
checkpoint's anchors are kept (measured, not refitted), and a bad file is one line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from retinanet.checkpoint import load_checkpoint
from retinanet.cli import main
from retinanet.config import RunConfig, preset
from retinanet.data import load_dataset
from retinanet.data.dataset import DetectionDataset
from retinanet.data.synthetic import load_synthetic
from retinanet.engine import Trainer

# A small model at 96 px: a step takes a fraction of a second on a shared 2-core machine.
SMALL = {"input_size": 96, "fpn.channels": 32, "head.depth": 1}
SMALL_ARGS = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMALL.items()]
ANCHORS = {"sizes": (20.0, 40.0, 80.0, 160.0, 320.0), "scales": (1.0, 1.5), "ratios": (0.5, 1.0, 2.0)}


def subset(ds: DetectionDataset, start: int, stop: int) -> DetectionDataset:
    return DetectionDataset(ds.records[start:stop], ds.class_names, ds.category_ids, ds.root, ds.format)


def tiny_cfg(out: Path, name: str, **train) -> RunConfig:
    cfg = RunConfig(model=preset("default", **SMALL))
    cfg.data.workers = 0
    cfg.train.epochs, cfg.train.batch_size, cfg.train.warmup_epochs, cfg.train.ema_tau = 1, 4, 0.5, 4
    cfg.train.out, cfg.train.name = str(out), name
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def raccoon_parts(raccoon: Path, n_train: int = 4, n_val: int = 2) -> tuple[DetectionDataset, DetectionDataset]:
    """The first photos of raccoon's train split by file name: n_train to train on, then n_val to validate on."""
    ds = load_dataset(raccoon, "train", check="header", progress=False)
    ds = DetectionDataset(sorted(ds.records, key=lambda r: r.image_path.name), ds.class_names, ds.category_ids, ds.root, ds.format)
    return subset(ds, 0, n_train), subset(ds, n_train, n_train + n_val)


def write_spec(folder: Path, raccoon: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """A COCO spec over raccoon photos (read in place) with a train and a val split."""
    folder.mkdir(parents=True, exist_ok=True)
    train, val = raccoon_parts(raccoon, n_train, n_val)
    splits = {}
    for name, part in (("train", train), ("val", val)):
        images, anns = [], []
        for i, r in enumerate(part.records, 1):
            images.append({"id": i, "file_name": r.image_path.name, "width": r.width, "height": r.height})
            for (x1, y1, x2, y2), label in zip(r.boxes.tolist(), r.labels.tolist()):
                box = [x1, y1, x2 - x1, y2 - y1]
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": label + 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        (folder / f"{name}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "raccoon"}]}))
        splits[name] = {"annotations": str(folder / f"{name}.json"), "images": str(part.records[0].image_path.parent)}
    (folder / "data.yaml").write_text(yaml.safe_dump({"format": "coco", **splits}))
    return folder / "data.yaml"


@pytest.fixture(scope="module")
def shapes_detector(tmp_path_factory) -> Path:
    """best.pt of a 4-class detector (the built-in shapes) with anchors of its own."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("source")
    cfg = tiny_cfg(out, "shapes")
    for k, v in ANCHORS.items():
        setattr(cfg.model.anchors, k, v)
    cfg.model.anchors.fit = False
    train, val = load_synthetic("train", progress=False), load_synthetic("val", progress=False)
    trainer = Trainer(cfg, progress=False, train_data=subset(train, 0, 4), val_data=subset(val, 0, 2))
    trainer.fit()
    trainer.close()
    return out / "shapes" / "best.pt"


def _anchors(model_cfg: dict) -> dict:
    return {k: tuple(model_cfg["anchors"][k]) for k in ANCHORS}


def test_a_4_class_detector_starts_a_1_class_model(shapes_detector, raccoon, tmp_path):
    source = load_checkpoint(shapes_detector)
    assert len(source["class_names"]) == 4 and _anchors(source["config"]["model"]) == ANCHORS
    train, val = raccoon_parts(raccoon)
    cfg = tiny_cfg(tmp_path, "ft", weights=str(shapes_detector))
    assert cfg.model.anchors.fit and cfg.model.anchors.sizes != ANCHORS["sizes"]  # the run alone would use (and fit) its own
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)

    model_cfg = trainer.cfg.model
    assert {k: tuple(getattr(model_cfg.anchors, k)) for k in ANCHORS} == ANCHORS and not model_cfg.anchors.fit
    assert any(f"anchors kept from {shapes_detector}" in line and "not refitted" in line for line in trainer.coverage.lines)
    assert trainer.model.num_classes == 1 and trainer.model.class_names == ["raccoon"]

    own = trainer.model.state_dict()
    # Only the final class conv depends on the class count; the lite head's depthwise conv before it is loaded.
    predictor = [k for k in own if k.startswith("head.cls_pred.") and own[k].shape != source["model"][k].shape]
    assert predictor == ["head.cls_pred.1.weight", "head.cls_pred.1.bias"]
    torch.testing.assert_close(own["head.cls_pred.0.weight"], source["model"]["head.cls_pred.0.weight"])
    for name, tensor in own.items():
        if name not in predictor:
            torch.testing.assert_close(tensor, source["model"][name], msg=name)
    for name, tensor in trainer.ema.module.state_dict().items():  # the EMA starts from them too
        if name not in predictor:
            torch.testing.assert_close(tensor, source["model"][name], msg=f"ema {name}")
    bias = trainer.model.head.cls_pred[-1].bias
    assert bias.shape == (6,)  # 1 class x 2 scales x 3 ratios
    torch.testing.assert_close(bias.detach(), torch.full((6,), -math.log(99.0)))  # prior 0.01

    lines = "\n".join(trainer.start_lines)
    assert f"loaded {len(own) - len(predictor)} of {len(own)} tensors" in lines
    assert "class predictor re-initialised: 1 classes here, 4 in the checkpoint" in lines
    assert "skipped" not in lines


def test_same_class_count_keeps_the_class_predictor_and_other_shapes_are_skipped(shapes_detector, tmp_path):
    source = load_checkpoint(shapes_detector)
    train, val = load_synthetic("train", progress=False), load_synthetic("val", progress=False)
    cfg = tiny_cfg(tmp_path, "same", weights=str(shapes_detector))
    trainer = Trainer(cfg, progress=False, train_data=subset(train, 4, 8), val_data=subset(val, 0, 2))
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(tensor, source["model"][name], msg=name)
    assert "re-initialised" not in "\n".join(trainer.start_lines)

    cfg.model.fpn.channels = 48  # another pyramid width: those layers cannot load
    trainer = Trainer(cfg, progress=False, train_data=subset(train, 4, 8), val_data=subset(val, 0, 2))
    lines = "\n".join(trainer.start_lines)
    assert "skipped" in lines and "(32,) there, (48,) here" in lines
    assert "train with model.fpn.channels=32" in lines
    backbone = [k for k in trainer.model.state_dict() if k.startswith("backbone.")]
    torch.testing.assert_close(trainer.model.state_dict()[backbone[0]], source["model"][backbone[0]])


def test_weights_on_the_command_line(shapes_detector, raccoon, tmp_path, capsys):
    spec = write_spec(tmp_path / "data", raccoon)
    out = tmp_path / "runs"
    args = ["train", *SMALL_ARGS, "epochs=1", "batch=4", "data.workers=0", "train.warmup_epochs=0.5", f"train.out={out}"]
    assert main([*args, "--data", str(spec), "--weights", str(shapes_detector), "--name", "ft", "--no-progress", "--no-final"]) == 0
    text = capsys.readouterr().out
    assert f"fine-tuning from {shapes_detector} (4 classes" in text
    assert "class predictor re-initialised: 1 classes here, 4 in the checkpoint" in text
    assert f"anchors kept from {shapes_detector}" in text
    saved = load_checkpoint(out / "ft" / "last.pt")
    assert saved["config"]["train"]["weights"] == str(shapes_detector) and saved["step"] == 1
    assert _anchors(saved["config"]["model"]) == ANCHORS
    assert main(["train", "--resume", str(out / "ft"), "epochs=2", "--no-progress", "--no-final"]) == 0  # resumes without re-reading the source
    assert "fine-tuning from" not in capsys.readouterr().out
    assert load_checkpoint(out / "ft" / "last.pt")["step"] == 2


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["missing", "text", "code", "backbone"])
def test_a_bad_weights_file_is_one_line_naming_it(kind, raccoon, tmp_path, capsys):
    path, marker = tmp_path / "weights.pt", tmp_path / "payload_ran"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "code":
        torch.save({"format": "retinanet-mobilenet/1", "model": _Payload(marker)}, path)
    elif kind == "backbone":
        torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, path)
    spec = write_spec(tmp_path / "data", raccoon)
    argv = ["train", *SMALL_ARGS, f"train.out={tmp_path}", "--data", str(spec), "--weights", str(path), "--name", "bad", "--no-progress"]
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retinanet train: error: train.weights: ") and str(path) in lines[0], lines
    expected = {
        "missing": "not found",
        "text": "not a readable checkpoint",
        "code": "refused unread",
        "backbone": "backbone weights go in model.backbone.weights",
    }[kind]
    assert expected in lines[0]
    assert not marker.exists()  # the pickle's code never ran
