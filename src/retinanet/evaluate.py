"""COCO detection metrics computed by pycocotools, the evaluation loop, and `retinanet eval`.

Every number comes from pycocotools' COCOeval (bbox): nothing here re-implements its
matching, interpolation or averaging. What this module adds is what goes wrong around
it: results in the dataset's own category ids, empty result lists (loadRes fails on
them), annotation id 0 (COCOeval reads a match with ground truth of id 0 as "no match"),
ids that do not belong to the ground truth (COCOeval silently drops them), and
pycocotools' prints.

Every dataset format is evaluated the same way: its ground truth is converted to COCO
once (DetectionDataset.to_coco). Ignored boxes (COCO iscrowd, VOC difficult) become
iscrowd=1, which COCOeval treats as regions where a detection is neither a true nor a
false positive and which are never counted as missed (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import copy
import csv
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchvision.ops import box_convert, box_iou
from tqdm import tqdm

from .boxes import batched_box_ioa
from .data.dataset import DetectionDataset, Record
from .data.images import ImageError, read_image
from .postprocess import Detections
from .preprocess import letterbox

# The 12 numbers of COCOeval.summarize(), in the order of COCOeval.stats.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
METRIC_DESCRIPTIONS = {
    "AP": "IoU=0.50:0.95 area=all    maxDets=100",
    "AP50": "IoU=0.50      area=all    maxDets=100",
    "AP75": "IoU=0.75      area=all    maxDets=100",
    "APs": "IoU=0.50:0.95 area=small  maxDets=100",
    "APm": "IoU=0.50:0.95 area=medium maxDets=100",
    "APl": "IoU=0.50:0.95 area=large  maxDets=100",
    "AR1": "IoU=0.50:0.95 area=all    maxDets=1",
    "AR10": "IoU=0.50:0.95 area=all    maxDets=10",
    "AR100": "IoU=0.50:0.95 area=all    maxDets=100",
    "ARs": "IoU=0.50:0.95 area=small  maxDets=100",
    "ARm": "IoU=0.50:0.95 area=medium maxDets=100",
    "ARl": "IoU=0.50:0.95 area=large  maxDets=100",
}
# pycocotools' value for a metric with no ground truth to measure (a class absent from
# the ground truth, or e.g. APs on a dataset without small objects).
NO_GROUND_TRUTH = -1.0
# Decimals kept in the results json (Ultralytics / Detectron write the same): a thousandth
# of a pixel and 1e-5 of score change no metric, and the file is half the size.
BOX_DECIMALS = 3
SCORE_DECIMALS = 5
BACKGROUND_NAME = "background"


@dataclasses.dataclass
class EvalConfig:
    """Defaults of the evaluation loop and its plots (used by evaluate() and `retinanet eval`)."""

    batch_size: int = 8
    """Images per forward pass."""
    workers: int = 0
    """DataLoader processes decoding and letterboxing images (0 = in the main process)."""
    plot_conf: float = 0.25
    """Score threshold of the confusion matrix and the drawn images (metrics use every detection)."""
    match_iou: float = 0.5
    """IoU at which the confusion matrix matches detections to ground truth."""
    num_drawn: int = 6
    """Images drawn with ground truth and predictions side by side."""
    drawn_max_side: int = 640
    """Longer side, in pixels, of each panel of a drawn image."""


@dataclasses.dataclass
class EvalReport:
    """What an evaluation produced: the flat metrics, the per-class table, the files written."""

    metrics: dict[str, float]
    """The 12 COCO numbers under METRIC_NAMES."""
    per_class: list[dict[str, Any]]
    """One row per category: class, category_id, images, instances, detections, AP, AP50, AP75, AR100."""
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    cocoeval: COCOeval | None = None


# ----------------------------------------------------------------------------- conversions


def detections_to_coco(
    image_ids: Sequence[int], detections: Sequence[Detections], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Detections -> COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

    ``category_ids[label]`` is the dataset's own id of label ``label``. Boxes are rounded to
    BOX_DECIMALS and scores to SCORE_DECIMALS; the list returned is exactly what is
    evaluated and written. Non-finite boxes or scores raise ValueError.
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection lists")
    cats = np.asarray(category_ids, dtype=np.int64)
    results: list[dict[str, Any]] = []
    for image_id, det in zip(image_ids, detections):
        if len(det) == 0:
            continue
        boxes = det.boxes.detach().cpu().double().reshape(-1, 4)
        scores = det.scores.detach().cpu().double().reshape(-1)
        labels = det.labels.detach().cpu().long().reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
            raise ValueError(f"image {image_id}: detections with non-finite boxes or scores (has the model diverged?)")
        if labels.min() < 0 or labels.max() >= len(cats):
            raise ValueError(f"image {image_id}: label {int(labels.max())} outside 0..{len(cats) - 1}")
        xywh = np.round(box_convert(boxes, "xyxy", "xywh").numpy(), BOX_DECIMALS).tolist()
        score_list = np.round(scores.numpy(), SCORE_DECIMALS).tolist()
        for bbox, score, cat in zip(xywh, score_list, cats[labels.numpy()].tolist()):
            results.append({"image_id": int(image_id), "category_id": cat, "bbox": bbox, "score": score})
    return results


def label_mapping(model_names: Sequence[str], dataset: DetectionDataset) -> list[int]:
    """Dataset label of each model label, matched by class name.

    A model with the same class list maps one to one; a model whose classes are a subset
    of the dataset's maps by name; an unnamed model (names '0'..'K-1', e.g. freshly built)
    with as many classes as the dataset maps one to one. Anything else raises ValueError.
    """
    names = list(dataset.class_names)
    model_names = list(model_names)
    if model_names == names:
        return list(range(len(names)))
    index = {n: i for i, n in enumerate(names)}
    if all(n in index for n in model_names):
        return [index[n] for n in model_names]
    if model_names == [str(i) for i in range(len(model_names))] and len(model_names) == len(names):
        return list(range(len(names)))
    missing = [n for n in model_names if n not in index]
    raise ValueError(
        f"the model's classes do not match the dataset's: {len(missing)} model class(es) not in the dataset "
        f"({', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}); dataset classes: "
        f"{', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''}"
    )


# ----------------------------------------------------------------------------- pycocotools


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Swallow pycocotools' prints unless verbose."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_ground_truth(gt: dict[str, Any] | str | Path | COCO, verbose: bool = False) -> COCO:
    """COCO ground truth (an ``instances`` dict, a json path or a COCO object) -> a checked COCO.

    A dict or file is copied and made safe for COCOeval: missing ``iscrowd`` is 0, missing
    ``area`` is the box area, and annotation ids are renumbered 1..N when any is 0 or
    repeated (COCOeval takes a match with annotation id 0 for "unmatched").
    """
    if isinstance(gt, COCO):
        return gt
    where = "ground truth"
    if isinstance(gt, (str, Path)):
        where = str(gt)
        gt = _read_json(Path(gt), "ground-truth")
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(f"{where}: not a COCO instances dict (needs lists 'images', 'annotations', 'categories')")
    image_ids = {im.get("id") for im in gt["images"] if isinstance(im, dict)}
    cat_ids = {c.get("id") for c in gt["categories"] if isinstance(c, dict)}
    anns = []
    for i, a in enumerate(gt["annotations"]):
        bbox = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise ValueError(f"{where}: annotation {i}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: annotation {i}: negative width or height in bbox {bbox}")
        if a.get("image_id") not in image_ids:
            raise ValueError(f"{where}: annotation {i}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise ValueError(f"{where}: annotation {i}: category_id {a.get('category_id')!r} is not in 'categories'")
        a = dict(a)
        a["bbox"] = list(bbox)
        a.setdefault("iscrowd", 0)
        if a.get("area") is None:
            a["area"] = bbox[2] * bbox[3]
        anns.append(a)
    ids = [a.get("id") for a in anns]
    if any(not isinstance(i, int) or i == 0 for i in ids) or len(set(ids)) != len(ids):
        for n, a in enumerate(anns, start=1):
            a["id"] = n
    data = {k: v for k, v in gt.items() if k not in ("images", "annotations", "categories")}
    data.update(images=list(gt["images"]), annotations=anns, categories=copy.deepcopy(gt["categories"]))
    coco = COCO()
    coco.dataset = data
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _checked_results(results: list[dict[str, Any]] | str | Path, coco_gt: COCO) -> list[dict[str, Any]]:
    """Fresh copies of the result dicts (loadRes writes into them), with ids checked against the ground truth."""
    where = "results"
    if isinstance(results, (str, Path)):
        where = str(results)
        results = _read_json(Path(results), "results")
    if not isinstance(results, list):
        raise ValueError(f"{where}: COCO results must be a list of detections")
    out = []
    bad_images, bad_cats = set(), set()
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not all(k in r for k in ("image_id", "category_id", "bbox", "score")):
            raise ValueError(f"{where}: detection {i} needs image_id, category_id, bbox and score, got {r!r}")
        bbox, score = r["bbox"], r["score"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise ValueError(f"{where}: detection {i}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if not _is_finite_number(score):
            raise ValueError(f"{where}: detection {i}: score {score!r} is not a finite number")
        if r["image_id"] not in coco_gt.imgs:
            bad_images.add(r["image_id"])
        if r["category_id"] not in coco_gt.cats:
            bad_cats.add(r["category_id"])
        out.append({"image_id": r["image_id"], "category_id": r["category_id"], "bbox": list(bbox), "score": score})
    if bad_images:
        raise ValueError(f"{where}: image ids not in the ground truth: {sorted(bad_images, key=str)[:10]}")
    if bad_cats:
        # COCOeval would silently drop these; a wrong id mapping must not read as a low mAP.
        raise ValueError(
            f"{where}: category ids not in the ground truth: {sorted(bad_cats, key=str)[:10]} "
            f"(ground-truth ids: {sorted(coco_gt.cats)[:10]}{' ...' if len(coco_gt.cats) > 10 else ''})"
        )
    return out


def run_cocoeval(
    gt: dict[str, Any] | str | Path | COCO, results: list[dict[str, Any]] | str | Path, verbose: bool = False
) -> COCOeval:
    """pycocotools' bbox evaluation (evaluate, accumulate, summarize), silent unless verbose."""
    coco_gt = load_ground_truth(gt, verbose)
    dets = _checked_results(results, coco_gt)
    with _quiet(verbose):
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            # loadRes indexes results[0]; an empty result set is an empty COCO over the same images.
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(coco_gt.dataset["images"]),
                "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, iouType="bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def _mean_defined(x: np.ndarray) -> float:
    x = x[x > NO_GROUND_TRUTH]
    return float(x.mean()) if x.size else NO_GROUND_TRUTH


