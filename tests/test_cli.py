"""`retinanet predict` end to end in-process: folders, globs, video, JSON / YOLO outputs,
filters, the ONNX model through the same command, and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_export import CATEGORY_IDS, CLASS_NAMES

from retinanet.cli import main


COCO = ["000000000009.jpg", "000000000025.jpg", "000000000034.jpg"]


@pytest.fixture
def folder(tmp_path, coco128, raccoon) -> Path:
    """Four real images (symlinked, never copied) plus a file that is not an image."""
    d = tmp_path / "images"
    d.mkdir()
    for name in COCO:
        (d / name).symlink_to(coco128 / "train2017" / name)
    (d / "raccoon-1.jpg").symlink_to(raccoon / "images" / "raccoon-1.jpg")
    (d / "readme.txt").write_text("not an image")
    return d


def _json(out: Path) -> dict:
    return json.loads((out / "detections.json").read_text())


def test_predict_folder_writes_images_json_and_yolo(exported, folder, tmp_path, capsys):
    ckpt, _ = exported
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(ckpt), "--out", str(out), "--conf", "0.03", "--save-txt", "--batch", "3"]) == 0
    data = _json(out)
    assert len(data["images"]) == 4
    assert sorted(Path(i["file_name"]).name for i in data["images"]) == sorted(COCO + ["raccoon-1.jpg"])
    assert data["categories"] == [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    anns = data["annotations"]
    assert len(anns) > 10 and {a["category_id"] for a in anns} <= set(CATEGORY_IDS)
    assert all(a["score"] > 0.03 for a in anns)
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    for a in anns:  # COCO xywh inside the image it belongs to
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0
        assert x + w <= sizes[a["image_id"]][0] + 1e-3 and y + h <= sizes[a["image_id"]][1] + 1e-3
    # Annotated copies: same names and sizes as the inputs, and not the same pixels.
    for name in COCO + ["raccoon-1.jpg"]:
        drawn, orig = Image.open(out / name), Image.open(folder / name)
        assert drawn.size == orig.size
    assert not np.array_equal(np.asarray(Image.open(out / COCO[2])), np.asarray(Image.open(folder / COCO[2]).convert("RGB")))
    # YOLO txt: one file per image, one line per detection, normalised values.
    txts = sorted((out / "labels").glob("*.txt"))
    assert len(txts) == 4
    lines = [line.split() for t in txts for line in t.read_text().splitlines()]
    assert len(lines) == len(anns)
    assert all(len(v) == 5 and v[0] in ("0", "1", "2") and all(0 <= float(x) <= 1 for x in v[1:]) for v in lines)
    assert "4 images" in capsys.readouterr().out


def test_predict_filters_and_glob(exported, folder, tmp_path):
    ckpt, _ = exported
    base = ["predict", str(folder / "*.jpg"), "--model", str(ckpt), "--no-save"]
    assert main(base + ["--out", str(tmp_path / "all"), "--conf", "0.03"]) == 0
    assert main(base + ["--out", str(tmp_path / "strict"), "--conf", "0.1"]) == 0
    assert main(base + ["--out", str(tmp_path / "cls"), "--conf", "0.03", "--classes", "bird"]) == 0
    assert main(base + ["--out", str(tmp_path / "few"), "--conf", "0.03", "--max-det", "2", "--save-txt", "--save-conf"]) == 0
    every, strict, cls, few = (_json(tmp_path / d)["annotations"] for d in ("all", "strict", "cls", "few"))
    assert not list((tmp_path / "all").glob("*.jpg"))  # --no-save
    np.testing.assert_allclose(sorted(a["score"] for a in strict), sorted(a["score"] for a in every if a["score"] > 0.1), atol=1e-6)
    assert cls and {a["category_id"] for a in cls} == {16}  # bird
    assert len(cls) == sum(a["category_id"] == 16 for a in every)
    per_image = {}
    for a in few:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert max(per_image.values()) == 2
    line = (tmp_path / "few" / "labels" / "000000000034.txt").read_text().splitlines()[0].split()
    assert len(line) == 6 and 0.03 < float(line[5]) <= 1  # --save-conf adds the score


def test_onnx_model_gives_the_same_json(exported, folder, tmp_path):
    ckpt, onnx_path = exported
    for model, name in ((ckpt, "pt"), (onnx_path, "onnx")):
        # An untrained model stores no threshold and scores under predict's 0.25 fallback.
        args = ["predict", str(folder), "--model", str(model), "--out", str(tmp_path / name), "--no-save", "--conf", "0.05"]
        assert main(args) == 0
    a, b = _json(tmp_path / "pt")["annotations"], _json(tmp_path / "onnx")["annotations"]
    assert len(a) == len(b) > 0
    key = lambda d: (d["image_id"], -d["score"])
    for x, y in zip(sorted(a, key=key), sorted(b, key=key)):
        assert x["image_id"] == y["image_id"] and x["category_id"] == y["category_id"]
        assert np.allclose(x["bbox"], y["bbox"], atol=0.05) and abs(x["score"] - y["score"]) < 1e-5


def test_predict_video(exported, coco128, tmp_path):
    _, onnx_path = exported
    w, h = 320, 240  # even sides: some codecs round odd ones
    frame = cv2.resize(cv2.imread(str(coco128 / "train2017" / "000000000034.jpg")), (w, h), interpolation=cv2.INTER_AREA)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for k in range(5):
        writer.write(np.roll(frame, 20 * k, axis=1))  # the scene pans: detections move
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", str(video), "--model", str(onnx_path), "--out", str(out), "--batch", "2", "--conf", "0.03"]) == 0
    data = _json(out)
    assert [i["frame"] for i in data["images"]] == [0, 1, 2, 3, 4]
    assert all(i["width"] == w and i["height"] == h for i in data["images"])
    assert data["annotations"]
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (w, h)
    cap.release()
    assert main(["predict", str(video), "--model", str(onnx_path), "--out", str(tmp_path / "o2"), "--max-frames", "2", "--no-save"]) == 0
    assert len(_json(tmp_path / "o2")["images"]) == 2


def test_unreadable_image_is_skipped_with_a_note(exported, folder, tmp_path, capsys):
    ckpt, _ = exported
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", str(folder), "--model", str(ckpt), "--out", str(tmp_path / "o"), "--no-save"]) == 0
    captured = capsys.readouterr()
    assert "broken.jpg: cannot decode image" in captured.err
    assert "4 images" in captured.out and "1 unreadable images skipped" in captured.out
    assert len(_json(tmp_path / "o")["images"]) == 4


def test_user_error_is_one_clear_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.jpg")]) == 1
    assert main(["predict", str(tmp_path / "missing.mp4")]) == 1
    assert main(["predict", str(tmp_path), "--model", str(tmp_path / "m.onnx")]) == 1  # empty folder first
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert main(["predict", str(tmp_path / "a.jpg"), "--model", str(tmp_path / "m.onnx")]) == 1
    assert main(["predict", str(tmp_path / "a.jpg"), "--batch", "0"]) == 1
    err = capsys.readouterr().err
    assert "missing.jpg: image file not found" in err
    assert "missing.mp4: video file not found" in err
    assert "no images" in err and "m.onnx: model file not found" in err and "--batch must be at least 1" in err
    assert "Traceback" not in err


def test_benchmark_timing_protocol():
    """Runtimes alternate block by block; each block's first call is run but not counted."""
    from retinanet.benchmark import time_interleaved

    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(fns, repeats=2, warmup=1, block=3)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert len(times["a"]) == len(times["b"]) == 2 * (3 - 1)
    with pytest.raises(ValueError, match="block must be at least 2"):
        time_interleaved(fns, repeats=1, warmup=0, block=1)


def test_benchmark_command_small(capsys):
    args = ["benchmark", "--no-peer", "--runtimes", "eager", "torchscript", "--imgsz", "64", "96", "--repeats", "1", "--num-classes", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| eager", "| torchscript"))]
    assert [r.split("|")[2].strip() for r in rows] == ["64", "64", "96", "96"]
    assert main(["benchmark", "--runtimes", "eager", "--batch", "0", "--no-peer"]) == 1
    assert "batch and repeats must be at least 1" in capsys.readouterr().err


def test_the_command_line_loads_without_torchvision():
    """`retinanet --help` and the ONNX paths of predict need no torchvision (160 MB, 2 s)."""
    import subprocess
    import sys

    code = "import sys, retinanet.cli; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
