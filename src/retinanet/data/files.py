"""File handling the COCO, VOC and YOLO modules share: where an annotation may point, the
image size when an annotation leaves it out, and putting a dataset's images into a
writer's output folder without touching anything outside it.

Confinement: an image path written *inside* an annotation (a VOC ``<filename>``, a COCO
``file_name``, a line of a YOLO list file) must stay inside the folder it is relative
to, or it is the error OUTSIDE_ROOT and the file is never opened or stat'ed. The test
is lexical (``..`` collapsed, absolute names taken as they are): symlinks the user put
inside the folder are followed as laid out. Paths the user writes in a spec or
data.yaml are the user's choice and are not confined; but when such a path is absolute
and does not exist (a data.yaml written on another machine), its trailing components are
looked for only under the yaml's folder (spec_path); found nowhere, it is MissingPath,
which the spec reader keeps until that split is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

from tqdm import tqdm

from .dataset import DetectionDataset
from .images import ImageError, image_info, is_file, place_image, unique_file_names
from .report import DataError, DataReport

OUTSIDE_ROOT = "path outside dataset root"  # the DataReport kind of an image path that leaves its folder


MAX_ANNOTATION_MB_ENV = "RETINANET_MAX_ANNOTATION_MB"
DEFAULT_MAX_ANNOTATION_MB = 2048  # COCO's train2017 json is 448 MB, LVIS's 1.1 GB


def max_annotation_bytes() -> int:
    """The largest annotation file read: RETINANET_MAX_ANNOTATION_MB megabytes, else 2048."""
    value = os.environ.get(MAX_ANNOTATION_MB_ENV, "").strip()
    try:
        limit = float(value) if value else DEFAULT_MAX_ANNOTATION_MB
    except ValueError:
        raise ValueError(f"{MAX_ANNOTATION_MB_ENV}={value!r} is not a number of megabytes") from None
    if limit <= 0:
        raise ValueError(f"{MAX_ANNOTATION_MB_ENV} must be a positive number of megabytes, got {value!r}")
    return int(limit * 2**20)


def read_annotation(path: Path) -> bytes:
    """The bytes of an annotation file (json, xml, txt, yaml), refused with a DataError
    naming it when it is above max_annotation_bytes(): a crafted file of many gigabytes
    would otherwise take all the memory before a line of it is checked. Never reads more
    than the limit, even from a file that grows or lies about its size."""
    limit = max_annotation_bytes()
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DataError(
            f"{path}: annotation file above the limit of {limit / 2**20:g} MB ({MAX_ANNOTATION_MB_ENV}); not read"
        )
    return data


def lies_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` as written lies strictly inside ``folder`` (taken as written and
    with its symlinks resolved). ``path`` is judged lexically: nothing is opened or stat'ed."""
    target = PurePath(os.path.normpath(os.path.abspath(path)))
    for base in {os.path.normpath(os.path.abspath(folder)), os.path.realpath(folder)}:
        if target != PurePath(base) and target.is_relative_to(base):
            return True
    return False


def inside_root(root: Path, name: str | Path) -> Path | None:
    """``root / name`` when it lies inside ``root`` (see lies_inside), else None: an
    absolute ``name`` or one that climbs out with ``..`` is refused."""
    path = root / name
    return path if lies_inside(path, root) else None


def foreign_parts(value: str) -> tuple[str, ...] | None:
    """The components after the anchor of an absolute path as written on any machine
    (``/content/drive/x``, ``C:\\data\\x``, ``\\\\server\\share\\x``), or None when
    ``value`` is relative."""
    windows = PureWindowsPath(value)
    if windows.drive or value.startswith("\\"):
        return windows.parts[1:]
    posix = PurePosixPath(value)
    return posix.parts[1:] if posix.is_absolute() else None


def relocated(parts: tuple[str, ...], folder: Path) -> Path | None:
    """An existing ``folder / <trailing components of parts>``, the longest such suffix
    first (``a/b/train/images`` -> ``folder/b/train/images``, then ``folder/train/images``,
    then ``folder/images``), or None. A suffix that would leave ``folder`` (``..``) is never
    tried: what a data.yaml from another machine names is looked for only under its folder."""
    for k in range(len(parts), 0, -1):
        candidate = folder.joinpath(*parts[-k:])
        if lies_inside(candidate, folder) and candidate.exists():
            return candidate
    return None


class MissingPath(DataError):
    """An absolute path of a spec written on another machine, found nowhere here."""


