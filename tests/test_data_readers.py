"""Dataset readers, format detection, spec files, image decoding and format conversion,
checked against the real coco128 / raccoon data, pycocotools and hand-computed values."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps

from retinanet.data import DataError, available_splits, load_dataset
from retinanet.data.convert import convert
from retinanet.data.images import image_info, open_image, read_image
from retinanet.data.voc import parse_voc_xml, voc_corners
from retinanet.data.report import DataReport

COCO_JSON = "annotations/instances_train2017.json"


@pytest.fixture(scope="module")
def coco(coco128):
    return load_dataset(coco128, "all", progress=False)


@pytest.fixture(scope="module")
def raccoon_all(raccoon):
    return load_dataset(raccoon, "all", progress=False)


def by_name(ds):
    return {r.image_path.name: r for r in ds.records}


# ----------------------------------------------------------------------------- COCO


def test_coco128_counts(coco):
    assert len(coco) == 128
    assert coco.num_boxes(include_ignored=True) == 939
    assert coco.num_boxes() == 929  # 10 iscrowd kept as ignore regions
    assert sum(int(r.ignore.sum()) for r in coco.records) == 10
    assert coco.num_classes == 80 and coco.format == "coco"
    assert coco.category_ids[0] == 1 and coco.category_ids[-1] == 90 and coco.category_ids == sorted(coco.category_ids)
    stats = coco.report.stats
    assert stats.classes_used == 71
    assert sum(len(r.labels) == 0 for r in coco.records) == 2
    assert stats.image_modes == {"L": 1, "RGB": 127}
    assert coco.report.errors == []


def test_coco_box_conversion_by_hand(coco):
    # annotation 1774: image 74, category 18 (dog), bbox [61.87, 276.25, 296.42, 103.18], area 18234.62355
    rec = next(r for r in coco.records if r.image_id == 74)
    k = int(np.argmin(np.abs(rec.boxes[:, 0] - 61.87)))
    np.testing.assert_allclose(rec.boxes[k], [61.87, 276.25, 61.87 + 296.42, 276.25 + 103.18], atol=1e-4)
    # ids 1..11, then 13..17 come before 18: label 16
    assert rec.labels[k] == 16 and coco.class_names[16] == "dog" and coco.category_ids[16] == 18
    assert rec.areas[k] == pytest.approx(18234.62355)


def test_coco_matches_pycocotools(coco, coco128):
    from pycocotools.coco import COCO

    ref = COCO(str(coco128 / COCO_JSON))
    cat_ids = sorted(ref.getCatIds())
    for rec in coco.records:
        info = ref.loadImgs(rec.image_id)[0]
        assert (rec.width, rec.height) == (info["width"], info["height"])
        anns = ref.loadAnns(ref.getAnnIds(imgIds=rec.image_id, iscrowd=None))
        expect = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
        np.testing.assert_allclose(rec.boxes, expect, atol=1e-3)
        assert rec.labels.tolist() == [cat_ids.index(a["category_id"]) for a in anns]
        assert rec.ignore.tolist() == [bool(a["iscrowd"]) for a in anns]


def test_coco_greyscale_image_reads_as_rgb(coco):
    grey = [r for r in coco.records if Image.open(r.image_path).mode == "L"]
    assert len(grey) == 1
    img = read_image(grey[0].image_path)
    assert img.shape == (3, grey[0].height, grey[0].width)
    assert (img[0] == img[1]).all() and (img[1] == img[2]).all()
    np.testing.assert_array_equal(img[0].numpy(), np.asarray(Image.open(grey[0].image_path)))


def test_coco_json_file_and_split_fallback(coco128):
    # A single json is the whole dataset: any split gives all of it, with a warning.
    ds = load_dataset(coco128 / COCO_JSON, "val", check=False, progress=False)
    assert len(ds) == 128
    assert [i.kind for i in ds.report.issues] == ["no such split"]
    assert available_splits(coco128) == ["all"]


def test_coco_class_names_select_and_order(coco128):
    with pytest.raises(DataError, match="unknown class"):
        load_dataset(coco128, "all", class_names=["dog", "person"], check=False, progress=False)
    ds = load_dataset(coco128, "all", class_names=["dog", "person"], check=False, drop_bad=True, progress=False)
    assert ds.class_names == ["dog", "person"] and ds.category_ids == [18, 1]
    data = json.loads((coco128 / COCO_JSON).read_text())
    n_dog = sum(a["category_id"] == 18 for a in data["annotations"])
    n_person = sum(a["category_id"] == 1 for a in data["annotations"])
    labels = np.concatenate([r.labels for r in ds.records])
    assert (labels == 0).sum() == n_dog and (labels == 1).sum() == n_person
    with pytest.raises(DataError, match="'unicorn'"):
        load_dataset(coco128, "all", class_names=["unicorn"], check=False, progress=False)


# ----------------------------------------------------------------------------- VOC


def test_raccoon_counts_and_splits(raccoon, raccoon_all):
    train = load_dataset(raccoon, "train", progress=False)
    test = load_dataset(raccoon, "test", check="header", progress=False)
    assert (len(train), train.num_boxes()) == (160, 173)
    assert (len(test), test.num_boxes()) == (40, 44)
    assert (len(raccoon_all), raccoon_all.num_boxes()) == (200, 217)
    train_ids = {r.image_id for r in train.records}
    test_ids = {r.image_id for r in test.records}
    assert not train_ids & test_ids and train_ids | test_ids == {r.image_id for r in raccoon_all.records}
    # ids do not depend on the split loaded
    assert {r.image_path: r.image_id for r in train.records}.items() <= {r.image_path: r.image_id for r in raccoon_all.records}.items()
    assert raccoon_all.class_names == ["raccoon"] and raccoon_all.format == "voc"
    assert raccoon_all.report.stats.image_modes == {"L": 3, "RGB": 197}
    assert available_splits(raccoon) == ["train", "test"]
    with pytest.raises(DataError, match="no split 'val'; available: all, train, test"):
        load_dataset(raccoon, "val", check=False, progress=False)


def test_raccoon_matches_csv_with_one_based_corners(raccoon, raccoon_all):
    """The csv is an independent copy of the xml boxes: x1 = xmin - 1, x2 = xmax."""
    records = by_name(raccoon_all)
    with open(raccoon / "data" / "raccoon_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 217
    for row in rows:
        rec = records[row["filename"]]
        assert (rec.width, rec.height) == (int(row["width"]), int(row["height"]))
        box = [float(row["xmin"]) - 1, float(row["ymin"]) - 1, float(row["xmax"]), float(row["ymax"])]
        assert (np.abs(rec.boxes - box).max(1) == 0).any(), row
    assert records["raccoon-1.jpg"].boxes.tolist() == [[80, 87, 522, 408]]  # xml: 81 88 522 408


def test_raccoon_greyscale_images_read_as_rgb(raccoon_all):
    grey = [r for r in raccoon_all.records if Image.open(r.image_path).mode == "L"]
    assert len(grey) == 3
    for r in grey:
        img = read_image(r.image_path)
        assert img.shape == (3, r.height, r.width) and (img[0] == img[2]).all()


def test_voc_difficult_is_ignore_and_class_names(tmp_path, raccoon):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    src = (raccoon / "annotations" / "raccoon-1.xml").read_text()
    (ann / "raccoon-1.xml").write_text(
        src.replace("<difficult>0</difficult>", "<difficult>1</difficult>").replace("<folder>images", "<folder>x")
    )
    (tmp_path / "JPEGImages").mkdir()
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", tmp_path / "JPEGImages")
    ds = load_dataset(tmp_path, "all", progress=False)
    assert ds.records[0].ignore.tolist() == [True] and ds.num_boxes() == 0 and ds.num_boxes(True) == 1
    ds = load_dataset(tmp_path, "all", class_names=["cat", "raccoon"], progress=False)
    assert ds.records[0].labels.tolist() == [1]


def test_voc_corner_writer_rounds_and_never_empties():
    assert voc_corners([0.0, 0.0, 640.0, 480.0]) == (1, 1, 640, 480)
    assert voc_corners([80.0, 87.0, 522.0, 408.0]) == (81, 88, 522, 408)
    assert voc_corners([10.4, 5.5, 20.6, 9.49]) == (11, 7, 21, 9)  # half up
    assert voc_corners([10.2, 3.0, 10.4, 9.0]) == (11, 4, 11, 9)  # sub-pixel wide: one pixel, not zero


# ----------------------------------------------------------------------------- YOLO


def _yolo_dataset(tmp_path: Path, raccoon: Path) -> Path:
    """images/{train,val} + labels/{train,val} from real raccoon images, with a data.yaml."""
    for split, names in (("train", ["raccoon-1.jpg", "raccoon-10.jpg"]), ("val", ["raccoon-100.jpg"])):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for n in names:
            shutil.copy(raccoon / "images" / n, tmp_path / "images" / split / n)
    return tmp_path


def test_yolo_reader_by_hand(tmp_path, raccoon):
    root = _yolo_dataset(tmp_path, raccoon)
    # raccoon-1.jpg is 650x417
    (root / "labels/train/raccoon-1.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"
        "\n"
        "1 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n"  # polygon -> its box
    )
    # raccoon-10.jpg has no label file: an image without objects
    (root / "labels/val/raccoon-100.txt").write_text("")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": {0: "a", 1: "b"}}))
    ds = load_dataset(root, "train", progress=False)
    assert ds.format == "yolo" and ds.class_names == ["a", "b"]
    r1, r10 = ds.records
    assert (r1.width, r1.height) == (650, 417)
    np.testing.assert_allclose(r1.boxes, [[0.4 * 650, 0.3 * 417, 0.6 * 650, 0.7 * 417], [65, 41.7, 195, 125.1]], rtol=1e-6)
    assert r1.labels.tolist() == [0, 1]
    assert len(r10.labels) == 0
    assert [i.kind for i in ds.report.issues] == ["no label file"]
    val = load_dataset(root / "data.yaml", "val", progress=False)
    assert len(val) == 1 and len(val.records[0].labels) == 0
    assert len(load_dataset(root, "all", progress=False)) == 3
    assert available_splits(root) == ["train", "val"]


def test_yolo_without_yaml_uses_folders_and_class_file(tmp_path, raccoon):
    root = _yolo_dataset(tmp_path, raccoon)
    (root / "labels/val/raccoon-100.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    ds = load_dataset(root, "valid", progress=False)  # 'valid' is an alias of 'val'
    assert ds.class_names == ["0", "1", "2"]
    assert "no class names" in {i.kind for i in ds.report.issues}
    (root / "classes.txt").write_text("x\ny\nz\n")
    assert load_dataset(root, "val", progress=False).class_names == ["x", "y", "z"]


def test_yolo_list_file_and_darknet_layout(tmp_path, raccoon):
    (tmp_path / "imgs").mkdir()
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", tmp_path / "imgs")
    (tmp_path / "imgs" / "raccoon-1.txt").write_text("0 0.5 0.5 1 1\n")  # darknet: label beside the image
    (tmp_path / "train.txt").write_text("imgs/raccoon-1.jpg\n")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"format": "yolo", "train": "train.txt", "names": ["r"]}))
    ds = load_dataset(tmp_path / "spec.yaml", "train", progress=False)
    np.testing.assert_allclose(ds.records[0].boxes, [[0, 0, 650, 417]])


def test_roboflow_style_data_yaml(tmp_path, raccoon):
    """Roboflow exports root/{train,valid}/{images,labels} with a data.yaml saying
    '../train/images' and a 'roboflow' block; no format key: read as YOLO."""
    for split, n in (("train", 1), ("valid", 2)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir()
        shutil.copy(raccoon / "images" / f"raccoon-{n}.jpg", tmp_path / split / "images")
        (tmp_path / split / "labels" / f"raccoon-{n}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    doc = {"train": "../train/images", "val": "../valid/images", "nc": 1, "names": ["raccoon"],
           "roboflow": {"workspace": "w", "project": "p", "version": 1}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(doc))
    val = load_dataset(tmp_path, "val", progress=False)
    assert val.format == "yolo" and [r.image_path.name for r in val.records] == ["raccoon-2.jpg"]
    w, h = val.records[0].width, val.records[0].height
    np.testing.assert_allclose(val.records[0].boxes, [[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], rtol=1e-6)


def test_yolo_box_refers_to_displayed_exif_orientation(tmp_path):
    """A 40x20 stored image with EXIF orientation 6 displays as 20x40; YOLO's normalised
    box is scaled by the displayed size, matching what read_image returns."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (9, 9, 9)).save(tmp_path / "images" / "a.jpg", exif=exif)
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.25 1 0.5\n")
    ds = load_dataset(tmp_path, "all", class_names=["x"], progress=False)
    rec = ds.records[0]
    assert (rec.width, rec.height) == (20, 40)
    assert read_image(rec.image_path).shape == (3, 40, 20)
    np.testing.assert_allclose(rec.boxes, [[0, 0, 20, 20]])
    assert ds.report.stats.exif_rotated == 1