def per_class_table(E: COCOeval) -> list[dict[str, Any]]:
    """Per-category AP / AP50 / AP75 / AR100 (area all, maxDets 100) from an accumulated COCOeval.

    Averaged exactly as summarize() averages all classes, so the mean of AP over the
    classes with ground truth equals the overall AP. NO_GROUND_TRUTH (-1) for a class
    without (non-crowd) ground truth.
    """
    p = E.params
    precision = E.eval["precision"]  # (T, R, K, A, M): IoU thresholds, recall points, classes, areas, maxDets
    recall = E.eval["recall"]  # (T, K, A, M)
    a = p.areaRngLbl.index("all")
    m = len(p.maxDets) - 1  # maxDets is sorted: the last is 100
    t50 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.75))[0])
    img_ids = set(p.imgIds)
    rows = []
    for k, cat_id in enumerate(p.catIds):
        gts = [g for g in E.cocoGt.loadAnns(E.cocoGt.getAnnIds(catIds=[cat_id])) if g["image_id"] in img_ids]
        positives = [g for g in gts if not g.get("iscrowd", 0)]
        rows.append(
            {
                "class": E.cocoGt.cats[cat_id].get("name", str(cat_id)),
                "category_id": int(cat_id),
                "images": len({g["image_id"] for g in positives}),
                "instances": len(positives),
                "detections": len(E.cocoDt.getAnnIds(catIds=[cat_id])),
                "AP": _mean_defined(precision[:, :, k, a, m]),
                "AP50": _mean_defined(precision[t50, :, k, a, m]),
                "AP75": _mean_defined(precision[t75, :, k, a, m]),
                "AR100": _mean_defined(recall[:, k, a, m]),
            }
        )
    return rows


