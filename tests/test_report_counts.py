"""What a data report counts: images a reader leaves out are dropped images too, and the
one-line summary only points at check-data when it could not show every problem."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image

from retinanet.data import DataError, load_dataset


def _yolo(root, good: int, broken: int):
    """root/images/train with ``good`` readable images (one box each) and ``broken`` files
    that are not images, all labelled; a data.yaml naming the split."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(good + broken):
        img = root / "images" / "train" / f"{i}.jpg"
        if i < good:
            Image.new("RGB", (32, 24), (200, 10, 10)).save(img)
        else:
            img.write_bytes(b"not a jpeg")
        (root / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"format": "yolo", "path": str(root), "train": "images/train", "names": ["x"]}))
    return root / "data.yaml"


def test_images_a_reader_leaves_out_are_counted_as_dropped(tmp_path):
    ds = load_dataset(_yolo(tmp_path, good=3, broken=2), "train", drop_bad=True, progress=False)
    assert len(ds) == 3
    assert ds.report.dropped_images == 2 and ds.report.dropped_boxes == 0
    assert "dropped: 2 images, 0 boxes" in ds.report.to_text()


def test_the_summary_points_at_check_data_only_when_it_cut_the_list(tmp_path):
    with pytest.raises(DataError) as one:
        load_dataset(_yolo(tmp_path / "one", good=1, broken=1), "train", progress=False)
    assert "1 unusable entry" in str(one.value) and "check-data" not in str(one.value)
    with pytest.raises(DataError) as many:
        load_dataset(_yolo(tmp_path / "many", good=1, broken=9), "train", progress=False)
    assert "and " in str(many.value) and "more" in str(many.value) and "lists them all" in str(many.value)


def test_voc_entries_left_out_while_reading_are_counted_once(tmp_path):
    """One good file, one whose <filename> leaves the image folder, one that does not parse."""
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    Image.new("RGB", (32, 24)).save(tmp_path / "JPEGImages" / "a.jpg")

    def xml(name):
        return (f"<annotation><filename>{name}</filename><size><width>32</width><height>24</height></size><object>"
                "<name>x</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")  # fmt: skip

    (tmp_path / "Annotations" / "a.xml").write_text(xml("a.jpg"))
    (tmp_path / "Annotations" / "b.xml").write_text(xml("/etc/hostname"))
    (tmp_path / "Annotations" / "c.xml").write_text("<annotation")
    ds = load_dataset(tmp_path, drop_bad=True, progress=False)
    assert len(ds) == 1 and ds.report.dropped_images == 2