# ----------------------------------------------------------------------------- spec files and detection


def test_spec_file_for_raccoon(tmp_path, raccoon):
    spec = {
        "format": "voc",
        "root": str(raccoon),
        "names": ["raccoon"],
        "train": {"annotations": "annotations", "images": "images", "list": "data/train_labels.csv"},
        "test": "data/test_labels.csv",
    }
    (tmp_path / "raccoon.yaml").write_text(yaml.safe_dump(spec))
    train = load_dataset(tmp_path / "raccoon.yaml", "train", check=False, progress=False)
    test = load_dataset(tmp_path / "raccoon.yaml", "test", check=False, progress=False)
    assert (len(train), train.num_boxes(), len(test), test.num_boxes()) == (160, 173, 40, 44)
    assert len(load_dataset(tmp_path / "raccoon.yaml", "all", check=False, progress=False)) == 200


def test_spec_file_for_coco_same_json_twice(tmp_path, coco128):
    spec = {"root": str(coco128), "train": COCO_JSON, "val": {"annotations": COCO_JSON, "images": "train2017"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))
    assert len(load_dataset(tmp_path / "c.yaml", "val", check=False, progress=False)) == 128
    # 'all' is every split together; an image in two splits counts once
    assert len(load_dataset(tmp_path / "c.yaml", "all", check=False, progress=False)) == 128


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"format": "voc", "train": {"images": "x", "annotationz": "y"}}, "unknown key.*annotationz.*valid keys"),
        ({"format": "pascal"}, "format 'pascal' is not one of coco, voc, yolo"),
        ({"format": "yolo", "names": {0: "a", 2: "b"}, "train": "images"}, "'names' keys must be 0..1"),
        ({"format": "yolo", "names": ["a", "b"], "nc": 3, "train": "images"}, "nc is 3 but 2 names"),
        ({"root": "nowhere", "format": "coco"}, "root folder .*nowhere not found"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_spec_files(tmp_path, spec, message):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises((DataError, FileNotFoundError), match=message):
        load_dataset(tmp_path / "s.yaml", progress=False)


def test_unrecognised_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_dataset(tmp_path / "missing", progress=False)
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset(tmp_path, progress=False)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="not a dataset"):
        load_dataset(tmp_path / "x.txt", progress=False)
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(DataError, match="bad.yaml: not valid YAML"):
        load_dataset(tmp_path / "bad.yaml", progress=False)


