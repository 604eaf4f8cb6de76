"""VOC xml is parsed with defusedxml: a DTD, entity or external reference is refused as a
per-file problem, whatever the expat version, and no referenced local file is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from retinanet.data import load_dataset
from retinanet.data.report import DataReport
from retinanet.data.voc import parse_voc_xml

SECRET = "SECRET-MARKER-7f3a"
BODY = (
    "<annotation><filename>{name}</filename><size><width>32</width><height>24</height></size>"
    "<object><name>x</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
    "</annotation>"
)


def billion_laughs(tmp_path: Path) -> str:
    levels = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    return f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY lol0 "lol">{levels}]>' + BODY.format(name="&lol9;")


def external_entity(tmp_path: Path) -> str:
    entity = f'<!ENTITY xxe SYSTEM "{(tmp_path / "secret.txt").as_uri()}">'
    return f'<?xml version="1.0"?><!DOCTYPE annotation [{entity}]>' + BODY.format(name="&xxe;")


def external_dtd(tmp_path: Path) -> str:
    (tmp_path / "evil.dtd").write_text(f'<!ENTITY xxe SYSTEM "{(tmp_path / "secret.txt").as_uri()}">')
    dtd = (tmp_path / "evil.dtd").as_uri()
    return f'<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "{dtd}">' + BODY.format(name="&xxe;")


@pytest.mark.parametrize("make", [billion_laughs, external_entity, external_dtd])
def test_hostile_xml_is_refused_and_reads_nothing(tmp_path, make):
    (tmp_path / "secret.txt").write_text(SECRET)
    root = tmp_path / "ds"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.new("RGB", (32, 24)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(BODY.format(name="a.jpg"))
    hostile = root / "Annotations" / "b.xml"
    hostile.write_text(make(tmp_path))

    report = DataReport()
    assert parse_voc_xml(hostile, report) is None
    (issue,) = report.issues
    assert issue.kind == "malformed annotation" and issue.file == str(hostile)
    assert issue.reason.startswith("refused:") and "\n" not in issue.reason

    ds = load_dataset(root, "all", drop_bad=True, progress=False)  # the other file still loads
    assert [r.image_path.name for r in ds.records] == ["a.jpg"]
    assert [(i.kind, i.file) for i in ds.report.errors] == [("malformed annotation", str(hostile))]
    assert SECRET not in ds.report.to_text() and SECRET not in str(ds.report.to_dict())