def coco_evaluate(
    gt: dict[str, Any] | str | Path | COCO, results: list[dict[str, Any]] | str | Path, verbose: bool = False
) -> dict[str, Any]:
    """The 12 COCO numbers under METRIC_NAMES (COCOeval.stats) and ``per_class``, the table
    of per_class_table(). ``gt``: COCO instances dict / json path / COCO; ``results``:
    COCO results list / json path, possibly empty. Metrics without ground truth are -1,
    as in pycocotools."""
    E = run_cocoeval(gt, results, verbose)
    out: dict[str, Any] = {name: float(v) for name, v in zip(METRIC_NAMES, E.stats)}
    out["per_class"] = per_class_table(E)
    return out


# ----------------------------------------------------------------------------- confusion matrix


def _greedy_pairs(iou: np.ndarray, allowed: np.ndarray, thresh: float, gt_free: np.ndarray, det_free: np.ndarray):
    """Pairs (g, d) with IoU >= thresh, best IoU first, each box used once."""
    g_idx, d_idx = np.nonzero(allowed & (iou >= thresh) & gt_free[:, None] & det_free[None, :])
    order = np.argsort(-iou[g_idx, d_idx], kind="stable")
    for g, d in zip(g_idx[order].tolist(), d_idx[order].tolist()):
        if gt_free[g] and det_free[d]:
            gt_free[g] = det_free[d] = False
            yield g, d


