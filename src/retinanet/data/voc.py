"""Pascal VOC xml: reader and writer, plus split lists (ImageSets txt or a csv).

Pixel convention: VOC corners are 1-based pixel *indices*, both ends inclusive (the
original devkit's convention: a box covering a whole W-wide image is xmin=1, xmax=W).
In the library's continuous pixel coordinates that box is [0, W]. So

    read:  x1 = xmin - 1,   y1 = ymin - 1,   x2 = xmax,   y2 = ymax
    write: xmin = round(x1) + 1,  ymin = round(y1) + 1,  xmax = round(x2),  ymax = round(y2)

(Detectron2 reads VOC the same way.) Integer files round-trip exactly; non-integer
boxes (from COCO or YOLO) are rounded to whole pixels when written, which moves each
corner by at most half a pixel. ``difficult`` objects become ``ignore=True``.

Files are parsed with defusedxml: a DTD, an entity declaration or an external reference
is refused (a per-file 'malformed annotation'), whatever the expat version. A
``<filename>`` must name a file inside the image folder (files.py: confinement).
"""

from __future__ import annotations

import csv
import io
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse
from defusedxml.ElementTree import parse as parse_xml
from tqdm import tqdm

from .dataset import DetectionDataset, Record
from .files import (
    file_inside,
    header_size,
    inside_root,
    lies_inside,
    output_path,
    place_images,
    read_annotation,
    report_outside,
)
from .images import IMAGE_SUFFIXES, is_file
from .report import DataError, DataReport

VOC_ORIGIN = 1  # VOC pixel indices start at 1
CORNERS = ("xmin", "ymin", "xmax", "ymax")
# Column naming the image in a split csv: TF Object Detection API csvs (raccoon) use 'filename'.
CSV_FILE_COLUMNS = ("filename", "file_name", "image", "image_path", "path")


@dataclass
class VocObject:
    name: str
    difficult: bool
    corners: tuple[float, float, float, float]
    """xmin, ymin, xmax, ymax as written in the file (1-based, inclusive)."""


@dataclass
class VocFile:
    path: Path
    filename: str
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def parse_voc_xml(path: Path, report: DataReport) -> VocFile | None:
    """One annotation file; None (with an error in ``report``) when it cannot be used."""
    try:
        root = parse_xml(io.BytesIO(read_annotation(path)), forbid_dtd=True, forbid_entities=True, forbid_external=True).getroot()
    except DataError as e:
        report.error("malformed annotation", path, str(e).removeprefix(f"{path}: "))
        return None
    except DefusedXmlException as e:
        why = f"refused: a DTD, entity or external reference ({type(e).__name__}); annotation files need none"
        report.error("malformed annotation", path, why)
        return None
    except ET.ParseError as e:
        report.error("malformed annotation", path, f"not well-formed XML ({e})")
        return None
    except (ValueError, LookupError) as e:  # an encoding expat cannot use (multi-byte, unknown, not text)
        report.error("malformed annotation", path, f"cannot decode the XML ({type(e).__name__}: {e})")
        return None
    except OSError as e:
        report.error("malformed annotation", path, f"cannot read ({e})")
        return None
    if root.tag != "annotation":
        report.error("malformed annotation", path, f"root element is <{root.tag}>, expected <annotation>")
        return None
    filename = _text(root, "filename") or ""
    size = root.find("size")
    try:
        width, height = int(float(_text(size, "width") or 0)), int(float(_text(size, "height") or 0))
    except (ValueError, OverflowError):  # OverflowError: inf
        report.warning("malformed annotation", path, "<size> is not numeric; using the image's own size")
        width = height = 0
    vf = VocFile(path, filename, width, height)
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name")
        if not name:
            report.error("malformed annotation", path, f"object {k} has no <name>")
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            report.error("malformed annotation", path, f"object {k} ({name}) has no <bndbox>")
            continue
        values = [_text(bnd, c) for c in CORNERS]
        try:
            corners = tuple(float(v) for v in values)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            shown = ", ".join(f"{c}={v!r}" for c, v in zip(CORNERS, values))
            report.error("malformed annotation", path, f"object {k} ({name}): <bndbox> needs 4 numbers, got {shown}")
            continue
        try:
            difficult = bool(int(float(_text(obj, "difficult") or 0)))
        except (ValueError, OverflowError):
            report.warning("malformed annotation", path, f"object {k} ({name}): <difficult> is not 0/1; taken as 0")
            difficult = False
        vf.objects.append(VocObject(name, difficult, corners))  # type: ignore[arg-type]
    return vf


def read_split_list(path: str | Path) -> list[str]:
    """Image keys of a split: an ImageSets-style txt (one id per line; extra columns such
    as VOC's per-class '-1' are ignored) or a csv with a 'filename' column (one row per box
    in TF Object Detection API csvs; repeated names count once)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    keys: list[str] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            column = next((c for c in CSV_FILE_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                raise DataError(
                    f"{path}: no column naming the image (one of {', '.join(CSV_FILE_COLUMNS)}); "
                    f"columns are {reader.fieldnames}"
                )
            keys = [row[column].strip() for row in reader if row.get(column)]
    else:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line.split()[0])
    return list(dict.fromkeys(keys))


def _holds(folder: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether ``folder`` has a file directly in it ending in one of ``suffixes``."""
    return folder.is_dir() and any(p.suffix.lower() in suffixes for p in folder.iterdir())


