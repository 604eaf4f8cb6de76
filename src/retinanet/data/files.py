"""File handling the COCO, VOC and YOLO modules share: the image size when an annotation
leaves it out, and putting a dataset's images into a writer's output folder."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .dataset import DetectionDataset
from .images import ImageError, image_info, place_image, unique_file_names


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


def place_images(
    dataset: DetectionDataset,
    folder: Path,
    desc: str,
    copy_images: bool = False,
    image_names: dict[Path, str] | None = None,
    progress: bool = False,
) -> list[str]:
    """Put every record's image into ``folder`` (symlinks unless ``copy_images``) under its
    name in ``image_names`` (default: output_names); returns the names in record order."""
    names = image_names if image_names is not None else output_names(dataset)
    placed = []
    for r in tqdm(dataset.records, desc=desc, unit="img", disable=not progress, leave=False):
        place_image(r.image_path, folder / names[r.image_path], copy_images)
        placed.append(names[r.image_path])
    return placed