def confusion_matrix(
    records: Sequence[Record],
    detections: Sequence[Detections],
    num_classes: int,
    conf: float = EvalConfig.plot_conf,
    iou: float = EvalConfig.match_iou,
) -> np.ndarray:
    """(K+1, K+1) counts: rows ground-truth class, columns predicted class, index K background.

    Per image, detections with score >= conf are matched one to one to non-ignored
    ground truth at IoU >= iou, highest IoU first: first within the same class (the true
    positives), then across classes (the confusions). Unmatched ground truth counts in
    column K (missed), unmatched detections in row K (false positives) unless at least
    ``iou`` of the detection lies inside an ignored region (crowd / difficult), where it
    counts nowhere, as in COCOeval.
    """
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for rec, det in zip(records, detections):
        keep = det.scores.detach().cpu() >= conf
        d_boxes = det.boxes.detach().cpu().float().reshape(-1, 4)[keep]
        d_labels = det.labels.detach().cpu().long()[keep].numpy()
        pos = ~rec.ignore
        g_boxes = torch.from_numpy(rec.boxes[pos]).float()
        g_labels = rec.labels[pos]
        ious = box_iou(g_boxes, d_boxes).numpy()  # (G, D)
        gt_free = np.ones(len(g_boxes), bool)
        det_free = np.ones(len(d_boxes), bool)
        same = g_labels[:, None] == d_labels[None, :]
        for pairs_allowed in (same, np.ones_like(same)):
            for g, d in _greedy_pairs(ious, pairs_allowed, iou, gt_free, det_free):
                matrix[g_labels[g], d_labels[d]] += 1
        np.add.at(matrix, (g_labels[gt_free], bg), 1)
        unmatched = np.flatnonzero(det_free)
        if rec.ignore.any() and len(unmatched):
            regions = torch.from_numpy(rec.boxes[rec.ignore]).float()
            ioa = batched_box_ioa(regions[None], d_boxes[torch.from_numpy(unmatched)])[0]  # (I, U)
            unmatched = unmatched[(ioa < iou).all(dim=0).numpy()]
        np.add.at(matrix, (bg, d_labels[unmatched]), 1)
    return matrix