VOC_PROBE = 3  # xml files of a folder whose root element is looked at to call it VOC


def _annotation_root(path: Path) -> bool:
    """Whether the xml file's root element is <annotation> (only its start is parsed, by
    defusedxml: a DTD, an entity or an external reference counts as not)."""
    try:
        for _, element in iterparse(str(path), events=("start",), forbid_dtd=True, forbid_entities=True, forbid_external=True):
            return element.tag == "annotation"
    except (DefusedXmlException, ET.ParseError, ValueError, LookupError, OSError):
        pass
    return False


def holds_voc_xml(folder: Path) -> bool:
    """Whether one of the first few .xml files in ``folder`` (sorted) is a VOC annotation:
    a licence, CVAT metadata or other xml file does not make a folder VOC."""
    if not folder.is_dir():
        return False
    xml = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml")
    return any(_annotation_root(p) for p in xml[:VOC_PROBE])


def xml_folder_beside_images(root: Path) -> Path | None:
    """The one sub-folder of ``root`` holding VOC .xml files, when another sub-folder holds
    images (``annots/`` + ``images/``, as some public datasets ship VOC files); else None."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    xml = [d for d in subdirs if holds_voc_xml(d)]
    if len(xml) == 1 and any(_holds(d, IMAGE_SUFFIXES) for d in subdirs if d != xml[0]):
        return xml[0]
    return None


def _within(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or lies inside it (files.lies_inside)."""
    return os.path.abspath(path) == os.path.abspath(root) or lies_inside(path, root)


def guess_images_dir(ann_dir: Path, probe: list[str], root: Path | None = None) -> Path:
    """JPEGImages (the devkit), images, the annotation folder itself, its parent, another
    folder beside it, or the annotation folder's own JPEGImages or images: the first holding
    one of the ``probe`` names (names leaving a candidate do not count). Only ``root`` (the
    dataset folder the user named; default, or when the annotations lie outside it: their
    parent) and folders inside it are candidates: xml files directly in the user's folder
    never lead to the folders beside it."""
    parent = ann_dir.parent
    if root is None or not _within(ann_dir, root):
        root = parent
    candidates = [parent / "JPEGImages", parent / "images", ann_dir, parent]
    candidates += sorted(d for d in parent.iterdir() if d.is_dir() and d not in candidates) if parent.is_dir() else []
    candidates += [ann_dir / "JPEGImages", ann_dir / "images"]
    candidates = [c for c in candidates if _within(c, root)]
    for c in candidates:
        if any(file_inside(c, f) for f in probe):
            return c
    return next((c for c in candidates if c.is_dir() and c != ann_dir), root)


def _find_image(images_dir: Path, vf: VocFile) -> Path:
    """images_dir/<filename>; failing that, a file with the same stem and an image suffix
    (tools disagree on whether <filename> carries the extension)."""
    if vf.filename and is_file(images_dir / vf.filename):
        return images_dir / vf.filename
    stem = Path(vf.filename).stem if vf.filename else vf.path.stem
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        if is_file(images_dir / (stem + suffix)):
            return images_dir / (stem + suffix)
    return images_dir / (vf.filename or stem + ".jpg")  # missing: validation reports it


def _select(
    xml_files: list[Path], parsed: list[VocFile | None], split_list: str | Path, ann_dir: Path, report: DataReport
) -> list[int]:
    """Sorted indices of the annotation files a split list names (by file stem or by the
    image's <filename> stem); names without an xml are reported."""
    index: dict[str, int] = {}
    for i, (p, vf) in enumerate(zip(xml_files, parsed)):
        index.setdefault(p.stem, i)
        if vf and vf.filename:
            index.setdefault(Path(vf.filename).stem, i)
    selected = []
    for key in read_split_list(split_list):
        i = index.get(Path(key).stem)
        if i is None:
            report.error("missing annotation", split_list, f"{key} is listed but {ann_dir} has no {Path(key).stem}.xml")
        else:
            selected.append(i)
    return sorted(set(selected))


def _image_path(vf: VocFile, images_dir: Path, allow_outside_root: bool, report: DataReport) -> Path | None:
    """The image of ``vf``; None (reported, never looked at) when its <filename> leaves
    ``images_dir`` and ``allow_outside_root`` is off."""
    if vf.filename and not allow_outside_root and inside_root(images_dir, vf.filename) is None:
        report_outside(report, vf.path, "<filename>", vf.filename, images_dir)
        return None
    return _find_image(images_dir, vf)


