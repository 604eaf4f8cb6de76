"""What an evaluation produced (EvalReport), its text form, and the files and plots of a
report folder."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from ..config.evaluation import EvalConfig
from ..data.dataset import DetectionDataset
from ..data.images import read_image
from ..postprocess import Detections
from .coco import METRIC_DESCRIPTIONS, METRIC_NAMES, NO_GROUND_TRUTH, iou_index
from .confusion import confusion_matrix
from .threshold import ConfidenceCurves, curves_on, threshold_on

TABLE_COLUMNS = ("class", "category_id", "images", "instances", "detections", "AP", "AP50", "AP75", "AR100")
BACKGROUND_NAME = "background"


@dataclasses.dataclass
class EvalReport:
    """What an evaluation produced: the flat metrics, the per-class table, the files written."""

    metrics: dict[str, float]
    """The 12 COCO numbers under METRIC_NAMES."""
    per_class: list[dict[str, Any]]
    """One row per category: class, category_id, images, instances, detections, AP, AP50, AP75, AR100."""
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    """Name -> path of every file written (empty without an output folder)."""
    cocoeval: COCOeval | None = None
    """pycocotools' evaluated, accumulated and summarized COCOeval."""
    conf_threshold: dict[str, Any] | None = None
    """With plots: the confidence threshold marked on the F1 / P / R curves (the checkpoint's
    conf_threshold, else the F1-best of these detections) and the all-classes F1,
    precision and recall there (None where no detection is kept)."""


# ----------------------------------------------------------------------------- text


def _format_value(v: float) -> str:
    return "    -" if v == NO_GROUND_TRUTH else f"{v:.3f}"


def format_metrics(metrics: dict[str, float]) -> str:
    """The 12 numbers, one per line, in pycocotools' order and wording."""
    width = max(len(d) for d in METRIC_DESCRIPTIONS.values())
    return "\n".join(
        f"{name:<6s} {METRIC_DESCRIPTIONS[name]:<{width}s}  {_format_value(metrics[name])}" for name in METRIC_NAMES
    )