# ----------------------------------------------------------------------------- the loop


class _LetterboxedImages(torch.utils.data.Dataset):
    """Decodes and letterboxes one record's image (in a DataLoader worker when workers > 0)."""

    def __init__(self, records: Sequence[Record], size: int):
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        batch, scales, sizes = letterbox([read_image(self.records[i].image_path)], self.size)
        return batch[0], scales[0], sizes[0]  # (3, S, S), (), (2,) as (H, W)


def predict_dataset(
    model: torch.nn.Module,
    records: Sequence[Record],
    batch_size: int = EvalConfig.batch_size,
    workers: int = EvalConfig.workers,
    progress: bool = True,
) -> list[Detections]:
    """Run ``model`` (a RetinaNet) over the records' images; one Detections per record,
    boxes in original pixels, on the CPU, labels in the model's 0..K-1."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        _LetterboxedImages(records, model.cfg.input_size),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    detections: list[Detections] = []
    mismatched: list[str] = []
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: the model caches anchors, and inference tensors in that
        # cache would break later in-place use of them (training continues on this model).
        with torch.no_grad(), tqdm(total=len(records), desc="eval", unit="img", disable=not progress) as bar:
            for images, scales, sizes in loader:  # (N, 3, S, S), (N,), (N, 2)
                start = len(detections)
                for rec, (h, w) in zip(records[start : start + len(images)], sizes.tolist()):
                    if (h, w) != (rec.height, rec.width):
                        mismatched.append(f"{rec.image_path} ({w}x{h} decoded, {rec.width}x{rec.height} annotated)")
                images = images.to(device, non_blocking=True)
                out = model.postprocess(model(images), tuple(images.shape[-2:]), scales.to(device), sizes.to(device))
                detections.extend(Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in out)
                bar.update(len(images))
    except ImageError as e:
        message = str(e)
        if "Original Traceback" in message:  # from a worker: the message carries the worker's traceback
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        raise ImageError(message) from None
    finally:
        model.train(was_training)
    if mismatched:
        warnings.warn(
            f"{len(mismatched)} image(s) decode to a size other than the annotation's, so boxes may not line up: "
            + "; ".join(mismatched[:3]),
            stacklevel=2,
        )
    return detections


def _remap_labels(detections: Iterable[Detections], mapping: Sequence[int]) -> list[Detections]:
    lut = torch.as_tensor(list(mapping), dtype=torch.long)
    return [Detections(d.boxes, d.scores, lut[d.labels.long()]) for d in detections]


def _format_value(v: float) -> str:
    return "    -" if v == NO_GROUND_TRUTH else f"{v:.3f}"


def format_metrics(metrics: dict[str, float]) -> str:
    """The 12 numbers, one per line, in pycocotools' order and wording."""
    width = max(len(d) for d in METRIC_DESCRIPTIONS.values())
    return "\n".join(
        f"{name:<6s} {METRIC_DESCRIPTIONS[name]:<{width}s}  {_format_value(metrics[name])}" for name in METRIC_NAMES
    )


TABLE_COLUMNS = ("class", "category_id", "images", "instances", "detections", "AP", "AP50", "AP75", "AR100")


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


def _write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    path.write_text(json.dumps(data, indent=indent, separators=None if indent else (",", ":")))
    return path


def _check_evaluable(dataset: DetectionDataset) -> None:
    where = dataset.root or "the dataset"
    if len(dataset) == 0:
        raise ValueError(f"{where}: no images to evaluate")
    if dataset.num_boxes() == 0:
        raise ValueError(f"{where}: no (non-ignored) ground-truth boxes to evaluate against; COCO metrics are undefined")