# ----------------------------------------------------------------------------- images


def _roundtrip(tmp_path, img: Image.Image, name: str = "x.png", **save) -> np.ndarray:
    img.save(tmp_path / name, **save)
    return read_image(tmp_path / name).permute(1, 2, 0).numpy()


def test_rgba_composited_on_black(tmp_path):
    a = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    out = _roundtrip(tmp_path, Image.fromarray(a, "RGBA"))
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 1].tolist() == [0, 0, 0]
    np.testing.assert_allclose(out[0, 2], np.array([200, 100, 50]) * 128 / 255, atol=1)


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * 759)
    img.putdata([0, 1, 2])
    assert _roundtrip(tmp_path, img).tolist() == [[[255, 0, 0], [0, 255, 0], [10, 20, 30]]]
    out = _roundtrip(tmp_path, img, "t.png", transparency=1)
    assert out.tolist() == [[[255, 0, 0], [0, 0, 0], [10, 20, 30]]]


def test_sixteen_bit_grey_scaled_to_eight(tmp_path):
    a = np.array([[0, 65535, 32768, 257 * 100]], np.uint16)
    Image.fromarray(a).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    out = read_image(tmp_path / "g.png")
    assert out[:, 0].T.tolist() == [[0] * 3, [255] * 3, [128] * 3, [100] * 3]