def format_table(per_class: list[dict[str, Any]]) -> str:
    """Fixed-width per-class table ('-' where the class has no ground truth)."""
    width = max([len("class"), *(len(str(r["class"])) for r in per_class)])
    lines = [f"{'class':<{width}s} {'id':>5s} {'images':>6s} {'inst':>6s} {'dets':>6s}  {'AP':>5s} {'AP50':>5s} {'AP75':>5s} {'AR100':>5s}"]
    for r in per_class:
        lines.append(
            f"{str(r['class']):<{width}s} {r['category_id']:>5} {r['images']:>6d} {r['instances']:>6d} {r['detections']:>6d}  "
            + " ".join(_format_value(r[k]) for k in ("AP", "AP50", "AP75", "AR100"))
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- files


def _write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    path.write_text(json.dumps(data, indent=indent, separators=None if indent else (",", ":")))
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_report(
    out: Path,
    report: EvalReport,
    dataset: DetectionDataset,
    detections: Sequence[Detections],
    results: list[dict[str, Any]],
    cfg: EvalConfig,
    plots: bool = True,
    threshold: float | None = None,
    floor: float = 0.0,
) -> dict[str, Path]:
    """Writes ground_truth.json, detections.json (``results``), metrics.json, per_class.csv,
    per_class.txt and, with plots, the files of write_plots and the F1 / P / R curves into
    ``out``; returns name -> path. ``threshold``: the model's stored confidence threshold,
    marked on the curves (else the F1-best one, placed above ``floor``, the detections'
    score threshold)."""
    E = report.cocoeval
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report.conf_threshold, curves = marked_threshold(dataset, detections, threshold, floor)
    files = {
        "ground_truth": _write_json(out / "ground_truth.json", E.cocoGt.dataset, indent=None),
        "detections": _write_json(out / "detections.json", results, indent=None),
        "metrics": _write_json(
            out / "metrics.json",
            {
                "metrics": report.metrics,
                "per_class": report.per_class,
                "images": len(dataset),
                "instances": dataset.num_boxes(),
                "ignored": dataset.num_boxes(include_ignored=True) - dataset.num_boxes(),
                "detections": len(results),
                "evaluator": "pycocotools COCOeval (bbox)",
                **({"conf_threshold": report.conf_threshold} if report.conf_threshold else {}),
            },
        ),
        "per_class_csv": _write_csv(
            out / "per_class.csv", TABLE_COLUMNS, [[r[k] for k in TABLE_COLUMNS] for r in report.per_class]
        ),
    }
    (out / "per_class.txt").write_text(format_metrics(report.metrics) + "\n\n" + format_table(report.per_class) + "\n")
    files["per_class_txt"] = out / "per_class.txt"
    if plots:
        files.update(write_plots(out, dataset, detections, E, cfg))
        files.update(write_confidence_curves(out, dataset.class_names, curves, report.conf_threshold))
    return files


# ----------------------------------------------------------------------------- plots


def write_plots(
    out: Path, dataset: DetectionDataset, detections: Sequence[Detections], E: COCOeval, cfg: EvalConfig
) -> dict[str, Path]:
    """pr_curves.png, confusion_matrix.png / .csv and samples/*.png (ground truth | predictions)."""
    from . import plots  # matplotlib is imported only when plots are asked for

    names = list(dataset.class_names)
    # COCOeval orders classes by sorted category id; the plots use the dataset's label order.
    k_of_label = [E.params.catIds.index(c) for c in dataset.category_ids]
    precision = E.eval["precision"][:, :, k_of_label, E.params.areaRngLbl.index("all"), -1]  # (T, R, K)
    precision = np.where(precision > NO_GROUND_TRUTH, precision, np.nan)  # absent classes: not drawn
    curves = {f"IoU {t:.2f}": precision[iou_index(E, t)].T for t in (0.5, 0.75)}  # (R, K) -> (K, R)
    files = {"pr_curves": plots.plot_pr_curves(out / "pr_curves.png", E.params.recThrs, curves, names)}

    matrix = confusion_matrix(dataset.records, detections, len(names), cfg.plot_conf, cfg.match_iou)
    labels = [*names, BACKGROUND_NAME]
    rows = [[labels[i], *row] for i, row in enumerate(matrix.tolist())]
    files["confusion_matrix_csv"] = _write_csv(out / "confusion_matrix.csv", ["true \\ predicted", *labels], rows)
    files["confusion_matrix"] = plots.plot_confusion_matrix(
        out / "confusion_matrix.png",
        matrix,
        names,
        title=f"confusion matrix (score >= {cfg.plot_conf:g}, IoU >= {cfg.match_iou:g})",
    )
    files.update(_write_samples(out / "samples", dataset, detections, cfg))
    return files


def _write_samples(
    folder: Path, dataset: DetectionDataset, detections: Sequence[Detections], cfg: EvalConfig
) -> dict[str, Path]:
    """cfg.num_drawn images with ground truth (left) and predictions >= cfg.plot_conf (right)."""
    from . import plots

    files = {}
    names = list(dataset.class_names)
    # Evenly spread over the dataset, the same images every run (and every epoch).
    drawn = np.linspace(0, len(dataset) - 1, min(cfg.num_drawn, len(dataset))).round().astype(int)
    for i in sorted(set(drawn.tolist())):
        rec, det = dataset[i], detections[i]
        image = plots.draw_side_by_side(
            read_image(rec.image_path),
            torch.from_numpy(rec.boxes),
            torch.from_numpy(rec.labels),
            torch.from_numpy(rec.ignore),
            det.boxes,
            det.scores,
            det.labels,
            names,
            max_side=cfg.drawn_max_side,
            score_thresh=cfg.plot_conf,
        )
        files[f"sample_{i}"] = plots.save_image(image, folder / f"{rec.image_id}_{rec.image_path.stem}.png")
    return files


# ----------------------------------------------------------------------------- confidence curves

CURVES = (("F1_curve", "F1", "f1"), ("P_curve", "precision", "precision"), ("R_curve", "recall", "recall"))


def _number(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def marked_threshold(
    dataset: DetectionDataset, detections: Sequence[Detections], stored: float | None, floor: float = 0.0
) -> tuple[dict[str, Any], ConfidenceCurves]:
    """The threshold the confidence curves mark: ``stored`` (a checkpoint's conf_threshold)
    when given, else the F1-best of these detections (threshold.py), with the all-classes
    F1, precision and recall of the detections it keeps; and the curves, read at it exactly."""
    if stored is not None:
        t, chosen = float(stored), "checkpoint"
    else:
        t, chosen = threshold_on(dataset.records, detections, floor=floor).threshold, "best F1"
    curves = curves_on(dataset.records, detections, len(dataset.class_names), marks=[t] if t is not None else [])
    info: dict[str, Any] = {"threshold": t, "chosen_by": chosen, "iou": curves.iou}
    if t is not None:
        at = int(np.searchsorted(curves.confidence, t))
        info.update({key: _number(getattr(curves, f"all_{key}")[at]) for _, _, key in CURVES})
    return info, curves


def write_confidence_curves(
    out: Path, class_names: Sequence[str], curves: ConfidenceCurves, marked: dict[str, Any]
) -> dict[str, Path]:
    """F1_curve.png, P_curve.png and R_curve.png: F1, precision and recall against the
    confidence threshold, per class and over all classes, ``marked``'s threshold drawn."""
    from . import plots

    t, files = marked.get("threshold"), {}
    chosen = "the checkpoint's" if marked.get("chosen_by") == "checkpoint" else "best F1"
    for stem, label, key in CURVES:
        value = marked.get(key)
        mark = (t, value, chosen) if t is not None and value is not None else None
        per_class, overall = getattr(curves, key), getattr(curves, f"all_{key}")
        files[stem] = plots.plot_confidence_curve(out / f"{stem}.png", curves.confidence, per_class, overall, list(class_names), label, mark)
    return files
