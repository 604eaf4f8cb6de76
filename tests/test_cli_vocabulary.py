"""One flag vocabulary across commands: --batch, --out, --imgsz, --device, --classes,
--num-classes, --weights; the old spellings as hidden aliases that say what replaced them;
Ultralytics' key spellings in key=value overrides; the closest key for a misspelt one; and
every command writing a new numbered run folder instead of over an earlier one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading

import pytest

from retinanet.checkpoint import save_checkpoint
from retinanet.cli import build_parser, main
from retinanet.cli.train import user_overrides
from retinanet.config import ConfigError, PretrainConfig, RunConfig, TrainConfig, apply_overrides, preset, to_dict
from retinanet.config.io import expand_aliases
from retinanet.model import build_model
from retinanet.run_folder import next_run_dir
from retinanet.train import run_config

# (command line before the flag, new flag, old spelling, values, argparse dest)
SPELLINGS = [
    (["train"], "--batch", "--batch-size", ["4"], "batch"),
    (["eval", "--model", "m.pt", "--data", "d"], "--batch", "--batch-size", ["4"], "batch"),
    (["pretrain"], "--batch", "--batch-size", ["16"], "batch_size"),
    (["predict", "a.jpg"], "--out", "--output", ["somewhere"], "out"),
    (["export", "m.pt"], "--out", "--output", ["m.onnx"], "out"),
    (["export", "m.pt"], "--imgsz", "--size", ["256"], "imgsz"),
    (["anchors", "data"], "--imgsz", "--input-size", ["256"], "imgsz"),
    (["benchmark"], "--imgsz", "--sizes", ["64", "96"], "imgsz"),
    (["pretrain"], "--imgsz", "--img-size", ["64"], "img_size"),
    (["benchmark"], "--num-classes", "--classes", ["3"], "num_classes"),
]
OLD = {old for *_, old, _, _ in SPELLINGS} - {"--classes"}  # --classes lives on, meaning class names


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("before, new, old, values, dest", SPELLINGS, ids=[f"{s[0][0]}{s[2]}" for s in SPELLINGS])
def test_old_spelling_parses_to_the_new_flag_and_says_so(before, new, old, values, dest, capsys):
    parser = build_parser()
    by_new = parser.parse_args([*before, new, *values])
    assert capsys.readouterr().err == ""
    by_old = parser.parse_args([*before, old, *values])
    assert getattr(by_old, dest) == getattr(by_new, dest) and getattr(by_new, dest) is not None
    note = capsys.readouterr().err.strip()
    assert note == f"retinanet: {old} is deprecated; use {new}"
    helptext = _subparsers(parser)[before[0]].format_help()
    assert new in helptext and f"{old} " not in helptext and f"{old}\n" not in helptext


def test_every_command_speaks_one_vocabulary():
    for name, sub in _subparsers(build_parser()).items():
        visible = {o: a for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
        assert not OLD & set(visible), (name, OLD & set(visible))
        if "--classes" in visible:  # keep only these classes, by name: never a count; one value per flag
            assert visible["--classes"].nargs is None and isinstance(visible["--classes"], argparse._ExtendAction), name
        if "--device" in visible:  # auto everywhere: CUDA when present, else the CPU
            default = visible["--device"].default
            configured = {"train": TrainConfig.device, "pretrain": PretrainConfig.device}.get(name)
            assert default == "auto" or (default is None and configured == "auto"), name
    subs = _subparsers(build_parser())
    for name in ("train", "eval", "predict", "pretrain"):
        assert "--device" in subs[name].format_help(), name
    for name in ("train", "eval", "predict", "export", "pretrain", "check-data"):
        assert "--out" in subs[name].format_help(), name


def test_train_flags_and_ultralytics_keys_set_the_config(tmp_path):
    flags = ["--batch", "4", "--imgsz", "384", "--device", "cpu", "--workers", "0", "--drop-bad", "--epochs", "3",
             "--out", str(tmp_path / "runs" / "mine")]  # fmt: skip
    args = build_parser().parse_args(["train", "--data", "some/data", *flags])
    cfg = run_config(args.preset, None, user_overrides(args))
    assert (cfg.train.batch_size, cfg.model.input_size, cfg.train.device, cfg.data.workers) == (4, 384, "cpu", 0)
    assert cfg.data.drop_bad is True and cfg.train.epochs == 3 and cfg.data.source == "some/data"
    assert (cfg.train.out, cfg.train.name) == (str(tmp_path / "runs"), "mine")

    keys = ["imgsz=416", "batch=2", "device=cpu", "workers=1", "epochs=5", "data=x"]
    cfg = run_config("default", None, expand_aliases(keys))
    assert (cfg.model.input_size, cfg.train.batch_size, cfg.train.device, cfg.data.workers, cfg.train.epochs) == (416, 2, "cpu", 1, 5)
    assert expand_aliases(["patience=7", "weights=w.pt", "train.lr=0.1"]) == ["train.patience=7", "train.weights=w.pt", "train.lr=0.1"]
    assert user_overrides(build_parser().parse_args(["train", "--weights", "w.pt"])) == ["train.weights=w.pt"]


def test_classes_take_one_value_per_flag_and_never_a_source():
    parser = build_parser()
    args = parser.parse_args(["predict", "--classes", "person", "img.jpg", "--model", "m.pt"])
    assert args.sources == ["img.jpg"] and args.classes == ["person"]
    for argv in (["--classes", "person,dog"], ["--classes", "person", "--classes", "dog"], ["--classes", " person , dog,"]):
        assert parser.parse_args(["predict", "img.jpg", *argv]).classes == ["person", "dog"], argv
    args = parser.parse_args(["pretrain", "--from-detection", "d", "--classes", "teddy bear,person", "--classes", "cat"])
    assert args.classes == ["teddy bear", "person", "cat"]


@pytest.mark.parametrize("key", ["weights", "patience"])
def test_keys_other_settings_bring_are_accepted_once_they_exist(key):
    assert any(f.name == key for f in dataclasses.fields(TrainConfig)), f"train.{key} is not a setting"
    cfg = apply_overrides(RunConfig(), expand_aliases([f"{key}=7" if key == "patience" else f"{key}=w.pt"]))
    assert getattr(cfg.train, key) in (7, "w.pt")


def test_unknown_key_suggests_the_closest(capsys):
    assert main(["train", "lr0=0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown key 'lr0'; did you mean train.lr?" in err and len(err.splitlines()) == 1
    for item, guess in [("model.batch_size=4", "train.batch_size"), ("train.lrr=1", "train.lr"), ("mosaic=0.5", "data.augment.mosaic")]:
        with pytest.raises(ConfigError, match=f"did you mean {guess}\\?"):
            apply_overrides(RunConfig(), [item])
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), ["zzzz=1"])
    assert "did you mean" not in str(e.value)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = preset("default", num_classes=1, input_size=64)
    cfg.backbone.weights, cfg.backbone.freeze_bn = "none", False
    model = build_model(cfg, class_names=["raccoon"], category_ids=[0])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    state = {"model": model.state_dict(), "config": {"model": to_dict(cfg)}, "class_names": ["raccoon"], "category_ids": [0]}
    return save_checkpoint(state, path)


def test_no_command_writes_over_an_earlier_run(tiny_checkpoint, raccoon, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = raccoon / "images" / "raccoon-1.jpg"
    for _ in range(2):
        assert main(["predict", str(image), "--model", str(tiny_checkpoint), "--no-save"]) == 0
    runs = tmp_path / "runs" / "predict"
    assert sorted(p.name for p in runs.iterdir()) == ["exp", "exp2"]
    assert all(json.loads((runs / d / "detections.json").read_text())["images"] for d in ("exp", "exp2"))

    evaluate = ["eval", "--model", str(tiny_checkpoint), "--data", str(raccoon), "--split", "test", "--max-images", "2", "--no-plots"]
    for _ in range(2):
        assert main(evaluate) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "eval").iterdir()) == ["exp", "exp2"]
    assert main([*evaluate, "--out", "mine"]) == 0 and (tmp_path / "mine" / "metrics.json").is_file()

    (tmp_path / "runs" / "train" / "exp").mkdir(parents=True)
    (tmp_path / "runs" / "train" / "exp" / "last.pt").write_bytes(b"an earlier run")
    capsys.readouterr()
    assert main(["train", "--out", "runs/train/exp"]) == 1  # refused before anything is written
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume runs/train/exp" in err
    assert (tmp_path / "runs" / "train" / "exp" / "last.pt").read_bytes() == b"an earlier run"


def test_commands_started_together_get_different_run_folders(tmp_path):
    """next_run_dir claims its folder by creating it: threads asking at once never share one."""
    runs, n = tmp_path / "runs" / "predict", 8
    start, got = threading.Barrier(n), []

    def claim():
        start.wait()
        got.append(next_run_dir(str(runs), ""))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == sorted(["exp", *(f"exp{k}" for k in range(2, n + 1))])
    assert all(p.is_dir() and not any(p.iterdir()) for p in got)  # claimed: created, empty
    assert next_run_dir(str(runs), "") == runs / f"exp{n + 1}" and next_run_dir(str(runs), "mine") == runs / "mine"