def spec_path(root: Path, value: Any, where: str, moved: tuple[Path, list[str]] | None = None) -> Path:
    """A path written in a spec or data.yaml: ``value`` relative to ``root``. ``moved`` =
    (the yaml's folder, notes): an absolute path that does not exist here (a data.yaml
    written on another machine) is looked for under the yaml's folder by its trailing
    components (relocated), and what was used instead is added to the notes."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: expected a path, got {value!r}")
    p = Path(value).expanduser()
    foreign = foreign_parts(str(p))
    if foreign is None:
        if not (root / p).exists() and value.startswith("../") and (root / value[3:]).exists():
            # Roboflow's data.yaml says '../train/images' for root/train/images; Ultralytics
            # accepts that the same way.
            return root / value[3:]
        return root / p
    if (p.is_absolute() and p.exists()) or moved is None:
        return p
    folder, notes = moved
    found = relocated(foreign, folder)
    if found is None:
        raise MissingPath(f"{where}: {value} does not exist, nor does any trailing part of it under {folder}")
    notes.append(f"{where}: {value} does not exist; using {found}")
    return found


def spec_root(path: Path, value: Any, notes: list[str]) -> Path:
    """The dataset root a spec names (``root`` / ``path``), relative to the yaml's folder;
    an absolute root of another machine found nowhere under that folder is the folder."""
    folder = path.parent
    if value in (None, ""):
        return folder
    try:
        return spec_path(folder, str(value), f"{path}: root", (folder, notes))
    except DataError:
        notes.append(f"{path}: root {value} does not exist; using the yaml's folder {folder}")
        return folder


def file_inside(root: Path, name: str | Path) -> bool:
    """Whether ``name`` lies inside ``root`` and is a file there; a name leaving ``root`` is
    not looked at (what the readers' image-folder guesses probe with)."""
    path = inside_root(root, name)
    return path is not None and is_file(path)


def report_outside(report: DataReport, annotation: str | Path, where: str, name: str | Path, root: Path) -> None:
    """Report an image path from an annotation that leaves its folder; the entry is dropped
    and counted in ``report.dropped_reading``."""
    report.error(
        OUTSIDE_ROOT,
        annotation,
        f"{where}: image path {str(name)!r} lies outside {root}; not read "
        "(set data.allow_outside_root=true if it points elsewhere on purpose)",
    )
    report.dropped_reading += 1


def output_path(out: Path, path: Path) -> Path:
    """``path`` after checking that it lies inside the output folder ``out`` with its folders
    resolved (a symlinked folder cannot lead a write elsewhere); DataError otherwise. The
    last part is not resolved: replacing a symlink removes the link, never its target."""
    target = path.parent.resolve() / path.name
    if path.name in ("", ".", "..") or not target.is_relative_to(out.resolve()):
        raise DataError(f"{path}: lies outside the output folder {out}; nothing is written there")
    return path


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as displayed, from its header; (0, 0) when the file is
    missing or unreadable, which validation then reports with the reason."""
    try:
        info = image_info(path)
    except ImageError:
        return 0, 0
    return info.width, info.height


def output_names(dataset: DetectionDataset) -> dict[Path, str]:
    """One flat-folder file name per image of ``dataset`` (see unique_file_names)."""
    paths = [r.image_path for r in dataset.records]
    return dict(zip(paths, unique_file_names(paths)))


def _is_source(dst: Path, src: Path) -> bool:
    """Whether ``dst`` is the source image itself (not a link to it): replacing it would
    destroy the photo."""
    return not dst.is_symlink() and dst.exists() and src.exists() and os.path.samefile(dst, src)


def place_images(
    dataset: DetectionDataset,
    folder: Path,
    desc: str,
    copy_images: bool = False,
    image_names: dict[Path, str] | None = None,
    progress: bool = False,
) -> list[str]:
    """Put every record's image into ``folder`` (symlinks unless ``copy_images``) under its
    name in ``image_names`` (default: output_names); returns the names in record order.
    Every target must lie inside ``folder``, and a source image is never replaced."""
    names = image_names if image_names is not None else output_names(dataset)
    placed = []
    for r in tqdm(dataset.records, desc=desc, unit="img", disable=not progress, leave=False):
        dst = output_path(folder, folder / names[r.image_path])
        if _is_source(dst, r.image_path):
            raise DataError(f"{dst}: is the source image {r.image_path}; it is not replaced")
        place_image(r.image_path, dst, copy_images)
        placed.append(names[r.image_path])
    return placed