def evaluate_detections(
    dataset: DetectionDataset,
    detections: Sequence[Detections],
    out_dir: str | Path | None = None,
    plots: bool = True,
    verbose: bool = False,
    cfg: EvalConfig | None = None,
) -> EvalReport:
    """COCO metrics of ``detections`` (one per record, labels in the dataset's 0..K-1,
    boxes in original pixels) against the dataset's ground truth.

    With out_dir, writes ground_truth.json, detections.json (COCO results), metrics.json,
    per_class.csv, per_class.txt and, with plots, pr_curves.png, confusion_matrix.png /
    .csv and samples/*.png (ground truth | predictions).
    """
    cfg = cfg or EvalConfig()
    _check_evaluable(dataset)
    if len(detections) != len(dataset):
        raise ValueError(f"{len(detections)} detection lists for {len(dataset)} images")
    coco_gt = load_ground_truth(dataset.to_coco(), verbose)
    results = detections_to_coco([r.image_id for r in dataset.records], detections, dataset.category_ids)
    E = run_cocoeval(coco_gt, results, verbose)
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, E.stats)}
    report = EvalReport(metrics, per_class_table(E), cocoeval=E)
    if out_dir is None:
        return report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = report.files
    files["ground_truth"] = _write_json(out / "ground_truth.json", coco_gt.dataset, indent=None)
    files["detections"] = _write_json(out / "detections.json", results, indent=None)
    files["metrics"] = _write_json(
        out / "metrics.json",
        {
            "metrics": metrics,
            "per_class": report.per_class,
            "images": len(dataset),
            "instances": dataset.num_boxes(),
            "ignored": dataset.num_boxes(include_ignored=True) - dataset.num_boxes(),
            "detections": len(results),
            "evaluator": "pycocotools COCOeval (bbox)",
        },
    )
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(report.per_class)
    files["per_class_csv"] = out / "per_class.csv"
    (out / "per_class.txt").write_text(format_metrics(metrics) + "\n\n" + format_table(report.per_class) + "\n")
    files["per_class_txt"] = out / "per_class.txt"
    if plots:
        files.update(_write_plots(out, dataset, detections, E, cfg))
    return report


def _write_plots(
    out: Path, dataset: DetectionDataset, detections: Sequence[Detections], E: COCOeval, cfg: EvalConfig
) -> dict[str, Path]:
    from . import plots  # matplotlib is imported only when plots are asked for

    files: dict[str, Path] = {}
    names = list(dataset.class_names)
    # COCOeval orders classes by sorted category id; the plots use the dataset's label order.
    k_of_label = [E.params.catIds.index(c) for c in dataset.category_ids]
    precision = E.eval["precision"][:, :, k_of_label, E.params.areaRngLbl.index("all"), -1]  # (T, R, K)
    precision = np.where(precision > NO_GROUND_TRUTH, precision, np.nan)  # absent classes: not drawn
    t50 = int(np.flatnonzero(np.isclose(E.params.iouThrs, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(E.params.iouThrs, 0.75))[0])
    curves = {"IoU 0.50": precision[t50].T, "IoU 0.75": precision[t75].T}  # (R, K) -> (K, R)
    files["pr_curves"] = plots.plot_pr_curves(out / "pr_curves.png", E.params.recThrs, curves, names)

    matrix = confusion_matrix(dataset.records, detections, len(names), cfg.plot_conf, cfg.match_iou)
    labels = [*names, BACKGROUND_NAME]
    with open(out / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *labels])
        writer.writerows([labels[i], *row] for i, row in enumerate(matrix.tolist()))
    files["confusion_matrix_csv"] = out / "confusion_matrix.csv"
    files["confusion_matrix"] = plots.plot_confusion_matrix(
        out / "confusion_matrix.png",
        matrix,
        names,
        title=f"confusion matrix (score >= {cfg.plot_conf:g}, IoU >= {cfg.match_iou:g})",
    )

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
        files[f"sample_{i}"] = plots.save_image(image, out / "samples" / f"{rec.image_id}_{rec.image_path.stem}.png")
    return files


