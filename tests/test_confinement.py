"""Where files may come from and go to: image paths taken from annotations stay inside
their folder (or are the 'path outside dataset root' error), and `convert` writes,
unlinks and replaces nothing outside its output folder. Small datasets made in tmp_path."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from retinanet.config import DataConfig
from retinanet.data import DataError, DetectionDataset, Record, load_dataset
from retinanet.data.convert import convert
from retinanet.data.files import OUTSIDE_ROOT, inside_root, lies_inside, place_images

SIZE = (32, 24)


def image(path: Path, colour=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", SIZE, colour).save(path)
    return path


def voc_xml(path: Path, filename: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{SIZE[0]}</width><height>{SIZE[1]}</height></size>"
        "<object><name>x</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        "</annotation>"
    )
    return path


def yolo_dataset(root: Path, splits: dict) -> Path:
    """root/images/train/a.jpg with its label, and a data.yaml naming ``splits``."""
    image(root / "images" / "train" / "a.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"format": "yolo", **splits, "names": ["x"]}))
    return root


def outside_issues(ds: DetectionDataset) -> list:
    return [i for i in ds.report.issues if i.kind == OUTSIDE_ROOT]


_OPENED: list[str] | None = None  # paths opened while a `touched` fixture is active


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # the 'open' event covers open() and os.open(); a no-op outside `touched`


@pytest.fixture
def touched(monkeypatch):
    """Every path opened or stat'ed during the test (stat as pathlib and os.path call it)."""
    global _OPENED
    _OPENED = paths = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def spy(path, *args, _real=real, **kwargs):
            paths.append(os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    yield paths
    _OPENED = None


# ----------------------------------------------------------------------------- the helper


def test_inside_root_is_lexical_and_strict(tmp_path):
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    assert inside_root(root, "a.jpg") == root / "a.jpg"
    assert inside_root(root, "sub/../a.jpg") is not None
    for name in ("../a.jpg", "sub/../../a.jpg", "/etc/hostname", str(tmp_path / "ds2" / "a.jpg"), ".", ""):
        assert inside_root(root, name) is None, name
    assert inside_root(root, str(root / "sub" / "a.jpg")) is not None  # absolute, but inside
    (tmp_path / "link").symlink_to(root)
    assert lies_inside(root / "sub" / "a.jpg", tmp_path / "link")  # a symlinked root is the same folder


# ----------------------------------------------------------------------------- 1: split names


@pytest.mark.parametrize("to", ["yolo", "coco"])
def test_convert_refuses_split_name_that_leaves_the_output(tmp_path, to):
    """A split named '../../victim' led images and labels out of OUT, unlinking what was there."""
    src = yolo_dataset(tmp_path / "src", {"train": "images/train", "../../victim": "images/train"})
    victim = tmp_path / "victim" / "a.jpg"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    with pytest.raises(DataError, match=r"split name '\.\./\.\./victim'") as err:
        convert(src, to, tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)
    assert not victim.is_symlink() and victim.read_bytes() == b"precious"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["a.jpg"]


def test_convert_refuses_split_argument_that_leaves_the_output(tmp_path):
    """A source without splits serves any requested split: its name must still be a folder name."""
    voc_xml(tmp_path / "src" / "Annotations" / "a.xml", "a.jpg")
    image(tmp_path / "src" / "JPEGImages" / "a.jpg")
    with pytest.raises(DataError, match="split name"):
        convert(tmp_path / "src", "yolo", tmp_path / "out", split="../escaped", progress=False)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped").exists()


def test_convert_does_not_write_through_a_symlinked_output_folder(tmp_path):
    """--overwrite into an OUT whose images/ links elsewhere: every target is resolved first."""
    src = yolo_dataset(tmp_path / "src", {"train": "images/train"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").symlink_to(elsewhere)
    with pytest.raises(DataError, match="outside the output folder"):
        convert(src, "yolo", tmp_path / "out", overwrite=True, progress=False)
    assert list(elsewhere.iterdir()) == []


# ----------------------------------------------------------------------------- 2: sources inside OUT


def test_convert_overwrite_refuses_output_holding_source_images(tmp_path):
    """A spec whose split lies in OUT: --overwrite replaced the photo by a link to itself."""
    photo = image(tmp_path / "out" / "images" / "train" / "a.jpg")
    (tmp_path / "out" / "labels" / "train").mkdir(parents=True)
    (tmp_path / "out" / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"format": "yolo", "train": "out/images/train", "names": ["x"]}))
    before = photo.read_bytes()
    with pytest.raises(DataError, match="holds the source file"):
        convert(spec, "yolo", tmp_path / "out", overwrite=True, progress=False)
    assert not photo.is_symlink() and photo.read_bytes() == before


@pytest.mark.parametrize("copy_images", [False, True])
def test_place_images_never_replaces_a_source_image(tmp_path, copy_images):
    photo = image(tmp_path / "imgs" / "a.jpg")
    before = photo.read_bytes()
    ds = DetectionDataset([Record(photo, 0, *SIZE)], ["x"])
    with pytest.raises(DataError, match="is the source image"):
        place_images(ds, tmp_path / "imgs", "placing", copy_images=copy_images)
    assert not photo.is_symlink() and photo.read_bytes() == before


# ----------------------------------------------------------------------------- 3: readers


def test_voc_filename_leaving_the_image_folder(tmp_path, touched):
    root = tmp_path / "ds"
    image(root / "JPEGImages" / "a.jpg")
    voc_xml(root / "Annotations" / "a.xml", "a.jpg")
    bad = voc_xml(root / "Annotations" / "b.xml", "../../secret.jpg")
    secret = tmp_path / "secret.jpg"
    absent = outside_issues(load_dataset(root, "all", drop_bad=True, progress=False))  # secret.jpg absent
    image(secret)
    touched.clear()
    ds = load_dataset(root, "all", drop_bad=True, progress=False)
    assert [r.image_path.name for r in ds.records] == ["a.jpg"]
    (issue,) = outside_issues(ds)
    assert issue.level == "error" and issue.file == str(bad) and "'../../secret.jpg'" in issue.reason
    assert outside_issues(ds) == absent  # the message does not reveal whether the file exists
    assert any(Path(p).name == "a.jpg" for p in touched)  # the spy sees the files that are read ...
    assert not any(Path(p).name == "secret.jpg" for p in touched)  # ... and the outside one is not among them
    with pytest.raises(DataError, match=OUTSIDE_ROOT):
        load_dataset(root, "all", progress=False)
    assert len(load_dataset(root, "all", allow_outside_root=True, progress=False)) == 2


def test_coco_file_name_leaving_the_image_folder(tmp_path, touched):
    root = tmp_path / "ds"
    image(root / "train" / "a.jpg")
    secret = image(tmp_path / "secret.jpg")
    box = {"category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
    doc = {  # no width / height: the reader would read them from the header
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": str(secret)}],
        "annotations": [{"id": 1, "image_id": 1, **box}, {"id": 2, "image_id": 2, **box}],
        "categories": [{"id": 1, "name": "x"}],
    }
    ann = root / "annotations" / "instances_train.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(doc))
    touched.clear()
    ds = load_dataset(root, "train", drop_bad=True, progress=False)
    assert [r.image_path.name for r in ds.records] == ["a.jpg"]
    assert [i.kind for i in ds.report.errors] == [OUTSIDE_ROOT]  # its annotation is not 'unknown image id'
    assert ds.report.errors[0].file == str(ann) and str(secret) in ds.report.errors[0].reason
    assert str(secret) not in touched
    assert len(load_dataset(root, "train", allow_outside_root=True, progress=False)) == 2


def test_yolo_list_lines_stay_inside_the_root_or_the_list_folder(tmp_path, touched):
    root = tmp_path / "ds"
    image(root / "images" / "a.jpg")
    secret = image(tmp_path / "secret.jpg")
    (root / "train.txt").write_text(f"images/a.jpg\n{secret}\n../secret.jpg\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"format": "yolo", "train": "train.txt", "names": ["x"]}))
    touched.clear()
    ds = load_dataset(root, "train", drop_bad=True, progress=False)
    assert [r.image_path.name for r in ds.records] == ["a.jpg"]
    issues = outside_issues(ds)
    assert [i.file for i in issues] == [str(root / "train.txt")] * 2
    assert issues[0].reason.startswith(f"line 2: image path '{secret}'") and issues[1].reason.startswith("line 3:")
    assert not any(Path(p).name == "secret.jpg" for p in touched)
    # a list the user keeps elsewhere may name images beside it (its own folder)
    image(tmp_path / "lists" / "b.jpg")
    (tmp_path / "lists" / "val.txt").write_text("b.jpg\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"format": "yolo", "val": "../lists/val.txt", "names": ["x"]}))
    assert [r.image_path.name for r in load_dataset(root, "val", progress=False).records] == ["b.jpg"]
    assert DataConfig().allow_outside_root is False


def test_convert_does_not_link_images_from_outside_the_root(tmp_path):
    root = tmp_path / "ds"
    image(root / "JPEGImages" / "a.jpg")
    voc_xml(root / "Annotations" / "a.xml", "a.jpg")
    voc_xml(root / "Annotations" / "b.xml", str(image(tmp_path / "secret.jpg")))
    convert(root, "yolo", tmp_path / "out", drop_bad=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "images" / "train").iterdir()) == ["a.jpg"]


# ----------------------------------------------------------------------------- 4: the image-folder guess


def test_one_absolute_voc_filename_does_not_hide_the_other_images(tmp_path):
    """`c / f` is `f` for an absolute f, so the guess took JPEGImages/ (absent) and every
    good image was reported missing."""
    root = tmp_path / "ds"
    for name in ("a.jpg", "b.jpg"):
        image(root / "images" / name)
        voc_xml(root / "Annotations" / f"{Path(name).stem}.xml", name)
    voc_xml(root / "Annotations" / "0bad.xml", str(image(tmp_path / "elsewhere.jpg")))
    ds = load_dataset(root, "all", drop_bad=True, progress=False)
    assert sorted(r.image_path.name for r in ds.records) == ["a.jpg", "b.jpg"]
    assert [(i.kind, Path(i.file).name) for i in ds.report.errors] == [(OUTSIDE_ROOT, "0bad.xml")]
