"""Annotation files above RETINANET_MAX_ANNOTATION_MB are refused before they are parsed,
with the file and the setting named: a COCO json or spec is a DataError, one VOC xml or
YOLO label file is a reported entry and the rest of the dataset still loads."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from retinanet.data import load_dataset
from retinanet.data.files import DEFAULT_MAX_ANNOTATION_MB, MAX_ANNOTATION_MB_ENV, max_annotation_bytes, read_annotation
from retinanet.data.report import DataError

LIMIT_KB = 4


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setenv(MAX_ANNOTATION_MB_ENV, str(LIMIT_KB / 1024))


def _png(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 200, 200)).save(path)


def test_the_limit_and_its_setting(monkeypatch, tmp_path):
    assert max_annotation_bytes() == DEFAULT_MAX_ANNOTATION_MB * 2**20
    monkeypatch.setenv(MAX_ANNOTATION_MB_ENV, "0.5")
    assert max_annotation_bytes() == 2**19
    (tmp_path / "a.json").write_bytes(b"x" * 2**19)
    assert len(read_annotation(tmp_path / "a.json")) == 2**19  # at the limit: read
    (tmp_path / "a.json").write_bytes(b"x" * (2**19 + 1))
    with pytest.raises(DataError, match=f"a.json: annotation file above the limit of 0.5 MB \\({MAX_ANNOTATION_MB_ENV}\\)"):
        read_annotation(tmp_path / "a.json")
    monkeypatch.setenv(MAX_ANNOTATION_MB_ENV, "lots")
    with pytest.raises(ValueError, match="not a number of megabytes"):
        max_annotation_bytes()


def test_a_huge_coco_json_is_refused_before_parsing(tmp_path, small_limit):
    _png(tmp_path / "images" / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
        "categories": [{"id": 1, "name": "thing"}],
        "info": {"padding": "x" * (LIMIT_KB * 1024)},
    }
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=f"annotations.json: annotation file above the limit .*{MAX_ANNOTATION_MB_ENV}"):
        load_dataset(ann, progress=False)
    coco["info"] = {}
    ann.write_text(json.dumps(coco))
    assert len(load_dataset(ann, progress=False)) == 1  # the same file, small, loads


VOC = """<annotation><filename>{name}</filename><size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>thing</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>{pad}</annotation>"""


def test_one_huge_voc_file_is_reported_and_the_others_load(tmp_path, small_limit):
    for stem, pad in (("a", ""), ("b", "<!--" + "x" * (LIMIT_KB * 1024) + "-->")):
        _png(tmp_path / "JPEGImages" / f"{stem}.png")
        (tmp_path / "Annotations").mkdir(exist_ok=True)
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(VOC.format(name=f"{stem}.png", pad=pad))
    ds = load_dataset(tmp_path, drop_bad=True, progress=False)
    assert [r.image_path.name for r in ds.records] == ["a.png"]
    issues = [i for i in ds.report.issues if i.file.endswith("b.xml")]
    assert issues and "annotation file above the limit" in issues[0].reason


def test_one_huge_yolo_label_file_is_reported_and_the_others_load(tmp_path, small_limit):
    for stem, lines in (("a", "0 0.5 0.5 0.2 0.2\n"), ("b", "0 0.5 0.5 0.2 0.2\n" * 400)):
        _png(tmp_path / "images" / f"{stem}.png")
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{stem}.txt").write_text(lines)
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nnames: [thing]\n")
    ds = load_dataset(tmp_path / "data.yaml", "train", drop_bad=True, progress=False)
    assert [r.image_path.name for r in ds.records] == ["a.png"]
    issues = [i for i in ds.report.issues if i.file.endswith("b.txt")]
    assert issues and "annotation file above the limit" in issues[0].reason


def test_a_huge_spec_file_is_refused(tmp_path, small_limit):
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nnames: [thing]\n# " + "x" * (LIMIT_KB * 1024) + "\n")
    with pytest.raises(DataError, match="data.yaml: annotation file above the limit"):
        load_dataset(tmp_path / "data.yaml", "train", progress=False)
