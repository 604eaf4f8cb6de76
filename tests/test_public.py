"""The package's front: public names, `python -m retinanet`, `--version`, `retinanet cfg`,
every documented command line, per-call inference settings, one class palette."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import CLASS_NAMES, build_test_model

import retinanet
from retinanet import config
from retinanet.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_public_names_at_the_top():
    from retinanet import Detector, build_model
    from retinanet.api import Detector as ApiDetector
    from retinanet.model import build_model as model_build

    assert Detector is ApiDetector and build_model is model_build
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", retinanet.__version__)
    with pytest.raises(AttributeError):
        retinanet.not_a_name  # noqa: B018


def test_python_dash_m_and_version():
    help_ = subprocess.run([sys.executable, "-m", "retinanet", "--help"], capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0, help_.stderr
    for name in COMMANDS:
        assert name in help_.stdout
    version = subprocess.run([sys.executable, "-m", "retinanet", "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"retinanet {retinanet.__version__}"


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    hints = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for name, f in hints.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += _leaf_keys(type(default), f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_cfg_prints_every_field_of_every_config(capsys):
    assert main(["cfg"]) == 0
    printed = {line.split(" = ", 1)[0] for line in capsys.readouterr().out.splitlines() if " = " in line}
    expected = set(_leaf_keys(config.Config))
    assert expected and expected <= printed, sorted(expected - printed)
    # Every section the commands read is in the tree.
    sections = {f.name for f in dataclasses.fields(config.Config)}
    assert {"model", "data", "train", "eval", "predict", "export", "pretrain"} <= sections


def test_cfg_prints_one_section_with_docs(capsys):
    assert main(["cfg", "model.anchors"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert [line.split(" = ")[0] for line in lines] == [f"model.anchors.{k}" for k in ("sizes", "scales", "ratios", "fit")]
    assert all("  # " in line for line in lines)  # each with its doc
    assert main(["cfg", "model.nope"]) == 1


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every `retinanet ...` line in the README and docs."""
    found = []
    for path in DOCS:
        for line in path.read_text().splitlines():
            m = re.match(r"^\s*(?:\$ )?(?:\.venv/bin/)?(?:retinanet|python -m retinanet(?:\.cli)?|torchrun .*-m retinanet\.cli) ([a-z][a-z-]*)\b(.*)", line)
            if m and m.group(1) in COMMANDS:
                rest = m.group(2).split("#")[0].rstrip(" \\")
                found.append((path.name, [m.group(1), *re.findall(r"(?<![\w\[|])--[a-z][a-z0-9-]*", rest)]))
    return found


def test_every_documented_command_line_parses():
    documented = _documented_commands()
    assert len({argv[0] for _, argv in documented}) >= 8  # the docs show most commands
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for where, (command, *flags) in documented:
        options = subparsers.choices[command]._option_string_actions
        unknown = [f for f in flags if f not in options]
        assert not unknown, f"{where}: `retinanet {command}` has no {unknown}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: retinanet " + command in capsys.readouterr().out


@pytest.fixture(scope="module")
def photo(coco128):
    from retinanet.data.images import read_image

    return read_image(coco128 / "train2017" / "000000000034.jpg")


def test_predict_thresholds_do_not_touch_the_model(photo):
    from retinanet import Detector

    model = build_test_model()
    before = dataclasses.asdict(model.cfg)
    det = Detector(model)
    strict = det.predict(photo, conf=0.6, iou=0.3, max_det=5)
    assert dataclasses.asdict(model.cfg) == before
    assert len(strict) <= 5 and (strict.scores >= 0.6).all()


def test_two_threads_with_different_thresholds_get_their_own_results(photo):
    from retinanet import Detector

    det = Detector(build_test_model())
    settings = {"loose": dict(conf=0.05, iou=0.7), "strict": dict(conf=0.5, iou=0.3)}
    expected = {k: det.predict(photo, **v) for k, v in settings.items()}
    assert len(expected["loose"]) > len(expected["strict"])  # the settings differ in what they keep
    rounds, got, errors = 6, {k: [] for k in settings}, []
    barrier = threading.Barrier(len(settings))

    def worker(name: str) -> None:
        try:
            for _ in range(rounds):
                barrier.wait(timeout=60)
                got[name].append(det.predict(photo, **settings[name]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in settings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in settings:
        for r in got[name]:
            np.testing.assert_allclose(r.boxes, expected[name].boxes, atol=1e-4)
            np.testing.assert_array_equal(r.labels, expected[name].labels)


def test_a_class_has_one_colour_in_predict_images_and_evaluation_plots():
    from retinanet.api import Result, annotate
    from retinanet.draw import class_color
    from retinanet.evaluation.plots import HEADER_PX, draw_side_by_side

    label = 5
    box = np.array([[10, 10, 80, 60]], np.float32)
    r = Result(box, np.array([0.9], np.float32), np.array([label]), ["thing"], (100, 120))
    predicted = annotate(np.zeros((100, 120, 3), np.uint8), r)
    panel = draw_side_by_side(
        torch.zeros(3, 100, 120, dtype=torch.uint8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.bool), torch.from_numpy(box), torch.tensor([0.9]), torch.tensor([label]),
        [str(i) for i in range(10)],
    )  # fmt: skip
    right = panel[:, HEADER_PX:, -120:].permute(1, 2, 0).numpy()  # the predictions panel, (H, W, 3)
    colour = class_color(label)
    assert tuple(predicted[60, 45]) == colour  # the box's bottom edge
    assert tuple(right[60, 45]) == colour
    assert class_color(label + 1) != colour


def test_colours_of_neighbouring_classes_differ():
    from retinanet.draw import class_color, text_color

    colours = [np.array(class_color(i), float) for i in range(len(CLASS_NAMES) + 20)]
    nearest = min(np.abs(a - b).sum() for i, a in enumerate(colours) for b in colours[i + 1 : i + 2])
    assert nearest > 60
    assert text_color((250, 250, 120)) == (0, 0, 0) and text_color((20, 20, 120)) == (255, 255, 255)
