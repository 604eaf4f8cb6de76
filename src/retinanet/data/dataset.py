"""The in-memory form every reader produces, whatever the file format.

A DetectionDataset is a list of Records plus the class list. Boxes are xyxy in the
original image's pixels (converted once, at the reader); labels are contiguous
0..K-1; ``category_ids[label]`` is the dataset's own id of that class (COCO's 1..90,
VOC/YOLO class index). ``ignore`` marks boxes that are regions to ignore rather than
objects to find: COCO ``iscrowd`` and VOC ``difficult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Record:
    image_path: Path
    image_id: int
    """The dataset's own image id (COCO id; running index for VOC / YOLO)."""
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    """(G, 4) float32 xyxy in original pixels."""
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    """(G,) int64 contiguous class index 0..K-1."""
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    """(G,) bool: crowd / difficult regions (neither positives nor negatives in training and evaluation)."""
    areas: np.ndarray | None = None
    """(G,) float areas for COCO evaluation's size buckets when the source gives them
    (COCO json: segmentation area); None means box area."""
    annotation_path: Path | None = None
    """The file this record's boxes were read from (xml / txt / json), for error messages."""

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if len(self.ignore) == 0 and len(self.labels):
            self.ignore = np.zeros(len(self.labels), bool)
        if not len(self.boxes) == len(self.labels) == len(self.ignore):
            raise ValueError(
                f"{self.image_path}: {len(self.boxes)} boxes, {len(self.labels)} labels, {len(self.ignore)} ignore flags"
            )


@dataclass
class DetectionDataset:
    records: list[Record]
    class_names: list[str]
    category_ids: list[int] | None = None
    """The dataset's own id per contiguous label; defaults to 0..K-1."""
    root: Path | None = None
    format: str = ""
    """'coco', 'voc', 'yolo' or 'synthetic'."""
    report: Any = None
    """``retinanet.data.report.DataReport`` of the validation that produced this dataset
    (problems found, what was clipped or dropped, statistics); None when not checked."""

    def __post_init__(self) -> None:
        if self.category_ids is None:
            self.category_ids = list(range(len(self.class_names)))
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.category_ids)} category ids for {len(self.class_names)} class names")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def num_boxes(self, include_ignored: bool = False) -> int:
        return int(sum(len(r.labels) if include_ignored else int((~r.ignore).sum()) for r in self.records))

    def to_coco(
        self,
        category_ids: list[int] | None = None,
        file_names: dict[Path, str] | None = None,
        decimals: int | None = None,
    ) -> dict[str, Any]:
        """Ground truth as a COCO ``instances`` dict, ready for pycocotools: the dataset's own
        category ids (or ``category_ids``), image paths as file names (or ``file_names``),
        coordinates exact (or rounded to ``decimals``). Ignored boxes become ``iscrowd: 1``,
        which COCOeval treats as regions where detections are neither true nor false positives."""
        ids = self.category_ids if category_ids is None else category_ids

        def rnd(v: float) -> float:
            return v if decimals is None else round(float(v), decimals)

        images, annotations = [], []
        for r in self.records:
            name = str(r.image_path) if file_names is None else file_names[r.image_path]
            images.append({"id": int(r.image_id), "file_name": name, "width": int(r.width), "height": int(r.height)})
            areas = r.areas.tolist() if r.areas is not None else [None] * len(r.labels)
            for box, label, ign, area in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist(), areas):
                x1, y1, x2, y2 = box
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(r.image_id),
                        "category_id": int(ids[label]),
                        "bbox": [rnd(x1), rnd(y1), rnd(w), rnd(h)],
                        "area": rnd(w * h if area is None else area),
                        "iscrowd": int(ign),
                    }
                )
        categories = [{"id": int(c), "name": n} for c, n in zip(ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}
