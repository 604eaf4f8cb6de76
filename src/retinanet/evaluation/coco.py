"""COCO detection metrics computed by pycocotools' COCOeval (bbox).

Nothing here re-implements its matching, interpolation or averaging. What this module adds
is what goes wrong around it: results in the dataset's own category ids, empty result lists
(loadRes fails on them), annotation id 0 (COCOeval reads a match with ground truth of id 0
as "no match"), ids that do not belong to the ground truth (COCOeval silently drops them),
and pycocotools' prints.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import coco_results
from ..postprocess import Detections

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

GroundTruth = dict[str, Any] | str | Path | COCO
Results = list[dict[str, Any]] | str | Path


# ----------------------------------------------------------------------------- detections -> results


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
        if len(det):
            results.extend(_image_results(int(image_id), det, cats))
    return results


def _image_results(image_id: int, det: Detections, cats: np.ndarray) -> list[dict[str, Any]]:
    """One image's detections as checked, rounded COCO results."""
    boxes = det.boxes.detach().cpu().double().reshape(-1, 4)  # (D, 4) xyxy
    scores = det.scores.detach().cpu().double().reshape(-1)  # (D,)
    labels = det.labels.detach().cpu().long().reshape(-1)  # (D,)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
        raise ValueError(f"image {image_id}: detections with non-finite boxes or scores (has the model diverged?)")
    if labels.min() < 0 or labels.max() >= len(cats):
        raise ValueError(f"image {image_id}: label {int(labels.max())} outside 0..{len(cats) - 1}")
    categories = cats[labels.numpy()].tolist()
    return coco_results(image_id, boxes.numpy(), scores.numpy(), categories, BOX_DECIMALS, SCORE_DECIMALS)


# ----------------------------------------------------------------------------- checked inputs


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


def _check_bbox(bbox: Any, where: str) -> None:
    """``where``: e.g. 'gt.json: annotation 3'."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
        raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")


def _checked_annotation(a: Any, where: str, image_ids: set, cat_ids: set) -> dict[str, Any]:
    """A copy of one ground-truth annotation with iscrowd and area filled in."""
    bbox = a.get("bbox") if isinstance(a, dict) else None
    _check_bbox(bbox, where)
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{where}: negative width or height in bbox {bbox}")
    if a.get("image_id") not in image_ids:
        raise ValueError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
    if a.get("category_id") not in cat_ids:
        raise ValueError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
    a = dict(a)
    a["bbox"] = list(bbox)
    a.setdefault("iscrowd", 0)
    if a.get("area") is None:
        a["area"] = bbox[2] * bbox[3]
    return a


def load_ground_truth(gt: GroundTruth, verbose: bool = False) -> COCO:
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
    anns = [_checked_annotation(a, f"{where}: annotation {i}", image_ids, cat_ids) for i, a in enumerate(gt["annotations"])]
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


def _checked_results(results: Results, coco_gt: COCO) -> list[dict[str, Any]]:
    """Fresh copies of the result dicts (loadRes writes into them), with ids checked against the ground truth."""
    where = "results"
    if isinstance(results, (str, Path)):
        where = str(results)
        results = _read_json(Path(results), "results")
    if not isinstance(results, list):
        raise ValueError(f"{where}: COCO results must be a list of detections")
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not all(k in r for k in ("image_id", "category_id", "bbox", "score")):
            raise ValueError(f"{where}: detection {i} needs image_id, category_id, bbox and score, got {r!r}")
        _check_bbox(r["bbox"], f"{where}: detection {i}")
        if not _is_finite_number(r["score"]):
            raise ValueError(f"{where}: detection {i}: score {r['score']!r} is not a finite number")
        out.append({"image_id": r["image_id"], "category_id": r["category_id"], "bbox": list(r["bbox"]), "score": r["score"]})
    bad_images = {r["image_id"] for r in out if r["image_id"] not in coco_gt.imgs}
    if bad_images:
        raise ValueError(f"{where}: image ids not in the ground truth: {sorted(bad_images, key=str)[:10]}")
    bad_cats = {r["category_id"] for r in out if r["category_id"] not in coco_gt.cats}
    if bad_cats:
        # COCOeval would silently drop these; a wrong id mapping must not read as a low mAP.
        raise ValueError(
            f"{where}: category ids not in the ground truth: {sorted(bad_cats, key=str)[:10]} "
            f"(ground-truth ids: {sorted(coco_gt.cats)[:10]}{' ...' if len(coco_gt.cats) > 10 else ''})"
        )
    return out


# ----------------------------------------------------------------------------- COCOeval


def run_cocoeval(gt: GroundTruth, results: Results, verbose: bool = False) -> COCOeval:
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


def metrics_of(E: COCOeval) -> dict[str, float]:
    """The 12 numbers of a summarized COCOeval under METRIC_NAMES."""
    return {name: float(v) for name, v in zip(METRIC_NAMES, E.stats)}


def iou_index(E: COCOeval, iou: float) -> int:
    """Index of IoU threshold ``iou`` in COCOeval's (T,) threshold axis."""
    return int(np.flatnonzero(np.isclose(E.params.iouThrs, iou))[0])


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
    t50, t75 = iou_index(E, 0.5), iou_index(E, 0.75)
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


def coco_evaluate(gt: GroundTruth, results: Results, verbose: bool = False) -> dict[str, Any]:
    """The 12 COCO numbers under METRIC_NAMES (COCOeval.stats) and ``per_class``, the table
    of per_class_table(), for ground truth and results already in COCO form. ``gt``: COCO
    instances dict / json path / COCO; ``results``: COCO results list / json path, possibly
    empty. Metrics without ground truth are -1, as in pycocotools."""
    E = run_cocoeval(gt, results, verbose)
    return {**metrics_of(E), "per_class": per_class_table(E)}
