"""Datasets as people have them: an Ultralytics data.yaml naming absolute paths of another
machine (aquarium, as published), and VOC xml files in a folder not named Annotations
(`annots/` + `images/`). Real data from ../shared/datasets; never copied into the project."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import yaml
from conftest import DATASETS, _require

from retinanet.cli import main
from retinanet.data import DataError, load_dataset
from retinanet.data.spec import resolve_source

AQUARIUM_COUNTS = {"train": 448, "val": 127, "test": 63}  # SOURCES.md: train / valid / test


@pytest.fixture(scope="module")
def aquarium():
    return _require(DATASETS / "aquarium")


def test_aquarium_data_yaml_loads_as_published_with_a_warning(aquarium):
    published = yaml.safe_load((aquarium / "data.yaml").read_text())
    assert published["train"].startswith("/content/drive/")  # the other machine's paths, unmodified
    for split, n in AQUARIUM_COUNTS.items():
        with pytest.warns(UserWarning, match="does not exist; using") as caught:
            # drop_bad: the test split ships two zero-size boxes (kept as published)
            ds = load_dataset(aquarium / "data.yaml", split, check="header", drop_bad=True, progress=False)
        assert len(ds) == n and ds.format == "yolo" and ds.num_classes == 7
        assert {r.image_path.parent for r in ds.records} == {aquarium / {"val": "valid"}.get(split, split) / "images"}
        text = " ".join(str(w.message) for w in caught)
        assert "aquarium_pretrain/train/images" in text and str(aquarium / "train" / "images") in text
        notes = [i for i in ds.report.issues if i.kind == "path not found"]
        assert len(notes) == 3 and all(i.level == "warning" for i in notes)


def test_the_command_line_says_it_in_one_line_per_path(aquarium, capsys):
    assert main(["check-data", str(aquarium / "data.yaml"), "--split", "val", "--header-only", "--quiet"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "does not exist; using" in line]
    assert len(notes) == 3 and all(line.startswith("retinanet check-data: warning: ") for line in notes)
    assert "images 127" in captured.out and "path not found" in captured.out  # the report lists it too


def test_longest_existing_suffix_wins_and_nothing_outside_the_yaml_folder(tmp_path, raccoon):
    root = tmp_path / "ds"
    for folder in (root / "b" / "train" / "images", root / "train" / "images", root / "train" / "labels"):
        folder.mkdir(parents=True)
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", root / "b" / "train" / "images")
    shutil.copy(raccoon / "images" / "raccoon-2.jpg", root / "train" / "images")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "/elsewhere/a/b/train/images", "names": ["x"]}))
    spec = resolve_source(root / "data.yaml")
    assert spec.splits["train"].images == [root / "b" / "train" / "images"]  # b/train/images before train/images
    assert spec.notes == [f"{root / 'data.yaml'}: train: /elsewhere/a/b/train/images does not exist; using {root / 'b/train/images'}"]

    # A suffix climbing out of the yaml's folder is never tried, even when it exists there.
    (tmp_path / "outside").mkdir()
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "/x/y/../../outside", "names": ["x"]}))
    assert "/x/y/../../outside does not exist" in resolve_source(root / "data.yaml").splits["train"].missing
    with pytest.raises(DataError) as e:
        load_dataset(root / "data.yaml", "train", progress=False)
    line = str(e.value)
    assert "\n" not in line and str(root / "data.yaml") in line and "/x/y/../../outside" in line


def test_missing_path_with_no_match_is_one_line_naming_yaml_and_path(tmp_path):
    (tmp_path / "data.yaml").write_text("train: /content/drive/MyDrive/gone/train/images\nnames: [a]\n")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "data.yaml", "train", progress=False)
    line = str(e.value)
    assert "\n" not in line and str(tmp_path / "data.yaml") in line and "/content/drive/MyDrive/gone/train/images" in line


def test_windows_paths_and_a_foreign_root_are_found_beside_the_yaml(tmp_path, raccoon):
    (tmp_path / "valid" / "images").mkdir(parents=True)
    shutil.copy(raccoon / "images" / "raccoon-3.jpg", tmp_path / "valid" / "images")
    doc = {"path": "/content/datasets/mine", "val": "C:\\Users\\me\\mine\\valid\\images", "names": ["raccoon"]}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(doc))
    spec = resolve_source(tmp_path / "data.yaml")
    assert "root /content/datasets/mine does not exist; using the yaml's folder" in spec.notes[0]
    assert spec.root == tmp_path and spec.splits["val"].images == [tmp_path / "valid" / "images"]


VOC_FILES = ["raccoon-1", "raccoon-2", "raccoon-10", "raccoon-100", "raccoon-101"]


def test_voc_xml_in_an_annots_folder_beside_images(tmp_path, raccoon):
    """The public kangaroo dataset's layout: annots/*.xml + images/*.jpg."""
    root = tmp_path / "kangaroo_like"
    (root / "annots").mkdir(parents=True)
    (root / "images").mkdir()
    for stem in VOC_FILES:
        shutil.copy(raccoon / "annotations" / f"{stem}.xml", root / "annots")
        shutil.copy(raccoon / "images" / f"{stem}.jpg", root / "images")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layout recognised, not a path guessed
        ds = load_dataset(root, "all", progress=False)
    assert ds.format == "voc" and len(ds) == len(VOC_FILES) and ds.class_names == ["raccoon"]
    assert {r.image_path.parent for r in ds.records} == {root / "images"}
    reference = {r.image_path.name: r for r in load_dataset(raccoon, "all", check=False, progress=False).records}
    for r in ds.records:
        np.testing.assert_array_equal(r.boxes, reference[r.image_path.name].boxes)
    assert ds.num_boxes() == sum(len(reference[f"{s}.jpg"].boxes) for s in VOC_FILES)


