"""COCO evaluation of a detector: every number comes from pycocotools' COCOeval (bbox).

Two entry points:

    evaluate(model, dataset, cfg)             run the model (a RetinaNet, or an api.Detector
                                              of an exported .onnx / .xml) over the dataset,
                                              then score it
    score_detections(dataset, detections, cfg)  score detections you already have

Both return an EvalReport (metrics, per-class table, files written, the COCOeval).
Every dataset format is evaluated the same way: its ground truth is converted to COCO
once (DetectionDataset.to_coco). Ignored boxes (COCO iscrowd, VOC difficult) become
iscrowd=1, which COCOeval treats as regions where a detection is neither a true nor a
false positive and which are never counted as missed (see docs/evaluation.md).

    coco.py       pycocotools: checked ground truth and results, COCOeval, per-class table
    confusion.py  the confusion matrix
    loop.py       running a model over a dataset's images; model -> dataset labels
    exported.py   running an api.Detector over a dataset's images
    report.py     EvalReport, its text form, the files and plots of a report folder
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from ..config.evaluation import EvalConfig
from ..data.dataset import DetectionDataset
from ..postprocess import Detections
from .coco import METRIC_NAMES, detections_to_coco, load_ground_truth, metrics_of, per_class_table, run_cocoeval
from .exported import detector_floor, predict_with_detector
from .loop import label_mapping, predict_dataset, remap_labels, score_floor
from .report import EvalReport, write_report

__all__ = ["METRIC_NAMES", "EvalConfig", "EvalReport", "evaluate", "score_detections"]


def _check_evaluable(dataset: DetectionDataset) -> None:
    where = dataset.root or "the dataset"
    if len(dataset) == 0:
        raise ValueError(f"{where}: no images to evaluate")
    if dataset.num_boxes() == 0:
        raise ValueError(f"{where}: no (non-ignored) ground-truth boxes to evaluate against; COCO metrics are undefined")


def score_detections(
    dataset: DetectionDataset,
    detections: Sequence[Detections],
    cfg: EvalConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    plots: bool = True,
    verbose: bool = False,
    conf_threshold: float | None = None,
    score_floor: float = 0.0,
) -> EvalReport:
    """COCO metrics of ``detections`` (one per record, labels in the dataset's 0..K-1,
    boxes xyxy in original pixels) against the dataset's ground truth.

    With out_dir, writes ground_truth.json, detections.json (COCO results), metrics.json,
    per_class.csv, per_class.txt and, with plots, pr_curves.png, F1_curve.png,
    P_curve.png, R_curve.png, confusion_matrix.png / .csv and samples/*.png (ground truth
    | predictions). The F1 / P / R curves mark ``conf_threshold`` (a checkpoint's), else the
    F1-best threshold of these detections (``score_floor``: the score threshold they were
    made with). ``verbose`` lets pycocotools print.
    """
    cfg = cfg or EvalConfig()
    _check_evaluable(dataset)
    if len(detections) != len(dataset):
        raise ValueError(f"{len(detections)} detection lists for {len(dataset)} images")
    coco_gt = load_ground_truth(dataset.to_coco(), verbose)
    results = detections_to_coco([r.image_id for r in dataset.records], detections, dataset.category_ids)
    E = run_cocoeval(coco_gt, results, verbose)
    report = EvalReport(metrics_of(E), per_class_table(E), cocoeval=E)
    if out_dir is not None:
        report.files = write_report(Path(out_dir), report, dataset, detections, results, cfg, plots, conf_threshold, score_floor)
    return report


def evaluate(
    model: Any,
    dataset: DetectionDataset,
    cfg: EvalConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
    max_images: int | None = None,
    verbose: bool = False,
) -> EvalReport:
    """COCO metrics of ``model`` on ``dataset``; ``report.metrics`` is the flat dict of the
    12 numbers under METRIC_NAMES.

    ``model``: a RetinaNet, run in eval mode (its training mode is restored, its config
    unchanged) on images letterboxed to the square as training validates; or an
    api.Detector (an exported .onnx fp32 / int8, an OpenVINO .xml: what ships, run as it
    runs, evaluation/exported.py). Either runs at cfg.conf, else the model's own score
    threshold (0.05 by default), batched as ``cfg`` says, with a tqdm bar; the first
    ``max_images`` records only when given. The model's labels are mapped to the dataset's
    by class name. With out_dir, writes the files listed in score_detections (the plots
    only when ``plots``); the curves mark the threshold the model stores (a checkpoint's
    ``conf_threshold``) when it has one.
    """
    cfg = cfg or EvalConfig()
    dataset = _first_images(dataset, max_images)
    _check_evaluable(dataset)  # before spending time on inference
    mapping = label_mapping(model.class_names, dataset)
    if hasattr(model, "backend"):  # an api.Detector
        detections = predict_with_detector(model, dataset.records, cfg, progress)
        stored, floor = model.backend.stored_conf, detector_floor(model, cfg)
    else:
        detections = predict_dataset(model, dataset.records, cfg, progress)
        stored, floor = getattr(model, "conf_threshold", None), score_floor(model, cfg)
    return score_detections(
        dataset, remap_labels(detections, mapping), cfg, out_dir=out_dir, plots=plots, verbose=verbose,
        conf_threshold=stored, score_floor=floor,
    )  # fmt: skip


def _first_images(dataset: DetectionDataset, max_images: int | None) -> DetectionDataset:
    """The dataset, or its first ``max_images`` records."""
    if max_images is None:
        return dataset
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    return dataclasses.replace(dataset, records=dataset.records[:max_images])
