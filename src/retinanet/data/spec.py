"""Where a dataset is and what it looks like: format detection, dataset spec files, and
``load_dataset``, the one call that turns any of them into a checked DetectionDataset.

A source is one of

- a folder, recognised by its layout (a ``dataset.yaml`` or ``data.yaml`` in it wins):
  COCO  ``annotations/*.json`` (``instances_*.json`` preferred), images beside them;
  VOC   ``*.xml`` in ``Annotations/``, ``annotations/``, the folder itself, or the one
        sub-folder of xml files beside an image folder (``annots/`` + ``images/``), the
        first few of them looked at for an ``<annotation>`` root, with split lists in
        ``ImageSets/Main/<split>.txt`` or ``[data/]<split>_labels.csv``;
  YOLO  ``images/`` + ``labels/``, split by sub-folders (``images/train``, ...); checked
        before VOC when labels/ holds .txt files (a licence or CVAT xml beside them);
- a COCO ``.json`` file;
- a spec ``.yaml``: our dataset spec or an Ultralytics ``data.yaml`` (see docs/datasets.md)::

      format: voc                 # coco | voc | yolo (default: detected from root)
      root: ../raccoon            # relative to this file (alias: path); default: its folder
      names: [raccoon]            # label order (list, or {index: name}); optional
      train: {annotations: annotations, images: images, list: data/train_labels.csv}
      test: data/test_labels.csv  # a string: COCO json / VOC list / YOLO image folder

A path of a data.yaml written on another machine that exists nowhere here (files.spec_path)
fails only when its split is loaded, so a missing test/ folder does not stop training.

Splits: a requested split is looked up by name (``val`` also matches ``val2017`` and
``valid``); ``all`` is every split together. A source that defines no splits (one COCO
json, a VOC folder without lists) gives all its images for any split, with a warning.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .check import check_mode, validate
from .coco import read_coco
from .dataset import DetectionDataset
from .files import MissingPath, read_annotation, spec_path, spec_root
from .report import DataError, DataReport
from .voc import holds_voc_xml, read_voc, xml_folder_beside_images
from .yolo import find_class_file, read_class_file, read_yolo

FORMATS = ("coco", "voc", "yolo")
SPEC_FILE = "dataset.yaml"  # ours; written by `retinanet convert`
YOLO_DATA_FILE = "data.yaml"  # Ultralytics'
ALL = "all"
SPLIT_ALIASES = {"valid": "val", "validation": "val"}
KNOWN_SPLITS = ("train", "val", "test", "trainval")
SPEC_KEYS = ("format", "root", "path", "names", "nc")
IGNORED_KEYS = ("download", "yaml_file", "channels", "roboflow")  # Ultralytics / Roboflow bookkeeping
SPLIT_KEYS = ("images", "annotations", "list", "labels")


@dataclass
class SplitSpec:
    images: list[Path] = field(default_factory=list)
    """COCO / VOC: the image folder (empty: found next to the annotations). YOLO: image
    folders and / or list files."""
    annotations: Path | None = None
    """COCO: the json file. VOC: the folder of xml files. YOLO: unused."""
    list: Path | None = None
    """VOC: the split's list of images (ImageSets txt or csv); None = every xml file."""
    labels: Path | None = None
    """YOLO: the labels folder matching ``images`` (default: images -> labels in the path)."""
    missing: str = ""
    """A path of this split that exists nowhere here (a data.yaml of another machine naming,
    say, a test/ folder that was not copied): the one-line error raised when the split is
    loaded, so the splits that are there still load."""


@dataclass
class DatasetSpec:
    format: str
    root: Path
    names: list[str] | None = None
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    file: Path | None = None
    """The spec file this came from, if any."""
    notes: list[str] = field(default_factory=list)
    """Paths of the spec file that did not exist and what was used instead (warnings)."""


def canonical_split(name: str) -> str:
    """'train2017' -> 'train', 'valid' -> 'val', 'instances_val2014' -> 'val'."""
    base = name.lower().removeprefix("instances_")
    base = re.sub(r"[_-]?\d+$", "", base) or base
    return SPLIT_ALIASES.get(base, base)


# ----------------------------------------------------------------------------- detection


def _coco_jsons(root: Path) -> list[Path]:
    ann = root / "annotations"
    if not ann.is_dir():
        return []
    jsons = sorted(p for p in ann.iterdir() if p.suffix.lower() == ".json")
    instances = [p for p in jsons if p.name.startswith("instances_")]
    return instances or jsons


