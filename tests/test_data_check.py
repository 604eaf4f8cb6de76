"""Validation: every kind of bad input, made in tmp_path from real coco128 / raccoon
images, gets the documented error, fix or warning; `retinanet check-data` end to end."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet.cli import main
from retinanet.data import DataError, DetectionDataset, Record, load_dataset
from retinanet.data.check import check_mode
from retinanet.data.stats import ASPECT_EDGES, SIZE_EDGES, dataset_stats
from retinanet.data.images import ImageError, MissingImageError, image_info, read_image

IMAGES = ("000000000009.jpg", "000000000025.jpg", "000000000030.jpg")  # 8 + 2 + 2 boxes, no crowd


class MiniCoco:
    """Three real coco128 images and their real annotations, in a COCO folder layout."""

    def __init__(self, root: Path, coco128: Path):
        self.root = root
        (root / "annotations").mkdir(parents=True)
        (root / "train2017").mkdir()
        full = json.loads((coco128 / "annotations/instances_train2017.json").read_text())
        self.images = {im["file_name"]: im for im in full["images"] if im["file_name"] in IMAGES}
        ids = {im["id"] for im in self.images.values()}
        self.data = {
            "images": list(self.images.values()),
            "annotations": [a for a in full["annotations"] if a["image_id"] in ids],
            "categories": full["categories"],
        }
        for name in IMAGES:
            shutil.copy(coco128 / "train2017" / name, root / "train2017" / name)
        self.json = root / "annotations" / "instances_train2017.json"
        self.write()

    def write(self, data=None) -> None:
        self.json.write_text(json.dumps(self.data if data is None else data))

    def image(self, name: str) -> Path:
        return self.root / "train2017" / name

    def ann(self, image_name: str, k: int = 0) -> dict:
        iid = self.images[image_name]["id"]
        return [a for a in self.data["annotations"] if a["image_id"] == iid][k]

    def load(self, **kw):
        kw.setdefault("progress", False)
        return load_dataset(self.root, "all", **kw)


@pytest.fixture
def mini(tmp_path, coco128):
    return MiniCoco(tmp_path / "mini", coco128)


def kinds(ds_or_report, level=None):
    report = getattr(ds_or_report, "report", ds_or_report)
    return [(i.level, i.kind) for i in report.issues if level is None or i.level == level]


def test_clean_dataset_has_no_issues(mini):
    ds = mini.load()
    assert (len(ds), ds.num_boxes()) == (3, 12)
    assert ds.report.issues == [] and ds.report.ok


# ----------------------------------------------------------------------------- images


def test_truncated_jpeg(mini):
    path = mini.image("000000000025.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        mini.load()
    msg = str(e.value)
    assert "\n" not in msg and "000000000025.jpg" in msg and "truncated" in msg and "drop_bad" in msg
    assert kinds(e.value.report) == [("error", "unreadable image")]
    assert e.value.report.errors[0].file == str(path)
    ds = mini.load(drop_bad=True)
    assert (len(ds), ds.num_boxes()) == (2, 10)
    assert (ds.report.dropped_images, ds.report.dropped_boxes) == (1, 2)
    # Header-only checking is the documented fast mode: it cannot see a truncated tail.
    assert len(mini.load(check="header")) == 3
    with pytest.raises(ImageError, match="000000000025.jpg: cannot decode image"):
        read_image(path)


def test_missing_empty_and_non_image_files(mini):
    mini.image("000000000009.jpg").unlink()
    mini.image("000000000025.jpg").write_bytes(b"")
    mini.image("000000000030.jpg").write_text("this is not a picture")
    with pytest.raises(DataError, match="no usable images") as e:
        mini.load(drop_bad=True)
    assert sorted(kinds(e.value.report)) == [("error", "missing image"), ("error", "unreadable image"), ("error", "unreadable image")]
    assert {Path(i.file).name for i in e.value.report.errors} == set(IMAGES)
    # The missing file is found even in header mode
    with pytest.raises(DataError, match="image file not found"):
        mini.load(check="header")
    with pytest.raises(MissingImageError, match="000000000009.jpg: image file not found"):
        read_image(mini.image("000000000009.jpg"))


def test_size_mismatch_and_exif_stored_size(mini):
    mini.images["000000000009.jpg"]["width"] = 600
    # 000000000030.jpg re-saved with EXIF orientation 6 (displays as 428x640) while the
    # json keeps its stored size 640x428: boxes would refer to the wrong orientation.
    path = mini.image("000000000030.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).save(path, exif=exif)
    mini.write()
    with pytest.raises(DataError) as e:
        mini.load()
    reasons = {Path(i.reason.split(":")[0]).name: i.reason for i in e.value.report.errors}
    assert kinds(e.value.report) == [("error", "size mismatch")] * 2
    assert "gives size 600x480 but the image is 640x480" in reasons["000000000009.jpg"]
    assert "EXIF orientation 6" in reasons["000000000030.jpg"] and "displays as 428x640" in reasons["000000000030.jpg"]
    # trusting the annotations (check=False) skips the image files entirely
    assert len(mini.load(check=False)) == 3


# ----------------------------------------------------------------------------- boxes


def test_nan_and_degenerate_boxes_are_dropped_alone(mini):
    mini.ann("000000000009.jpg", 0)["bbox"][2] = math.nan  # json.dumps writes NaN
    mini.ann("000000000009.jpg", 1)["bbox"][3] = 0.0
    mini.ann("000000000009.jpg", 2)["bbox"][2] = -5.0
    mini.ann("000000000025.jpg", 0)["bbox"] = [1, 2, math.inf, 4]
    mini.write()
    assert "NaN" in mini.json.read_text()
    with pytest.raises(DataError, match=r"4 unusable entries \(2 degenerate box, 2 non-finite box\)"):
        mini.load()
    ds = mini.load(drop_bad=True)
    assert (len(ds), ds.num_boxes(), ds.report.dropped_boxes) == (3, 8, 4)
    assert all(np.isfinite(r.boxes).all() for r in ds.records)
    for issue in ds.report.errors:
        assert issue.file == str(mini.json) and "box" in issue.reason


def test_box_partly_outside_is_clipped_wholly_outside_dropped(mini):
    a = mini.ann("000000000009.jpg", 0)  # 640x480 image
    a["bbox"] = [600.0, 400.0, 100.0, 100.0]
    b = mini.ann("000000000009.jpg", 1)
    b["bbox"] = [700.0, 10.0, 20.0, 20.0]
    mini.write()
    with pytest.raises(DataError, match="box outside image"):
        mini.load()
    ds = mini.load(drop_bad=True)
    assert sorted(kinds(ds)) == [("error", "box outside image"), ("fixed", "box clipped")]
    rec = next(r for r in ds.records if r.image_path.name == "000000000009.jpg")
    assert [600, 400, 640, 480] in rec.boxes.tolist() and len(rec.labels) == 7
    fixed = ds.report.of_level("fixed")[0]
    assert "000000000009.jpg" in fixed.reason and "clipped to [600, 400, 640, 480]" in fixed.reason
    # A clipped box alone is not a reason to stop
    b["bbox"] = [10.0, 10.0, 20.0, 20.0]
    mini.write()
    assert kinds(mini.load()) == [("fixed", "box clipped")]


def test_unknown_category_and_image_ids_and_malformed_bbox(mini):
    mini.ann("000000000009.jpg", 0)["category_id"] = 999
    mini.ann("000000000009.jpg", 1)["image_id"] = 123456
    mini.ann("000000000025.jpg", 0)["bbox"] = [1, 2, 3]
    mini.write()
    with pytest.raises(DataError) as e:
        mini.load()
    assert sorted(kinds(e.value.report)) == [
        ("error", "malformed annotation"),
        ("error", "unknown class"),
        ("error", "unknown image id"),
    ]
    text = e.value.report.to_text()
    assert "category_id 999 is not in 'categories'" in text and "image_id 123456" in text and "'bbox' must be 4 numbers" in text


def test_duplicate_image_and_annotation_ids(mini):
    ann = mini.ann("000000000025.jpg", 1)
    ann["id"] = mini.ann("000000000025.jpg", 0)["id"]
    mini.write()
    ds = mini.load()  # duplicate annotation ids are harmless for training: a warning
    assert kinds(ds) == [("warning", "duplicate annotation id")] and ds.num_boxes() == 12
    mini.images["000000000030.jpg"]["id"] = mini.images["000000000025.jpg"]["id"]
    mini.write()
    with pytest.raises(DataError, match="2 duplicate image id"):
        mini.load()
    ds = mini.load(drop_bad=True)  # whose boxes are whose is unknowable: both images go
    assert [r.image_path.name for r in ds.records] == ["000000000009.jpg"]


def test_iscrowd_written_as_text(mini):
    mini.ann("000000000009.jpg", 0)["iscrowd"] = "0"
    mini.ann("000000000009.jpg", 1)["iscrowd"] = "1"
    mini.write()
    rec = next(r for r in mini.load(check=False).records if r.image_path.name == "000000000009.jpg")
    assert rec.ignore.tolist() == [False, True] + [False] * 6


def test_broken_json_is_fatal_even_with_drop_bad(mini):
    mini.json.write_text(json.dumps(mini.data)[:-40])
    with pytest.raises(DataError, match=r"instances_train2017.json: not valid JSON \(.* at line 1, column \d+\)"):
        mini.load(drop_bad=True)
    mini.json.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="not a COCO instances file"):
        mini.load(drop_bad=True)
    data = copy.deepcopy(mini.data)
    data["categories"].append(dict(data["categories"][0]))
    mini.write(data)
    with pytest.raises(DataError, match="category id 1 is defined twice"):
        mini.load(drop_bad=True)


def test_same_file_under_two_ids_and_merged_splits(mini):
    # One json listing a file twice under different ids: the second entry is an error.
    data = copy.deepcopy(mini.data)
    twin = dict(mini.images["000000000009.jpg"], id=777)
    data["images"].append(twin)
    mini.write(data)
    with pytest.raises(DataError, match="1 duplicate image") as e:
        mini.load()
    assert "listed again (image ids 9 and 777)" in e.value.report.errors[0].reason
    # Two split files sharing images: each split loads alone; 'all' counts each file once.
    mini.write()
    (mini.root / "annotations" / "instances_val2017.json").write_text(json.dumps(mini.data))
    assert len(load_dataset(mini.root, "val", progress=False)) == 3
    assert len(load_dataset(mini.root, "all", progress=False)) == 3


# ----------------------------------------------------------------------------- VOC


@pytest.fixture
def mini_voc(tmp_path, raccoon):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for n in (1, 2, 3):
        shutil.copy(raccoon / "annotations" / f"raccoon-{n}.xml", root / "Annotations")
        shutil.copy(raccoon / "images" / f"raccoon-{n}.jpg", root / "JPEGImages")
    return root


def test_voc_malformed_files(mini_voc):
    ann = mini_voc / "Annotations"
    (ann / "raccoon-1.xml").write_text("<annotation><filename>raccoon-1.jpg</filename><object>")
    text = (ann / "raccoon-2.xml").read_text()
    (ann / "raccoon-2.xml").write_text(text.replace("<xmin>", "<xmin>abc", 1))
    with pytest.raises(DataError) as e:
        load_dataset(mini_voc, "all", progress=False)
    errors = e.value.report.errors
    assert [(Path(i.file).name, i.kind) for i in errors] == [
        ("raccoon-1.xml", "malformed annotation"),
        ("raccoon-2.xml", "malformed annotation"),
    ]
    assert "not well-formed XML" in errors[0].reason and "xmin='abc" in errors[1].reason
    ds = load_dataset(mini_voc, "all", drop_bad=True, progress=False)
    # raccoon-1 (unparseable) is gone; raccoon-2 lost its one bad box; raccoon-3 intact
    assert {r.image_path.name: len(r.labels) for r in ds.records} == {"raccoon-2.jpg": 0, "raccoon-3.jpg": 1}


def test_voc_unknown_class_and_missing_listed_annotation(mini_voc):
    (mini_voc / "ImageSets" / "Main").mkdir(parents=True)
    (mini_voc / "ImageSets" / "Main" / "train.txt").write_text("raccoon-1\nraccoon-2\nraccoon-99\n")
    with pytest.raises(DataError) as e:
        load_dataset(mini_voc, "train", class_names=["dog"], progress=False)
    assert sorted(kinds(e.value.report)) == [("error", "missing annotation"), ("error", "unknown class"), ("error", "unknown class")]
    assert any("raccoon-99 is listed" in i.reason for i in e.value.report.errors)
    ds = load_dataset(mini_voc, "train", drop_bad=True, progress=False)
    assert [r.image_path.name for r in ds.records] == ["raccoon-1.jpg", "raccoon-2.jpg"]


# ----------------------------------------------------------------------------- YOLO


def test_yolo_bad_label_lines(tmp_path, raccoon):
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for n in (1, 2):
        shutil.copy(raccoon / "images" / f"raccoon-{n}.jpg", root / "images")
    (root / "classes.txt").write_text("a\nb\n")
    (root / "labels" / "raccoon-1.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"  # 1 good
        "5 0.5 0.5 0.2 0.2\n"  # 2 class out of range
        "0 0.5 0.5 0.2\n"  # 3 four values
        "0 0.5 x 0.2 0.2\n"  # 4 not a number
        "1 320 240 50 50\n"  # 5 pixels, not normalised
        "1 nan 0.5 0.1 0.1\n"  # 6 NaN
        "0 0.5 0.5 0.2 0.2\n"  # 7 duplicate of line 1
        "1.5 0.5 0.5 0.2 0.2\n"  # 8 fractional class
        "1 0.95 0.5 0.2 0.2\n"  # 9 sticks out on the right: clipped
    )
    (root / "labels" / "raccoon-2.txt").write_bytes(b"\xff\xd8\xff\xe0 binary junk")
    with pytest.raises(DataError) as e:
        load_dataset(root, "all", progress=False)
    report = e.value.report
    assert sorted(kinds(report, "error")) == sorted(
        [
            ("error", "unknown class"),
            ("error", "malformed annotation"),
            ("error", "malformed annotation"),
            ("error", "malformed annotation"),
            ("error", "non-finite box"),
            ("error", "unknown class"),
            ("error", "malformed annotation"),  # the binary file
        ]
    )
    text = report.to_text()
    for needle in ("line 3: expected 5 values", "line 4: not a number", "line 5: coordinates must be normalised",
                   "line 8: class '1.5' is not an integer", "class 5 is not in 0..1", "not a text file"):
        assert needle in text, needle
    ds = load_dataset(root, "all", drop_bad=True, progress=False)
    assert [r.image_path.name for r in ds.records] == ["raccoon-1.jpg"]  # unreadable label file: image dropped
    rec = ds.records[0]  # 650x417
    assert kinds(ds, "fixed") == [("fixed", "duplicate box"), ("fixed", "box clipped")]
    np.testing.assert_allclose(rec.boxes, [[0.4 * 650, 0.4 * 417, 0.6 * 650, 0.6 * 417], [0.85 * 650, 0.4 * 417, 650, 0.6 * 417]], rtol=1e-6)


# ----------------------------------------------------------------------------- report and statistics


def test_histograms_by_hand():
    boxes = [[0, 0, 10, 10], [0, 0, 20, 80], [0, 0, 200, 50], [0, 0, 5, 5]]
    rec = Record("a.jpg", 1, 300, 300, boxes, [0, 1, 1, 0], [False, False, False, True])
    s = dataset_stats(DetectionDataset([rec, Record("b.jpg", 2, 10, 10)], ["x", "y", "z"]))
    # sides sqrt(w*h): 10, 40, 100 (the ignored 5x5 box is not counted)
    assert s.size_counts == [0, 1, 0, 1, 0, 1, 0, 0, 0] and len(s.size_counts) == len(SIZE_EDGES) - 1
    # aspects h/w: 1, 4, 1/4 -> bins [1/sqrt2, sqrt2), [4, 8), [1/4, 1/2)
    assert s.aspect_counts == [0, 0, 1, 0, 1, 0, 0, 1, 0] and len(s.aspect_counts) == len(ASPECT_EDGES) - 1
    assert s.coco_buckets == (1, 1, 1)  # areas 100, 1600, 10000
    assert (s.boxes, s.ignored, s.images_without_boxes) == (3, 1, 1)
    assert s.boxes_per_class == [1, 2, 0] and s.images_per_class == [1, 1, 0] and s.classes_used == 2


def test_check_mode_values():
    assert (check_mode(True), check_mode(False), check_mode("header")) == ("full", "none", "header")
    with pytest.raises(ValueError, match="check must be"):
        check_mode("quick")


def test_image_info_header_only_is_consistent_with_decode(coco128):
    path = coco128 / "train2017" / IMAGES[0]
    info = image_info(path)
    assert (info.width, info.height, info.mode) == (640, 480, "RGB")
    assert read_image(path).shape == (3, info.height, info.width)


# ----------------------------------------------------------------------------- command line


def test_check_data_command_on_raccoon(tmp_path, raccoon, capsys):
    assert main(["check-data", str(raccoon), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "images 200   boxes 217" in out and "raccoon     217 (200)" in out and out.rstrip().endswith("OK")
    problems = json.loads((tmp_path / "r" / "problems.json").read_text())
    assert problems["stats"]["images"] == 200 and problems["stats"]["classes"] == {"raccoon": 217}
    assert sum(problems["stats"]["size_counts"]) == 217 and problems["issues"] == []
    with Image.open(tmp_path / "r" / "boxes.png") as png:
        assert png.format == "PNG" and png.size == (1200, 900)
    assert "box size sqrt(w*h)" in (tmp_path / "r" / "report.txt").read_text()


def test_check_data_command_exit_codes(mini, capsys):
    path = mini.image("000000000030.jpg")
    path.write_bytes(path.read_bytes()[:3000])
    assert main(["check-data", str(mini.root), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "error - unreadable image: 1" in out and "000000000030.jpg" in out and "training would stop here" in out
    assert main(["check-data", str(mini.root), "--quiet", "--drop-bad"]) == 0
    assert "1 images, 2 boxes dropped" in capsys.readouterr().out
    assert main(["check-data", str(mini.root / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: dataset not found" in err


def test_convert_command(tmp_path, raccoon, capsys):
    assert main(["convert", str(raccoon), str(tmp_path / "y"), "--to", "yolo", "--split", "test", "--quiet"]) == 0
    assert "test: 40 images, 44 boxes" in capsys.readouterr().out
    assert len(list((tmp_path / "y" / "labels" / "test").glob("*.txt"))) == 40
    assert main(["convert", str(raccoon), str(tmp_path / "y"), "--to", "coco", "--quiet"]) == 1
    assert "not empty" in capsys.readouterr().err