def run_evaluation(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    batch_size: int = EvalConfig.batch_size,
    workers: int = EvalConfig.workers,
    out_dir: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
    max_images: int | None = None,
    verbose: bool = False,
    cfg: EvalConfig | None = None,
) -> EvalReport:
    """evaluate(), returning the whole EvalReport (per-class table, files, COCOeval)."""
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        dataset = dataclasses.replace(dataset, records=dataset.records[:max_images])
    _check_evaluable(dataset)  # before spending time on inference
    mapping = label_mapping(model.class_names, dataset)
    detections = predict_dataset(model, dataset.records, batch_size, workers, progress)
    return evaluate_detections(dataset, _remap_labels(detections, mapping), out_dir, plots, verbose, cfg)


def evaluate(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    batch_size: int = EvalConfig.batch_size,
    workers: int = EvalConfig.workers,
    out_dir: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
    max_images: int | None = None,
) -> dict[str, float]:
    """COCO metrics of ``model`` on ``dataset``: a flat dict of the 12 numbers under METRIC_NAMES.

    Runs the model in eval mode (its training mode is restored), batched, with a tqdm
    bar; the first ``max_images`` records only when given. With out_dir, writes the files
    listed in evaluate_detections (the plots only when ``plots``).
    """
    return run_evaluation(model, dataset, batch_size, workers, out_dir, plots, progress, max_images).metrics


# ----------------------------------------------------------------------------- `retinanet eval`


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalConfig
    p.add_argument("--model", required=True, help="checkpoint (.pt) written by `retinanet train`")
    p.add_argument("--data", required=True, help="dataset folder (COCO / VOC / YOLO), COCO json, or dataset spec / data.yaml")
    p.add_argument("--split", default="val", help="split of --data to evaluate (default: val)")
    p.add_argument("--out", default="runs/eval", help="folder for the metrics, detections and plots (default: runs/eval)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per batch (default: {d.batch_size})")
    p.add_argument("--workers", type=int, default=d.workers, help=f"image decoding processes (default: {d.workers})")
    p.add_argument("--conf", type=float, default=None,
                   help="score threshold of the model's detections (default: the checkpoint's, 0.05)")
    p.add_argument("--plot-conf", type=float, default=d.plot_conf,
                   help=f"score threshold of the confusion matrix and drawn images (default: {d.plot_conf})")
    p.add_argument("--no-plots", action="store_true", help="write metrics and detections only")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--verbose", action="store_true", help="also print pycocotools' own output")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import model_from_checkpoint
    from .data import load_dataset

    if args.conf is not None and not 0.0 <= args.conf <= 1.0:
        raise ValueError(f"--conf must be in [0, 1], got {args.conf}")
    if not 0.0 <= args.plot_conf <= 1.0:
        raise ValueError(f"--plot-conf must be in [0, 1], got {args.plot_conf}")
    model = model_from_checkpoint(args.model)
    if args.conf is not None:
        model.cfg.postprocess.score_thresh = args.conf
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    # Image headers only: evaluation decodes every image anyway, and a broken one fails there naming its file.
    dataset = load_dataset(args.data, args.split, check="header")
    cfg = EvalConfig(batch_size=args.batch_size, workers=args.workers, plot_conf=args.plot_conf)
    report = run_evaluation(
        model,
        dataset,
        args.batch_size,
        args.workers,
        out_dir=args.out,
        plots=not args.no_plots,
        max_images=args.max_images,
        verbose=args.verbose,
        cfg=cfg,
    )
    print(format_metrics(report.metrics))
    print()
    print(format_table(report.per_class))
    print(f"\nwrote {len(report.files)} files to {args.out}")
    return 0