def test_two_xml_folders_or_no_images_are_not_guessed(tmp_path, raccoon):
    root = tmp_path / "ambiguous"
    for sub in ("a", "b", "images"):
        (root / sub).mkdir(parents=True)
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", root / "images")
    for sub in ("a", "b"):
        shutil.copy(raccoon / "annotations" / "raccoon-1.xml", root / sub)
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset(root, "all", progress=False)
    shutil.rmtree(root / "b")
    shutil.rmtree(root / "images")  # xml files with no image folder beside them: not a dataset
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset(root, "all", progress=False)



def _aquarium_part(aquarium, root, split: str, n: int) -> None:
    """The first n images of an aquarium split, with their labels, linked into root/<split>."""
    for sub in ("images", "labels"):
        (root / split / sub).mkdir(parents=True)
    for image in sorted((aquarium / split / "images").glob("*.jpg"))[:n]:
        (root / split / "images" / image.name).symlink_to(image)
        label = aquarium / split / "labels" / f"{image.stem}.txt"
        (root / split / "labels" / label.name).symlink_to(label)


def test_a_split_whose_path_exists_nowhere_fails_only_when_loaded(aquarium, tmp_path):
    """An aquarium-like data.yaml of another machine, copied without its test/ folder."""
    root = tmp_path / "aquarium_copy"
    _aquarium_part(aquarium, root, "train", 4)
    _aquarium_part(aquarium, root, "valid", 2)
    published = yaml.safe_load((aquarium / "data.yaml").read_text())
    (root / "data.yaml").write_text(yaml.safe_dump(published))  # train, val and test: /content/drive/... paths
    with pytest.warns(UserWarning, match="does not exist; using"):
        train = load_dataset(root / "data.yaml", "train", check="header", progress=False)
    with pytest.warns(UserWarning, match="does not exist; using"):
        val = load_dataset(root / "data.yaml", "val", check="header", progress=False)
    assert (len(train), len(val), train.num_classes) == (4, 2, 7)
    assert {r.image_path.parent for r in val.records} == {root / "valid" / "images"}
    with pytest.warns(UserWarning), pytest.raises(DataError) as e:
        load_dataset(root / "data.yaml", "test", check="header", progress=False)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{root / 'data.yaml'}: test: {published['test']} does not exist")


def test_xml_files_directly_in_the_named_folder_never_take_images_beside_it(tmp_path, raccoon):
    """x/ds/raccoon-1.xml names raccoon-1.jpg, which lies only in x/private: not used."""
    ds, private = tmp_path / "x" / "ds", tmp_path / "x" / "private"
    ds.mkdir(parents=True)
    private.mkdir()
    shutil.copy(raccoon / "annotations" / "raccoon-1.xml", ds)
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", private)
    with pytest.raises(DataError) as e:
        load_dataset(ds, "all", check="header", progress=False)
    assert "missing" in str(e.value) and "private" not in str(e.value)
    report = e.value.report
    assert report is not None and all("private" not in str(i.file) for i in report.issues)
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", ds)  # beside the xml, inside the named folder: used
    assert [r.image_path for r in load_dataset(ds, "all", check="header", progress=False).records] == [ds / "raccoon-1.jpg"]


def test_a_yolo_folder_with_other_xml_files_stays_yolo(tmp_path, aquarium, raccoon):
    root = tmp_path / "yolo"
    _aquarium_part(aquarium, tmp_path, "train", 3)
    (tmp_path / "train").rename(root)
    (root / "metadata").mkdir()
    (root / "metadata" / "annotations.xml").write_text("<annotations><version>1.1</version></annotations>")  # CVAT
    ds = load_dataset(root, "all", check="header", progress=False)
    assert ds.format == "yolo" and len(ds) == 3
    (root / "LICENSE.xml").write_text("<license><name>CC BY 4.0</name></license>")  # in the folder itself
    assert resolve_source(root).format == "yolo"
    shutil.copy(raccoon / "annotations" / "raccoon-1.xml", root / "metadata")  # even real VOC files: images/ + labels/ first
    assert resolve_source(root).format == "yolo"

    # xml files that are not VOC annotations beside images: not a VOC dataset either.
    other = tmp_path / "not_voc"
    (other / "images").mkdir(parents=True)
    (other / "meta").mkdir()
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", other / "images")
    (other / "meta" / "annotations.xml").write_text("<annotations><version>1.1</version></annotations>")
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset(other, "all", progress=False)
    shutil.copy(raccoon / "annotations" / "raccoon-1.xml", other / "meta")  # one VOC file among them: VOC
    assert resolve_source(other).format == "voc"
