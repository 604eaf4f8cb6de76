"""Backbone pretraining: crops from coco128 objects, a few real training steps, checkpoints
that reload, and a detector that starts from them."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retinanet.backbones import build_classifier, imagenet_state_dict
from retinanet.cli import main
from retinanet.config import preset
from retinanet.data import DetectionDataset, Record, load_dataset
from retinanet.data.images import ImageError
from retinanet.model import build_model
from retinanet.pretrain import (
    FORMAT,
    CropConfig,
    NonFiniteLossError,
    PretrainConfig,
    build_optimizer,
    build_pretrain_model,
    build_scheduler,
    eval_transform,
    load_image_folder,
    load_pretrain_checkpoint,
    lr_factor,
    make_crops,
    param_groups,
    pretrain,
    split_indices,
    train_one_epoch,
)

CLASSES = ["person", "elephant", "teddy bear"]  # coco128 classes with 15+ boxes of at least 32 px
MAX_PER_CLASS = 12
SMALL = dict(img_size=64, batch_size=8, workers=0, val_split=0.2, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def crops(coco128, tmp_path_factory):
    out = tmp_path_factory.mktemp("crops") / "coco128_crops"
    dataset = load_dataset(coco128, "train", check="header", progress=False)  # coco128 has no splits: all 128
    counts = make_crops(dataset, out, CropConfig(max_per_class=MAX_PER_CLASS), classes=CLASSES, progress=False)
    return out, counts


@pytest.fixture(scope="module")
def v2_run(crops, tmp_path_factory):
    """MobileNetV2 from ImageNet, 2 epochs on the crops: the model before, the result after."""
    data_dir, _ = crops
    torch.manual_seed(0)
    cfg = PretrainConfig(backbone="mobilenet_v2", weights="imagenet", epochs=2, lr=0.02, **SMALL)
    model = build_pretrain_model(cfg.backbone, cfg.width, cfg.weights, sorted(CLASSES))
    before = copy.deepcopy(model)
    out = tmp_path_factory.mktemp("v2_run")
    result = pretrain(data_dir, cfg, out, model=model, progress=False)
    return cfg, before, result


def fixed_batch(data_dir, img_size=64, n=24):
    """The same images every call, with the deterministic eval transform."""
    data = load_image_folder(data_dir, img_size, val_split=0.0)
    full = copy.copy(data.train)
    full.transform = eval_transform(img_size)
    idx = np.linspace(0, len(full) - 1, n).round().astype(int)
    images, targets = zip(*(full[i] for i in idx))
    return torch.stack(images), torch.tensor(targets)


# ----------------------------------------------------------------------------- crops


def test_crops_follow_the_annotations(coco128, crops):
    out, counts = crops
    d = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    name_of = {c["id"]: c["name"] for c in d["categories"]}
    usable = {c: 0 for c in CLASSES}
    for a in d["annotations"]:
        name = name_of[a["category_id"]]
        if name in usable and not a["iscrowd"] and min(a["bbox"][2:]) >= 32:
            usable[name] += 1
    assert usable == {"person": 142, "elephant": 15, "teddy bear": 19}  # all above the cap of 12
    assert counts == {c: min(n, MAX_PER_CLASS) for c, n in usable.items()}
    for c, n in counts.items():
        files = list((out / c).glob("*.jpg"))
        assert len(files) == n
        assert all(min(Image.open(f).size) >= 32 for f in files)
    assert json.loads((out / "crops.json").read_text())["counts"] == counts


def test_cli_makes_the_same_crops(coco128, crops, tmp_path):
    out, counts = crops
    argv = ["pretrain", "--from-detection", str(coco128), "--crops-out", str(tmp_path / "c"), "--classes", ",".join(CLASSES),
            "--max-per-class", str(MAX_PER_CLASS), "--crops-only"]  # fmt: skip
    assert main(argv) == 0
    for c in CLASSES:
        ours = sorted(f.name for f in (tmp_path / "c" / c).glob("*.jpg"))
        assert ours == sorted(f.name for f in (out / c).glob("*.jpg")) and len(ours) == counts[c]
    assert main(argv) == 0  # an existing crop folder (it has crops.json) is reused, not rewritten
    assert main(["pretrain", str(out), "--from-detection", str(coco128)]) == 1  # DATA_DIR and SOURCE


def _scene(path):
    img = np.full((80, 100, 3), 128, np.uint8)  # (H, W, 3) grey
    img[20:60, 10:50] = (255, 0, 0)  # red object, box x 10..50, y 20..60
    img[0:30, 70:100] = (0, 0, 255)  # blue object touching the top-right corner
    Image.fromarray(img).save(path)
    return path


def test_crop_pixels_margin_clipping_and_skips(tmp_path):
    path = _scene(tmp_path / "scene.png")
    rec = Record(
        path, 7, 100, 80,
        boxes=[[10, 20, 50, 60], [70, 0, 100, 30], [0, 0, 5, 5], [0, 60, 100, 80]],
        labels=[0, 1, 0, 1],
        ignore=[False, False, False, True],  # tiny box skipped by min_size, crowd box skipped
    )  # fmt: skip
    ds = DetectionDataset([rec], ["red thing", "blue/thing"])
    counts = make_crops(ds, tmp_path / "tight", CropConfig(min_size=8, margin=0.0, min_per_class=1), progress=False)
    assert counts == {"red thing": 1, "blue/thing": 1}
    red = np.asarray(Image.open(tmp_path / "tight" / "red thing" / "7_0.jpg"), dtype=float)
    assert red.shape == (40, 40, 3)
    assert np.abs(red.mean((0, 1)) - (255, 0, 0)).max() < 8  # only the object's pixels (JPEG-close)
    assert (tmp_path / "tight" / "blue_thing" / "7_1.jpg").is_file()  # '/' cannot be in a folder name

    make_crops(ds, tmp_path / "wide", CropConfig(min_size=8, margin=0.25, min_per_class=1), progress=False)
    # red: 40 px + 10 px each side = 60 x 60; blue: x 62.5..107.5 -> 62..100, y -7.5..37.5 -> 0..38
    assert Image.open(tmp_path / "wide" / "red thing" / "7_0.jpg").size == (60, 60)
    assert Image.open(tmp_path / "wide" / "blue_thing" / "7_1.jpg").size == (38, 38)

    with pytest.raises(ValueError, match="not empty"):
        make_crops(ds, tmp_path / "tight", CropConfig(min_size=8, min_per_class=1), progress=False)
    with pytest.raises(ValueError, match="green"):
        make_crops(ds, tmp_path / "x", CropConfig(min_per_class=1), classes=["green"], progress=False)
    with pytest.raises(ValueError, match="a classifier needs 2"):
        make_crops(ds, tmp_path / "y", CropConfig(min_size=35, min_per_class=1), progress=False)  # blue is 30 px


# ----------------------------------------------------------------------------- folders


def test_split_is_stratified_and_seeded():
    targets = [0, 0, 0, 0, 1, 1, 2]
    train, val = split_indices(targets, 0.25, seed=3)
    # class 0: round(4 * 0.25) = 1; class 1: round(0.5) = 0 raised to 1; class 2 has one image: none
    assert sorted(targets[i] for i in val) == [0, 1]
    assert sorted(train + val) == list(range(7))
    assert split_indices(targets, 0.25, seed=3) == (train, val)
    assert split_indices(targets, 0.0, seed=3) == (list(range(7)), [])


def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(path)


def test_train_val_layout_keeps_train_label_numbers(tmp_path):
    for c in ("ant", "bee", "cat"):
        for i in range(2):
            _png(tmp_path / "train" / c / f"{i}.png")
    _png(tmp_path / "val" / "cat" / "0.png")  # val lacks ant and bee
    data = load_image_folder(tmp_path, img_size=32)
    assert data.layout == "train/val" and data.class_names == ["ant", "bee", "cat"]
    assert len(data.train) == 6 and [t for _, t in data.val] == [2]  # cat keeps label 2
    assert data.val[0][0].shape == (3, 32, 32)
    _png(tmp_path / "val" / "dog" / "0.png")
    with pytest.raises(ValueError, match="dog"):
        load_image_folder(tmp_path, img_size=32)


def _layout(tmp_path, kind):
    root = tmp_path / kind
    root.mkdir()
    if kind == "images_at_root":
        _png(root / "a.png")
    elif kind == "one_class":
        _png(root / "cat" / "a.png")
        _png(root / "cat" / "b.png")
    elif kind == "empty_class":
        _png(root / "cat" / "a.png")
        (root / "dog").mkdir()
        (root / "dog" / "notes.txt").write_text("no images here")
    elif kind == "file":
        root.rmdir()
        root.write_text("not a folder")
    elif kind == "missing":
        root.rmdir()
    return root


@pytest.mark.parametrize(
    "kind,error,words",
    [
        ("missing", FileNotFoundError, "not found"),
        ("file", ValueError, "is a file"),
        ("empty", ValueError, "no class subfolders"),
        ("images_at_root", ValueError, "holds 1 images but no class subfolders"),
        ("one_class", ValueError, "at least 2"),
        ("empty_class", ValueError, "dog"),
    ],
)
def test_bad_data_dir_is_a_clear_error(tmp_path, kind, error, words):
    root = _layout(tmp_path, kind)
    with pytest.raises(error, match=words) as e:
        load_image_folder(root, img_size=64)
    assert str(root) in str(e.value)


def test_cli_bad_data_dir_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert "empty" in err and "no class subfolders" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pth").exists()


def test_too_few_images_for_a_batch(tmp_path):
    for c in ("ant", "bee"):
        for i in range(2):
            _png(tmp_path / c / f"{i}.png")
    with pytest.raises(ValueError, match="fewer than one batch"):
        pretrain(tmp_path, PretrainConfig(batch_size=8, val_split=0.0, weights="none", workers=0), tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------- optimisation parts


def test_lr_schedule_hand_computed():
    # 4 warmup steps of 12: 1/4, 2/4, 3/4, 4/4, then cosine over the remaining 8 steps.
    assert [lr_factor(s, 12, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 12, 4) == 1.0
    assert lr_factor(8, 12, 4) == pytest.approx(0.5)  # halfway: (1 + cos(pi / 2)) / 2
    assert lr_factor(6, 12, 4) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(12, 12, 4, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(8, 12, 4, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(0, 10, 0) == 1.0  # no warmup: start at the peak

    model = torch.nn.Linear(2, 2)
    cfg = PretrainConfig(lr=0.4, epochs=3, warmup_epochs=1.0, final_lr_ratio=0.0)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=2)  # 6 steps, 2 of warmup
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.4, 0.4, 0.4 * (1 + math.cos(math.pi / 4)) / 2, 0.2, 0.4 * (1 + math.cos(3 * math.pi / 4)) / 2])


def test_no_weight_decay_for_norms_and_biases():
    model = build_classifier("mobilenet_v1", 0.25, num_classes=3)
    decay, no_decay = param_groups(model, 4e-5)
    n_bn = sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    n_conv = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert len(no_decay["params"]) == 2 * n_bn + 1  # BN scale and shift, Linear bias (convs have none)
    assert len(decay["params"]) == n_conv + 1  # conv kernels and the Linear weight
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (4e-5, 0.0)
    opt = build_optimizer(model, PretrainConfig(optimizer="adamw"))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0] and opt.param_groups[0]["lr"] == 5e-4


def test_default_lr_scales_with_batch_and_start():
    assert PretrainConfig().resolved_lr() == 0.01  # SGD from ImageNet at the reference batch of 64
    assert PretrainConfig(batch_size=32).resolved_lr() == 0.005
    assert PretrainConfig(weights="none", batch_size=128).resolved_lr() == 0.04
    assert PretrainConfig(optimizer="adamw", weights="none", batch_size=16).resolved_lr() == 2.5e-4
    assert PretrainConfig(lr=0.3, batch_size=16).resolved_lr() == 0.3  # a given lr is taken as is


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="lr must be a positive number.*image size must be at least 32"):
        PretrainConfig(lr=-1.0, img_size=16).validate()
    with pytest.raises(ValueError, match="width 1.0 only"):
        build_pretrain_model("mobilenet_v2", 0.5, "imagenet", ["a", "b"])
    with pytest.raises(ValueError, match="no ImageNet weights for mobilenet_v1"):
        build_pretrain_model("mobilenet_v1", 1.0, "imagenet", ["a", "b"])


# ----------------------------------------------------------------------------- training


def test_imagenet_start_keeps_features_and_makes_a_new_head():
    model = build_pretrain_model("mobilenet_v2", 1.0, "imagenet", ["a", "b", "c"])
    ref = imagenet_state_dict("mobilenet_v2")
    state = model.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in state if k.startswith("features."))
    assert state["classifier.1.weight"].shape == (3, 1280)


def test_pretraining_lowers_the_loss_and_the_detector_loads_it(crops, v2_run):
    data_dir, _ = crops
    cfg, before, result = v2_run
    images, targets = fixed_batch(data_dir)
    with torch.no_grad():
        loss_before = F.cross_entropy(before.eval()(images), targets).item()
        loss_after = F.cross_entropy(result.model.eval()(images), targets).item()
    assert loss_before > 0.9 * math.log(3)  # a new 3-class head starts near chance
    assert loss_after < 0.7 * loss_before

    # Log, plot, checkpoints.
    rows = list(csv.DictReader(open(result.out_dir / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r["val_top1"]) <= 1 and math.isfinite(float(r["train_loss"])) for r in rows)
    assert Image.open(result.out_dir / "results.png").format == "PNG"
    last = torch.load(result.last_path, map_location="cpu", weights_only=True)
    best = load_pretrain_checkpoint(result.best_path)
    assert last["format"] == FORMAT and last["epoch"] == 2 and last["backbone"] == "mobilenet_v2"
    assert last["class_names"] == sorted(CLASSES) and last["width"] == 1.0
    top1 = [float(r["val_top1"]) for r in rows]
    assert best["epoch"] == 1 + top1.index(max(top1))  # the first epoch with the best val top-1

    # The saved classifier reproduces the trained model exactly.
    clf = build_classifier("mobilenet_v2", 1.0, num_classes=3)
    clf.load_state_dict(last["classifier_state"])
    torch.testing.assert_close(clf.eval()(images), result.model(images), rtol=1e-4, atol=1e-4)

    # The detector starts from best.pth: its backbone holds the classifier's features...
    clf.load_state_dict(best["classifier_state"])
    weights = {"backbone.weights": str(result.best_path)}
    det = build_model(preset("default", num_classes=5, **weights, **{"backbone.freeze_bn": False})).eval()
    feats = clf.features.state_dict()
    assert len(det.backbone.state_dict()) == len(feats)
    for (k1, v1), (k2, v2) in zip(det.backbone.state_dict().items(), feats.items()):
        assert torch.equal(v1, v2), (k1, k2)
    # ...and with the default frozen batch norm (folded into the convs) it computes the same C5.
    folded = build_model(preset("default", num_classes=5, **weights)).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.backbone.modules())
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        c5 = clf.eval().features(x)
        torch.testing.assert_close(det.backbone(x)[-1], c5, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(folded.backbone(x)[-1], c5, rtol=1e-3, atol=1e-3)


def test_continuing_from_own_file_keeps_head_only_for_the_same_classes(v2_run):
    _, _, result = v2_run
    saved = load_pretrain_checkpoint(result.last_path)["classifier_state"]
    same = build_pretrain_model("mobilenet_v2", 1.0, str(result.last_path), sorted(CLASSES)).state_dict()
    assert all(torch.equal(same[k], saved[k]) for k in saved)
    other = build_pretrain_model("mobilenet_v2", 1.0, str(result.last_path), ["a", "b", "c"]).state_dict()
    assert torch.equal(other["features.3.conv.0.0.weight"], saved["features.3.conv.0.0.weight"])
    assert not torch.equal(other["classifier.1.weight"], saved["classifier.1.weight"])  # new head
    with pytest.raises(RuntimeError, match="does not hold mobilenet_v3_small"):
        build_pretrain_model("mobilenet_v3_small", 1.0, str(result.last_path), ["a", "b"])


def test_mobilenet_v1_half_width_pretrains_from_the_cli(crops, tmp_path, capsys):
    data_dir, _ = crops
    out = tmp_path / "v1"
    argv = ["pretrain", str(data_dir), "--backbone", "mobilenet_v1", "--width", "0.5", "--weights", "none",
            "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    state = load_pretrain_checkpoint(out / "best.pth")
    assert (state["backbone"], state["width"], state["epoch"]) == ("mobilenet_v1", 0.5, 1)
    assert all(math.isfinite(v) for v in state["metrics"].values())
    assert main(argv) == 1  # the same --out again without --resume is refused
    assert main(["pretrain", str(data_dir), "--out", str(out), "--resume", "--lr", "0.5"]) == 1
    assert "cannot change lr 0.5 (saved: None)" in capsys.readouterr().err

    det = build_model(preset("v1", num_classes=2, **{"backbone.width": 0.5, "backbone.weights": str(out / "best.pth")}))
    assert det.backbone.out_channels == (128, 256, 512)
    clf = build_classifier("mobilenet_v1", 0.5, num_classes=3)
    clf.load_state_dict(state["classifier_state"])
    for v1, v2 in zip(det.backbone.state_dict().values(), clf.features.state_dict().values()):
        assert torch.equal(v1, v2)

    # From scratch, the training step (AdamW, schedule, clipping) makes V1 fit a fixed batch.
    images, targets = fixed_batch(data_dir, n=16)
    cfg = PretrainConfig(optimizer="adamw", lr=3e-3, epochs=1, warmup_epochs=0.0, label_smoothing=0.0)
    opt = build_optimizer(clf, cfg)
    steps = [(images, targets)] * 8
    with torch.no_grad():
        loss_before = F.cross_entropy(clf.train()(images), targets).item()
    train_one_epoch(clf, steps, opt, build_scheduler(opt, cfg, len(steps)), torch.nn.CrossEntropyLoss(),
                    torch.device("cpu"), cfg.clip_grad, progress=False)  # fmt: skip
    with torch.no_grad():
        loss_after = F.cross_entropy(clf.train()(images), targets).item()
    assert loss_after < 0.5 * loss_before


def test_resume_after_a_kill_gives_the_uninterrupted_result(crops, tmp_path):
    data_dir, _ = crops
    cfg = PretrainConfig(backbone="mobilenet_v3_small", weights="none", epochs=2, **SMALL)
    model = build_pretrain_model(cfg.backbone, cfg.width, cfg.weights, sorted(CLASSES))
    killed_model = copy.deepcopy(model)  # the same initial weights
    straight = pretrain(data_dir, cfg, tmp_path / "straight", model=model, progress=False)

    # The same run killed at the second step of epoch 2, after last.pth of epoch 1 was written.
    run_dir = tmp_path / "killed"
    calls = []

    def kill(module, inputs):
        if (run_dir / "last.pth").exists():
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt

    killed_model.register_forward_pre_hook(kill)
    with pytest.raises(KeyboardInterrupt):
        pretrain(data_dir, cfg, run_dir, model=killed_model, progress=False)
    assert load_pretrain_checkpoint(run_dir / "last.pth")["epoch"] == 1

    resumed = pretrain(data_dir, cfg, run_dir, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    a = load_pretrain_checkpoint(straight.last_path)
    b = load_pretrain_checkpoint(resumed.last_path)
    untimed = [{k: v for k, v in row.items() if k != "seconds"} for row in (a["history"][0], b["history"][0])]
    assert b["epoch"] == 2 and untimed[0] == untimed[1]  # same first epoch, whatever it took
    # Same seed, per-epoch randomness, restored optimiser and schedule: the same weights.
    for k, v in a["classifier_state"].items():
        torch.testing.assert_close(b["classifier_state"][k], v, msg=k)
    assert [r["epoch"] for r in csv.DictReader(open(run_dir / "results.csv"))] == ["1", "2"]

    with pytest.raises(ValueError, match="cannot change lr"):
        pretrain(data_dir, dataclasses.replace(cfg, lr=0.5), run_dir, resume=True, progress=False)
    finished = pretrain(data_dir, cfg, run_dir, resume=True, progress=False)  # nothing left to do
    assert len(finished.history) == 2 and load_pretrain_checkpoint(run_dir / "last.pth")["epoch"] == 2


def test_non_finite_loss_stops_training(crops, tmp_path):
    data_dir, _ = crops
    cfg = PretrainConfig(backbone="mobilenet_v1", width=0.25, weights="none", epochs=1, **SMALL)
    model = build_pretrain_model(cfg.backbone, cfg.width, cfg.weights, sorted(CLASSES))
    with torch.no_grad():
        model.classifier[1].bias[0] = float("nan")  # e.g. a corrupt weights file
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 1/"):
        pretrain(data_dir, cfg, tmp_path / "nan", model=model, progress=False)
    assert not (tmp_path / "nan" / "last.pth").exists()


def test_broken_image_is_one_line_naming_the_file_even_from_a_worker(tmp_path):
    for c in ("ant", "bee"):
        for i in range(3):
            _png(tmp_path / "data" / c / f"{i}.png", value=60 * i)
    (tmp_path / "data" / "bee" / "3.jpg").write_bytes(b"not a jpeg")
    cfg = PretrainConfig(backbone="mobilenet_v1", width=0.25, weights="none", epochs=1, batch_size=7,
                         img_size=32, val_split=0.0, workers=1)  # fmt: skip
    with pytest.raises(ImageError) as e:
        pretrain(tmp_path / "data", cfg, tmp_path / "out", progress=False)
    assert str(e.value).startswith(str(tmp_path / "data" / "bee" / "3.jpg")) and "\n" not in str(e.value)