def test_grey_and_cmyk(tmp_path):
    assert _roundtrip(tmp_path, Image.new("L", (2, 2), 77)).reshape(-1, 3).tolist() == [[77, 77, 77]] * 4
    cmyk = _roundtrip(tmp_path, Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "c.tif")
    assert cmyk[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_matches_pil_reference(tmp_path, orientation, suffix):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:10, :20] = (255, 0, 0)
    a[10:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{suffix}"
    Image.fromarray(a).save(path, exif=exif)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = read_image(path).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, ref)
    info = image_info(path)  # header only, no decode
    assert (info.height, info.width) == got.shape[:2] and info.orientation == orientation


def test_exif_rotation_6_by_hand(tmp_path):
    """Orientation 6 = rotate 90 degrees clockwise to display: the stored top-left block
    ends up top-right of a 20-wide, 40-tall image."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:10, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "o.png", exif=exif)
    got = np.asarray(open_image(tmp_path / "o.png"))
    assert got.shape == (40, 20, 3)
    assert (got[:20, 10:] == 255).all() and (got[20:] == 0).all() and (got[:, :10] == 0).all()


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("to", ["yolo", "voc", "coco"])
def test_convert_coco128_and_read_back(tmp_path, coco128, coco, to):
    result = convert(coco128, to, tmp_path / to, progress=False)
    assert result.splits == {"train": (128, 929 if to == "yolo" else 939)}
    back = load_dataset(tmp_path / to, "train", progress=False)
    assert back.class_names == coco.class_names  # all 80, in COCO id order, even the 9 unused
    assert back.report.issues == []
    tol = {"yolo": 1e-3, "voc": 0.5, "coco": 1e-3}[to]
    got = by_name(back)
    assert set(got) == {r.image_path.name for r in coco.records}
    for rec in coco.records:
        b = got[rec.image_path.name]
        keep = ~rec.ignore if to == "yolo" else np.ones(len(rec.labels), bool)  # YOLO has no crowd flag
        assert (b.width, b.height) == (rec.width, rec.height)
        assert b.labels.tolist() == rec.labels[keep].tolist()
        np.testing.assert_allclose(b.boxes, rec.boxes[keep], atol=tol)
        if to != "yolo":
            assert b.ignore.tolist() == rec.ignore.tolist()
        assert b.image_path.is_symlink() and b.image_path.resolve() == rec.image_path.resolve()
    if to == "coco":
        assert back.category_ids == coco.category_ids
        assert result.left_out_ignored == 0
    if to == "yolo":
        assert result.left_out_ignored == 10


def test_convert_raccoon_voc_roundtrip_is_exact_and_keeps_splits(tmp_path, raccoon):
    result = convert(raccoon, "voc", tmp_path / "v", copy_images=True, check="header", progress=False)
    assert result.splits == {"train": (160, 173), "test": (40, 44)}
    assert not (tmp_path / "v" / "JPEGImages" / "raccoon-1.jpg").is_symlink()
    report = DataReport()
    for xml in sorted((raccoon / "annotations").glob("*.xml")):
        a, b = parse_voc_xml(xml, report), parse_voc_xml(tmp_path / "v" / "Annotations" / xml.name, report)
        assert (a.width, a.height, a.filename) == (b.width, b.height, b.filename)
        assert [(o.name, o.difficult, o.corners) for o in a.objects] == [(o.name, o.difficult, o.corners) for o in b.objects]
    assert report.issues == []
    back = load_dataset(tmp_path / "v", "test", check=False, progress=False)
    assert (len(back), back.num_boxes()) == (40, 44)


def test_convert_refuses_non_empty_output_and_source_folder(tmp_path, raccoon):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        convert(raccoon, "yolo", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="unknown target format"):
        convert(raccoon, "tfrecord", tmp_path / "o2", progress=False)
