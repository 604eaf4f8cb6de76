"""Dataset readers, image decoding, validation and augmentation.

``load_dataset(source, split)`` reads a COCO, Pascal VOC or YOLO dataset (a folder, a
COCO json or a dataset spec yaml) into a checked ``DetectionDataset`` of ``Record``s;
unusable data raises ``DataError``. See docs/datasets.md.
"""

from .dataset import DetectionDataset, Record
from .report import DataError, DataReport
from .spec import available_splits, load_dataset

__all__ = ["DataError", "DataReport", "DetectionDataset", "Record", "available_splits", "load_dataset"]