def _voc_annotation_dir(root: Path) -> Path | None:
    for d in (root / "Annotations", root / "annotations", root):
        if holds_voc_xml(d):  # xml files with an <annotation> root, not any xml
            return d
    return xml_folder_beside_images(root)


def _yolo_layout(root: Path) -> bool:
    """images/ + labels/ holding .txt files (in sub-folders too): YOLO, whatever xml files lie about."""
    labels = root / "labels"
    return (root / "images").is_dir() and labels.is_dir() and next(labels.rglob("*.txt"), None) is not None


def _voc_lists(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    main = root / "ImageSets" / "Main"
    for s in KNOWN_SPLITS:
        for candidate in (
            main / f"{s}.txt",
            root / "data" / f"{s}_labels.csv",
            root / f"{s}_labels.csv",
            root / "data" / f"{s}.csv",
            root / f"{s}.csv",
        ):
            if candidate.is_file():
                found.setdefault(s, candidate)
    return found


def _keyed(paths: list[Path], name_of) -> dict[str, Path]:
    """Split key per path: the canonical name when unambiguous, else the raw name."""
    keys = [canonical_split(name_of(p)) for p in paths]
    return {(k if keys.count(k) == 1 else name_of(p)): p for k, p in zip(keys, paths)}


def detect_layout(root: Path) -> DatasetSpec:
    """Recognise a dataset folder's format and splits from its files."""
    jsons = _coco_jsons(root)
    if jsons:
        if len(jsons) == 1:
            return DatasetSpec("coco", root, splits={ALL: SplitSpec(annotations=jsons[0])})
        keyed = _keyed(jsons, lambda p: p.stem.removeprefix("instances_"))
        return DatasetSpec("coco", root, splits={k: SplitSpec(annotations=p) for k, p in keyed.items()})
    ann_dir = None if _yolo_layout(root) else _voc_annotation_dir(root)
    if ann_dir is not None:
        splits = {ALL: SplitSpec(annotations=ann_dir)}
        splits.update({s: SplitSpec(annotations=ann_dir, list=p) for s, p in _voc_lists(root).items()})
        return DatasetSpec("voc", root, splits=splits)
    images, labels = root / "images", root / "labels"
    if images.is_dir() and labels.is_dir():
        subdirs = sorted(d for d in images.iterdir() if d.is_dir())
        if subdirs:
            splits = {k: SplitSpec(images=[d]) for k, d in _keyed(subdirs, lambda d: d.name).items()}
        else:
            splits = {ALL: SplitSpec(images=[images])}
        class_file = find_class_file([root, labels])
        names = read_class_file(class_file) if class_file else None
        return DatasetSpec("yolo", root, names=names, splits=splits)
    raise DataError(
        f"{root}: cannot tell the dataset format. Expected annotations/*.json (COCO), Annotations/, "
        "annotations/ or one other folder of .xml files beside the images (VOC), images/ + labels/ (YOLO), "
        f"or a {SPEC_FILE} / {YOLO_DATA_FILE} naming the format"
    )


def resolve_source(source: str | Path) -> DatasetSpec:
    """A folder, COCO json or spec yaml -> DatasetSpec."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found")
    if path.is_dir():
        for name in (SPEC_FILE, YOLO_DATA_FILE):
            if (path / name).is_file():
                return read_spec(path / name)
        return detect_layout(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        root = path.parent.parent if path.parent.name.lower() == "annotations" else path.parent
        return DatasetSpec("coco", root, splits={ALL: SplitSpec(annotations=path)})
    if suffix in (".yaml", ".yml"):
        return read_spec(path)
    raise DataError(f"{path}: not a dataset; expected a folder, a COCO .json or a dataset .yaml")


# ----------------------------------------------------------------------------- spec files


def _parse_names(value: Any, where: Path) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        keys = sorted(value)
        if keys != list(range(len(keys))):
            raise DataError(f"{where}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        return [str(value[k]) for k in keys]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        names = [str(v) for v in value]
        if len(set(names)) != len(names):
            raise DataError(f"{where}: 'names' has duplicates")
        return names
    raise DataError(f"{where}: 'names' must be a list or a mapping {{index: name}}")


def _split_from_value(
    fmt: str, value: Any, root: Path, default: DatasetSpec | None, where: str, moved: tuple[Path, list[str]]
) -> SplitSpec:
    default_ann = None
    if default is not None and default.format == fmt and default.splits:
        default_ann = next(iter(default.splits.values())).annotations
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(SPLIT_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SPLIT_KEYS)}")
        images = value.get("images")
        image_list = images if isinstance(images, list) else ([images] if images else [])
        ss = SplitSpec(
            images=[spec_path(root, v, f"{where}.images", moved) for v in image_list],
            annotations=spec_path(root, value["annotations"], f"{where}.annotations", moved) if value.get("annotations") else None,
            list=spec_path(root, value["list"], f"{where}.list", moved) if value.get("list") else None,
            labels=spec_path(root, value["labels"], f"{where}.labels", moved) if value.get("labels") else None,
        )
    elif isinstance(value, list):
        if fmt != "yolo":
            raise DataError(f"{where}: a list of paths is only meaningful for YOLO image folders")
        ss = SplitSpec(images=[spec_path(root, v, where, moved) for v in value])
    else:
        p = spec_path(root, value, where, moved)
        if fmt == "coco":
            ss = SplitSpec(annotations=p)
        elif fmt == "voc":
            ss = SplitSpec(list=p) if p.suffix.lower() in (".txt", ".csv") else SplitSpec(annotations=p)
        else:
            ss = SplitSpec(images=[p])
    if fmt == "voc" and ss.annotations is None:
        ss.annotations = default_ann
    if fmt in ("coco", "voc") and ss.annotations is None:
        raise DataError(f"{where}: no annotations given and none found under the root")
    if fmt == "yolo" and not ss.images:
        raise DataError(f"{where}: a YOLO split needs its image folder(s)")
    return ss


def read_spec(path: str | Path) -> DatasetSpec:
    """A dataset spec / Ultralytics data.yaml -> DatasetSpec. Relative paths are relative
    to ``root`` (``path``), which is relative to the yaml's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_annotation(path).decode("utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping (format, root, names, train, val, ...)")
    notes: list[str] = []
    root = spec_root(path, data.get("root", data.get("path")), notes)
    if not root.is_dir():
        raise FileNotFoundError(f"{path}: root folder {root} not found")
    names = _parse_names(data.get("names"), path)
    if data.get("nc") is not None and names is not None and data["nc"] != len(names):
        raise DataError(f"{path}: nc is {data['nc']} but {len(names)} names are given")
    try:
        detected: DatasetSpec | None = detect_layout(root)
    except DataError:
        detected = None
    fmt = data.get("format")
    if fmt is None and detected is not None:
        fmt = detected.format
    elif fmt is None:
        # Ultralytics data.yaml: splits given as image folders / lists, no format key.
        ultralytics = any(
            isinstance(v, (str, list)) for k, v in data.items() if k not in SPEC_KEYS and k not in IGNORED_KEYS
        )
        if not ultralytics:
            raise DataError(f"{path}: add 'format: coco|voc|yolo' (it cannot be told from the files under {root})")
        fmt = "yolo"
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise DataError(f"{path}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    splits: dict[str, SplitSpec] = {}
    for key, value in data.items():
        if key in SPEC_KEYS or key in IGNORED_KEYS or value in (None, ""):
            continue  # Ultralytics leaves unused splits empty (`test:`)
        noted = len(notes)
        try:
            splits[str(key)] = _split_from_value(fmt, value, root, detected, f"{path}: {key}", (path.parent, notes))
        except MissingPath as e:  # an error only if this split is loaded
            del notes[noted:]
            splits[str(key)] = SplitSpec(missing=str(e))
    if not splits:
        if detected is None or detected.format != fmt:
            raise DataError(f"{path}: names no splits (train, val, test)")
        splits = detected.splits
    if names is None and detected is not None and detected.format == fmt:
        names = detected.names
    return DatasetSpec(fmt, root, names, splits, path, notes)


def write_spec(path: str | Path, fmt: str, class_names: list[str], splits: dict[str, dict[str, str]]) -> Path:
    """Write a dataset spec (``root: .``, so the folder can be moved)."""
    path = Path(path)
    doc: dict[str, Any] = {"format": fmt, "root": ".", "names": list(class_names)}
    doc.update(splits)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


# ----------------------------------------------------------------------------- loading


def available_splits(source: str | Path) -> list[str]:
    """The splits a source defines ('all' only when it defines none)."""
    splits = list(resolve_source(source).splits)
    named = [s for s in splits if s != ALL]
    return named or [ALL]


def _read_split(
    spec: DatasetSpec, ss: SplitSpec, class_names, report: DataReport, progress: bool, allow_outside_root: bool
) -> DetectionDataset:
    images = ss.images[0] if ss.images else None
    if spec.format == "coco":
        assert ss.annotations is not None
        return read_coco(ss.annotations, images, class_names, report, allow_outside_root)
    if spec.format == "voc":
        assert ss.annotations is not None
        return read_voc(ss.annotations, images, class_names, ss.list, report, progress, allow_outside_root, spec.root)
    return read_yolo(ss.images, class_names, ss.labels, report, progress, spec.root, allow_outside_root)


def _merge(parts: list[DetectionDataset], fmt: str, where: str) -> DetectionDataset:
    first = parts[0]
    for p in parts[1:]:
        if p.class_names != first.class_names or p.category_ids != first.category_ids:
            raise DataError(f"{where}: the splits have different classes and cannot be loaded together")
    seen: set[Path] = set()
    records = []
    for p in parts:
        for r in p.records:
            if r.image_path not in seen:  # an image in two splits (e.g. train == val) counts once
                seen.add(r.image_path)
                records.append(r)
    if fmt == "yolo":  # YOLO ids are positions within a split: renumber the union
        for i, r in enumerate(records):
            r.image_id = i
    return DetectionDataset(records, first.class_names, first.category_ids, first.root, fmt)


def read_split(
    spec: DatasetSpec,
    split: str,
    class_names: list[str] | None,
    report: DataReport,
    progress: bool = True,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """The unchecked dataset of one split (``all``: every split together)."""
    names = class_names if class_names is not None else spec.names
    source = spec.file or spec.root

    def read(ss: SplitSpec) -> DetectionDataset:
        if ss.missing:
            raise DataError(ss.missing)
        return _read_split(spec, ss, names, report, progress, allow_outside_root)

    if split in spec.splits:
        return read(spec.splits[split])
    if split == ALL:
        return _merge([read(ss) for ss in spec.splits.values()], spec.format, str(source))
    matches = [k for k in spec.splits if canonical_split(k) == canonical_split(split)]
    if len(matches) == 1:
        return read(spec.splits[matches[0]])
    if list(spec.splits) == [ALL]:
        ds = read(spec.splits[ALL])
        report.warning("no such split", source, f"the dataset defines no {split!r} split; using all {len(ds)} images")
        return ds
    raise DataError(f"{source}: no split {split!r}; available: {', '.join(list(spec.splits) + ([ALL] if ALL not in spec.splits else []))}")


def load_dataset(
    source: str | Path,
    split: str = "train",
    class_names: list[str] | None = None,
    check: bool | str = True,
    drop_bad: bool = False,
    progress: bool = True,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Read, check and return one split of a dataset.

    source       folder (format recognised from its layout), COCO json, dataset spec /
                 Ultralytics data.yaml
    split        'train', 'val', 'test', any split the source names, or 'all'
    class_names  label order to use (must cover every class in the files); default: the
                 spec's ``names``, else COCO categories by id / sorted VOC names / YOLO indices
    check        True or 'full': decode every image (finds truncated files);
                 'header': read image headers only (sizes, missing / non-image files);
                 False: trust the annotations (boxes and labels are still checked)
    drop_bad     False: any unusable entry raises DataError (one-line summary, full
                 report in ``.report``); True: drop those entries and go on
    progress     show tqdm progress bars
    allow_outside_root  read images that an annotation (VOC <filename>, COCO file_name,
                 a YOLO list line) places outside its image folder / dataset root; by
                 default those entries are errors ('path outside dataset root') and
                 their files are never opened

    The returned dataset's ``report`` (a DataReport) lists every problem, what was
    clipped or dropped, and the statistics.
    """
    mode = check_mode(check)
    spec = resolve_source(source)
    report = DataReport(source=str(source), split=split, format=spec.format, mode=mode)
    for note in spec.notes:  # a data.yaml from another machine: where its paths were found here
        report.warning("path not found", spec.file or source, note.removeprefix(f"{spec.file}: "))
        warnings.warn(note, stacklevel=2)
    ds = read_split(spec, split, class_names, report, progress, allow_outside_root)
    ds = validate(ds, report, mode, progress)
    if not ds.records:
        if report.errors:
            raise DataError(f"no usable images left. {report.summary()}", report)
        raise DataError(f"{report.where}: no images", report)
    if report.errors and not drop_bad:
        raise DataError(report.summary(), report)
    return ds