def _record(vf: VocFile, image_id: int, path: Path, label_of: dict[str, int], report: DataReport) -> Record:
    """One parsed file and its image ``path`` as a Record in library coordinates; objects
    of a class not in ``label_of`` (class name -> label) are reported and left out."""
    width, height = vf.width, vf.height
    if width <= 0 or height <= 0:
        width, height = header_size(path)  # some tools write <width>0</width>
    boxes, labels, ignore = [], [], []
    for k, o in enumerate(vf.objects):
        if o.name not in label_of:
            report.error("unknown class", vf.path, f"object {k}: class {o.name!r} is not in class_names {list(label_of)}")
            continue
        xmin, ymin, xmax, ymax = o.corners
        boxes.append([xmin - VOC_ORIGIN, ymin - VOC_ORIGIN, xmax, ymax])
        labels.append(label_of[o.name])
        ignore.append(o.difficult)
    boxes_xyxy = np.array(boxes, np.float64).reshape(-1, 4)  # (G, 4)
    return Record(path, image_id, width, height, boxes_xyxy, labels, ignore, annotation_path=vf.path)


def read_voc(
    ann_dir: str | Path,
    images_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    split_list: str | Path | None = None,
    report: DataReport | None = None,
    progress: bool = True,
    allow_outside_root: bool = False,
    root: str | Path | None = None,
) -> DetectionDataset:
    """Read every ``*.xml`` in ``ann_dir`` (or only those a split list names).

    Image ids are the position in the sorted list of all annotation files, so an image
    keeps its id whichever split it is loaded in. Without ``class_names`` the classes
    are the sorted names found in all the folder's files (not just the split's), so
    train and test splits get the same labels. A ``<filename>`` leaving the image folder
    is an error (OUTSIDE_ROOT) unless ``allow_outside_root``. Without ``images_dir`` the
    images are looked for inside ``root``, the dataset folder (guess_images_dir).
    """
    ann_dir = Path(ann_dir)
    report = report if report is not None else DataReport(source=str(ann_dir))
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: annotation folder not found")
    xml_files = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml")
    if not xml_files:
        raise DataError(f"{ann_dir}: no .xml annotation files")
    parsed: list[VocFile | None] = [
        parse_voc_xml(p, report) for p in tqdm(xml_files, desc="reading VOC xml", unit="file", disable=not progress, leave=False)
    ]
    names = list(class_names) if class_names is not None else sorted({o.name for vf in parsed if vf for o in vf.objects})
    label_of = {n: k for k, n in enumerate(names)}
    # probe with names that stay inside a folder: an absolute one would match any candidate
    probe = islice((vf.filename for vf in parsed if vf and vf.filename and inside_root(ann_dir, vf.filename)), 5)
    images_dir = Path(images_dir) if images_dir is not None else guess_images_dir(ann_dir, list(probe), Path(root) if root else None)
    selected = range(len(xml_files)) if split_list is None else _select(xml_files, parsed, split_list, ann_dir, report)
    records = []
    for i in selected:
        vf = parsed[i]  # None: did not parse, parse_voc_xml reported it
        if vf is None:
            report.dropped_reading += 1
            continue
        path = _image_path(vf, images_dir, allow_outside_root, report)  # None: outside, reported and counted
        if path is not None:
            records.append(_record(vf, i, path, label_of, report))
    return DetectionDataset(records, names, None, images_dir, "voc")


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def voc_corners(box: list[float]) -> tuple[int, int, int, int]:
    """Library xyxy (continuous) -> VOC 1-based inclusive integer corners; never empty."""
    x1, y1, x2, y2 = box
    xmin, ymin = _round_half_up(x1) + VOC_ORIGIN, _round_half_up(y1) + VOC_ORIGIN
    # A box thinner than a pixel could round to xmax < xmin: keep it one pixel wide.
    return xmin, ymin, max(_round_half_up(x2), xmin), max(_round_half_up(y2), ymin)


def voc_xml(record: Record, file_name: str, class_names: list[str]) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(record.width)
    ET.SubElement(size, "height").text = str(record.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for box, label, ign in zip(record.boxes.tolist(), record.labels.tolist(), record.ignore.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(ign))
        bnd = ET.SubElement(obj, "bndbox")
        for tag, v in zip(CORNERS, voc_corners(box)):
            ET.SubElement(bnd, tag).text = str(v)
    tree = ET.ElementTree(root)
    ET.indent(tree, "\t")
    return tree


def write_voc(
    dataset: DetectionDataset,
    out: str | Path,
    split: str = "train",
    copy_images: bool = False,
    image_names: dict[Path, str] | None = None,
    progress: bool = False,
) -> Path:
    """Write ``out/Annotations/<stem>.xml``, ``out/JPEGImages/<image>`` (symlinks unless
    ``copy_images``) and the split list ``out/ImageSets/Main/<split>.txt`` (returned)."""
    out = Path(out)
    images = output_path(out, out / "JPEGImages")
    names = place_images(dataset, images, f"writing VOC {split}", copy_images, image_names, progress)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    stems = [Path(name).stem for name in names]
    for r, name, stem in zip(dataset.records, names, stems):
        xml_path = output_path(out, out / "Annotations" / f"{stem}.xml")
        voc_xml(r, name, dataset.class_names).write(xml_path, encoding="unicode")
    list_path = output_path(out, out / "ImageSets" / "Main" / f"{split}.txt")
    list_path.parent.mkdir(parents=True, exist_ok=True)
    list_path.write_text("".join(s + "\n" for s in stems))
    return list_path
