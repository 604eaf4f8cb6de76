"""COCO evaluation: numbers equal to pycocotools run by hand, crowd / difficult handling,
hand-computed small cases, the confusion matrix, and the evaluate() loop on a real model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinanet.checkpoint import save_checkpoint
from retinanet.cli import main
from retinanet.config import preset, to_dict
from retinanet.data import load_dataset
from retinanet.data.coco import write_coco
from retinanet.data.voc import write_voc
from retinanet.data.dataset import DetectionDataset, Record
from retinanet.data.images import ImageError, read_image
from retinanet.config import EvalConfig
from retinanet.evaluation import METRIC_NAMES, evaluate, score_detections
from retinanet.evaluation.coco import NO_GROUND_TRUTH, coco_evaluate, detections_to_coco, load_ground_truth
from retinanet.evaluation.confusion import confusion_matrix
from retinanet.evaluation.loop import label_mapping
from retinanet.model import build_model
from retinanet.postprocess import Detections

# ----------------------------------------------------------------------------- helpers

# A perfect score: pycocotools computes precision as tp / (tp + fp + eps), eps = np.spacing(1).
ONE = pytest.approx(1.0, abs=1e-12)


def coco128_dataset(root: Path) -> DetectionDataset:
    """coco128's json parsed by hand into Records (xyxy pixels, contiguous labels, crowd = ignore)."""
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    label = {c["id"]: i for i, c in enumerate(cats)}
    anns: dict[int, list] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    records = []
    for im in data["images"]:
        a = anns.get(im["id"], [])
        records.append(
            Record(
                root / "train2017" / im["file_name"],
                im["id"],
                im["width"],
                im["height"],
                np.array([[x, y, x + w, y + h] for x, y, w, h in (b["bbox"] for b in a)], np.float32).reshape(-1, 4),
                [label[b["category_id"]] for b in a],
                [bool(b["iscrowd"]) for b in a],
                np.array([b["area"] for b in a], np.float64),
            )
        )
    return DetectionDataset(records, [c["name"] for c in cats], [c["id"] for c in cats], root, "coco")


def perfect(ds: DetectionDataset, crowd_score: float | None = None) -> list[Detections]:
    """Every non-ignored box with score 1; with crowd_score, also a detection on every crowd region."""
    out = []
    for r in ds.records:
        keep = ~r.ignore if crowd_score is None else np.ones(len(r.labels), bool)
        scores = np.where(r.ignore, crowd_score if crowd_score is not None else 0.0, 1.0)[keep]
        out.append(Detections(torch.from_numpy(r.boxes[keep]), torch.from_numpy(scores).float(), torch.from_numpy(r.labels[keep])))
    return out


def perturbed(ds: DetectionDataset, seed: int = 0) -> list[Detections]:
    """Shifted and rescaled boxes, dropped boxes, duplicates, wrong classes, false positives,
    detections on crowd regions, scores spread over (0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for r in ds.records:
        boxes, labels, scores = [], [], []
        for box, lab, ign in zip(r.boxes, r.labels, r.ignore):
            if rng.random() < 0.15:  # dropped: a miss
                continue
            x1, y1, x2, y2 = box.tolist()
            w, h = x2 - x1, y2 - y1
            dx, dy = rng.normal(0, 0.08, 2) * (w, h)
            sw, sh = np.exp(rng.normal(0, 0.1, 2))
            cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
            boxes.append([cx - w * sw / 2, cy - h * sh / 2, cx + w * sw / 2, cy + h * sh / 2])
            labels.append(int(rng.integers(ds.num_classes)) if rng.random() < 0.1 else int(lab))  # wrong class
            scores.append(float(rng.uniform(0.05, 1.0)) if not ign else float(rng.uniform(0.05, 0.5)))
            if rng.random() < 0.1:  # duplicate, lower score: a false positive at every threshold
                boxes.append([v + rng.normal(0, 2) for v in boxes[-1]])
                labels.append(labels[-1])
                scores.append(scores[-1] * 0.5)
        for _ in range(rng.poisson(1.5)):  # background false positives
            x, y = rng.uniform(0, r.width - 20), rng.uniform(0, r.height - 20)
            w, h = rng.uniform(10, r.width - x), rng.uniform(10, r.height - y)
            boxes.append([x, y, x + w, y + h])
            labels.append(int(rng.integers(ds.num_classes)))
            scores.append(float(rng.uniform(0.05, 0.9)))
        out.append(
            Detections(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                torch.tensor(scores, dtype=torch.float32),
                torch.tensor(labels, dtype=torch.long),
            )
        )
    return out


def pycocotools_by_hand(gt_json: Path, results_json: Path) -> COCOeval:
    gt = COCO(str(gt_json))
    E = COCOeval(gt, gt.loadRes(str(results_json)), "bbox")
    E.evaluate()
    E.accumulate()
    E.summarize()
    return E


def tiny_gt(annotations: list[dict], num_images: int = 2, categories=((1, "a"), (2, "b"))) -> dict:
    images = [{"id": i + 1, "width": 100, "height": 100, "file_name": f"{i + 1}.jpg"} for i in range(num_images)]
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    for a in anns:
        if "area" not in a:
            a["area"] = a["bbox"][2] * a["bbox"][3]
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": n} for c, n in categories]}


def det(image_id: int, bbox: list[float], score: float, category_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


@pytest.fixture(scope="module")
def coco128_ds(coco128) -> DetectionDataset:
    return coco128_dataset(coco128)


# ----------------------------------------------------------------------------- coco128 against pycocotools


def test_perfect_detections_give_ap_one_with_crowd_ignored(coco128_ds):
    ds = coco128_ds
    assert sum(int(r.ignore.sum()) for r in ds.records) == 10  # coco128 has 10 crowd boxes (SOURCES.md)
    for crowd_score in (None, 0.5):  # crowd regions missed, then detected
        report = score_detections(ds, perfect(ds, crowd_score), plots=False)
        m = report.metrics
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
            assert m[name] == ONE, (crowd_score, name, m[name])
        assert m["AR1"] < 1.0  # images with two people cannot be recalled with one detection
        present = [row for row in report.per_class if row["instances"] > 0]
        assert len(present) == 71 and all(row["AP"] == ONE for row in present)
        assert all(row["AP"] == NO_GROUND_TRUTH for row in report.per_class if row["instances"] == 0)

    # The same crowd-region detections as ordinary boxes of a class the image lacks are false positives.
    dets = perfect(ds)
    for r, d in zip(ds.records, dets):
        if r.ignore.any():
            fp_boxes = torch.from_numpy(r.boxes[r.ignore])
            fp_labels = torch.full((len(fp_boxes),), ds.class_names.index("toothbrush"))
            d.boxes, d.scores = torch.cat([d.boxes, fp_boxes]), torch.cat([d.scores, torch.full((len(fp_boxes),), 2.0)])
            d.labels = torch.cat([d.labels, fp_labels])
    assert score_detections(ds, dets, plots=False).metrics["AP"] < 1.0


def test_perturbed_detections_equal_pycocotools_on_written_files(coco128_ds, coco128, tmp_path):
    ds = coco128_ds
    report = score_detections(ds, perturbed(ds), out_dir=tmp_path, plots=False)
    assert 0.2 < report.metrics["AP"] < 0.9  # a real mix of hits and misses, not a degenerate case

    E = pycocotools_by_hand(tmp_path / "ground_truth.json", tmp_path / "detections.json")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved["metrics"]) == list(METRIC_NAMES)
    for i, name in enumerate(METRIC_NAMES):
        assert report.metrics[name] == E.stats[i], name
        assert saved["metrics"][name] == E.stats[i], name

    # Against coco128's own annotation file: the dataset's conversion to COCO loses nothing
    # (boxes, segmentation areas for the size buckets, iscrowd).
    E_orig = pycocotools_by_hand(coco128 / "annotations" / "instances_train2017.json", tmp_path / "detections.json")
    np.testing.assert_allclose(E_orig.stats, E.stats, rtol=0, atol=1e-12)

    # Per-class AP / AP50 equal COCOeval restricted to that one category.
    rows = {row["category_id"]: row for row in report.per_class}
    by_instances = sorted(rows.values(), key=lambda r: -r["instances"])
    for row in [*by_instances[:3], by_instances[-1]]:
        gt = COCO(str(tmp_path / "ground_truth.json"))
        Ec = COCOeval(gt, gt.loadRes(str(tmp_path / "detections.json")), "bbox")
        Ec.params.catIds = [row["category_id"]]
        Ec.evaluate(), Ec.accumulate(), Ec.summarize()
        assert (row["AP"], row["AP50"], row["AP75"], row["AR100"]) == tuple(Ec.stats[[0, 1, 2, 8]]), row["class"]
    assert by_instances[-1]["AP"] == NO_GROUND_TRUTH
    # The overall AP is the mean of the per-class APs of classes with ground truth.
    defined = [r["AP"] for r in report.per_class if r["AP"] != NO_GROUND_TRUTH]
    assert np.mean(defined) == pytest.approx(report.metrics["AP"], abs=1e-12)

    with open(tmp_path / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["class"] for r in table] == ds.class_names
    assert float(table[0]["AP"]) == rows[1]["AP"]  # person
    assert "AP50" in (tmp_path / "per_class.txt").read_text()


def test_detections_json_round_trips(coco128_ds, tmp_path):
    ds = coco128_ds
    dets = perturbed(ds, seed=1)
    score_detections(ds, dets, out_dir=tmp_path, plots=False)
    written = json.loads((tmp_path / "detections.json").read_text())
    assert len(written) == sum(len(d) for d in dets)
    first = next(i for i, d in enumerate(dets) if len(d))
    x1, y1, x2, y2 = dets[first].boxes[0].tolist()
    assert written[0]["image_id"] == ds.records[first].image_id
    assert written[0]["category_id"] == ds.category_ids[int(dets[first].labels[0])]
    np.testing.assert_allclose(written[0]["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=5e-4)


# ----------------------------------------------------------------------------- small hand-computed cases


def test_detections_to_coco_by_hand():
    dets = [
        Detections(torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.5, 1.25]]), torch.tensor([0.9, 0.123456789]), torch.tensor([1, 0])),
        Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)),
    ]
    out = detections_to_coco([7, 8], dets, category_ids=[5, 9])
    assert out == [
        {"image_id": 7, "category_id": 9, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9, abs=1e-6)},
        {"image_id": 7, "category_id": 5, "bbox": [0.0, 0.0, 5.5, 1.25], "score": 0.12346},
    ]
    with pytest.raises(ValueError, match="non-finite"):
        detections_to_coco([1], [Detections(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([float("nan")]), torch.tensor([0]))], [1])
    with pytest.raises(ValueError, match="outside 0..1"):
        detections_to_coco([1], [Detections(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5]), torch.tensor([2]))], [1, 2])


def test_empty_results_score_zero_not_crash():
    gt = tiny_gt([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}])
    m = coco_evaluate(gt, [])
    assert all(m[name] == 0.0 for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "ARs"))
    assert m["APm"] == m["APl"] == m["ARm"] == m["ARl"] == NO_GROUND_TRUTH  # no medium / large objects at all
    assert [(r["category_id"], r["AP"], r["detections"]) for r in m["per_class"]] == [(1, 0.0, 0), (2, NO_GROUND_TRUTH, 0)]


def test_false_positive_on_an_image_without_ground_truth():
    # Image 1 holds the only object; image 2 none. The detection on image 2 is a false positive:
    # ranked first, precision is 1/2 at recall 1, so every interpolated precision is 0.5.
    gt = tiny_gt([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}])
    hit = det(1, [10, 10, 40, 40], 0.8)
    assert coco_evaluate(gt, [hit, det(2, [50, 50, 20, 20], 0.9)])["AP"] == pytest.approx(0.5, abs=1e-12)
    assert coco_evaluate(gt, [hit, det(2, [50, 50, 20, 20], 0.7)])["AP"] == ONE  # ranked after the hit: harmless


def test_category_without_ground_truth_is_left_out_of_the_mean():
    gt = tiny_gt([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}])
    m = coco_evaluate(gt, [det(1, [10, 10, 40, 40], 0.8), det(1, [50, 50, 20, 20], 0.9, category_id=2)])
    assert m["AP"] == ONE  # class 2 has no ground truth: its false positive counts nowhere (pycocotools)
    assert [(r["AP"], r["detections"]) for r in m["per_class"]] == [(ONE, 1), (NO_GROUND_TRUTH, 1)]


def test_crowd_region_absorbs_detections_by_intersection_over_detection_area():
    # One object of class 1 and one crowd region; three detections on the crowd region, one
    # inside it (IoU with the region 0.25, but fully inside): none is a false positive.
    gt = tiny_gt([
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20]},
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 40, 40], "iscrowd": 1},
    ])
    crowd = [det(1, [40, 40, 40, 40], 0.95), det(1, [41, 41, 39, 39], 0.94), det(1, [40, 40, 20, 20], 0.93)]
    m = coco_evaluate(gt, [*crowd, det(1, [0, 0, 20, 20], 0.5)])
    assert m["AP"] == ONE and m["AR100"] == ONE  # and the crowd region is never a miss
    # A detection mostly outside the region (intersection / its area = 0.2) is a false positive.
    m = coco_evaluate(gt, [det(1, [60, 60, 40, 50], 0.95), det(1, [0, 0, 20, 20], 0.5)])
    assert m["AP50"] == pytest.approx(0.5, abs=1e-12)


def test_annotation_id_zero_is_renumbered():
    gt = tiny_gt([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}])
    gt["annotations"][0]["id"] = 0  # as some converters write
    hit = [det(1, [10, 10, 40, 40], 0.9)]
    # Raw pycocotools reads a match with annotation id 0 as "unmatched": the perfect detection scores 0.
    raw = COCO()
    raw.dataset = json.loads(json.dumps(gt))
    raw.createIndex()
    E = COCOeval(raw, raw.loadRes(json.loads(json.dumps(hit))), "bbox")
    E.evaluate(), E.accumulate(), E.summarize()
    assert E.stats[0] == 0.0
    assert coco_evaluate(gt, hit)["AP"] == ONE
    assert [a["id"] for a in load_ground_truth(gt).dataset["annotations"]] == [1]


def test_results_that_do_not_belong_to_the_ground_truth_fail_clearly(tmp_path):
    gt = tiny_gt([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}])
    with pytest.raises(ValueError, match=r"category ids not in the ground truth: \[7\]"):
        coco_evaluate(gt, [det(1, [10, 10, 40, 40], 0.9, category_id=7)])
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: \[99\]"):
        coco_evaluate(gt, [det(99, [10, 10, 40, 40], 0.9)])
    with pytest.raises(ValueError, match="score nan is not a finite number"):
        coco_evaluate(gt, [det(1, [10, 10, 40, 40], float("nan"))])
    bad = tmp_path / "results.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        coco_evaluate(gt, bad)
    with pytest.raises(FileNotFoundError, match="gt.json: ground-truth file not found"):
        coco_evaluate(tmp_path / "gt.json", [])
    with pytest.raises(ValueError, match="annotation 0: 'bbox' must be 4 finite numbers"):
        coco_evaluate(tiny_gt([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "area": 6}]), [])


def test_pycocotools_prints_only_when_verbose(capsys):
    gt = tiny_gt([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}])
    coco_evaluate(gt, [det(1, [10, 10, 40, 40], 0.9)])
    assert capsys.readouterr().out == ""
    coco_evaluate(gt, [det(1, [10, 10, 40, 40], 0.9)], verbose=True)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in capsys.readouterr().out


# ----------------------------------------------------------------------------- VOC difficult


def small_dataset(tmp_path: Path, records: list[Record], names=("cat", "dog"), fmt="voc") -> DetectionDataset:
    return DetectionDataset(records, list(names), None, tmp_path, fmt)


def rec(i: int, boxes, labels, ignore=None, size=(100, 100)) -> Record:
    return Record(Path(f"{i}.jpg"), i, size[0], size[1], np.array(boxes, np.float32).reshape(-1, 4), labels,
                  ignore if ignore is not None else [False] * len(labels))


def dets(boxes, scores, labels) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores, dtype=torch.float32),
                      torch.tensor(labels, dtype=torch.long))


def test_voc_difficult_boxes_are_neither_true_nor_false_positives(tmp_path):
    records = [rec(1, [[0, 0, 30, 30], [50, 50, 90, 90]], [0, 0], [False, True])]
    ds = small_dataset(tmp_path, records)
    normal = [[0, 0, 30, 30]]
    # A detection on the difficult box ranked above the real hit: if it counted as a false
    # positive AP50 would be 0.5; if the difficult box counted as a miss AR100 would be 0.5.
    on_difficult = [[51, 51, 89, 91]]  # IoU 0.88 with the difficult box
    m = score_detections(ds, [dets(on_difficult + normal, [0.9, 0.6], [0, 0])], plots=False).metrics
    assert m["AP50"] == ONE and m["AR100"] == ONE
    # Not detecting the difficult box costs nothing either.
    assert score_detections(ds, [dets(normal, [0.6], [0])], plots=False).metrics["AP"] == ONE
    # The same box as an ordinary object: the detection on it is now a hit, leaving it out a miss.
    plain = small_dataset(tmp_path, [rec(1, records[0].boxes, [0, 0])])
    assert score_detections(plain, [dets(normal, [0.6], [0])], plots=False).metrics["AR100"] == 0.5


def test_voc_and_coco_files_of_the_same_boxes_give_the_same_metrics(raccoon, tmp_path):
    ds = load_dataset(raccoon, "test", check=False, progress=False)  # the VOC reader on raccoon's test split
    assert ds.format == "voc" and len(ds) == 40
    for r in ds.records[::4]:  # some boxes difficult: they must be ignored the same way in both
        r.ignore = np.arange(len(r.labels)) == 0
    write_voc(ds, tmp_path / "voc", "test")
    write_coco(ds, tmp_path / "coco", "test")
    voc = load_dataset(tmp_path / "voc", "test", check=False, progress=False)
    coco = load_dataset(tmp_path / "coco" / "annotations" / "instances_test.json", "test", check=False, progress=False)
    assert (voc.format, coco.format) == ("voc", "coco")
    assert voc.num_boxes(include_ignored=True) - voc.num_boxes() == 10 == coco.num_boxes(include_ignored=True) - coco.num_boxes()

    dets_by_name = dict(zip((r.image_path.name for r in voc.records), perturbed(voc, seed=3)))
    m_voc = score_detections(voc, [dets_by_name[r.image_path.name] for r in voc.records], plots=False)
    m_coco = score_detections(coco, [dets_by_name[r.image_path.name] for r in coco.records], plots=False)
    assert 0.1 < m_voc.metrics["AP"] < 0.9
    assert m_voc.metrics == m_coco.metrics
    assert [(r["AP"], r["AP50"], r["instances"]) for r in m_voc.per_class] == [
        (r["AP"], r["AP50"], r["instances"]) for r in m_coco.per_class
    ]


# ----------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_by_hand():
    records = [
        # cat A, dog B, cat C (overlapping B), dog D
        rec(1, [[0, 0, 20, 20], [40, 40, 60, 60], [40, 40, 58, 62], [70, 0, 95, 30]], [0, 1, 0, 1]),
        # a cat, and an ignored (difficult) dog region
        rec(2, [[0, 0, 30, 30], [50, 50, 100, 100]], [0, 1], [False, True]),
    ]
    detections = [
        dets(
            [[0, 0, 20, 20],  # cat on A: true positive
             [40, 40, 58, 61],  # dog: IoU .95 with cat C but .86 with dog B -> B (same class first); C is missed
             [70, 0, 95, 30],  # cat on dog D: a dog seen as a cat
             [0, 60, 20, 95],  # dog on nothing: a false positive
             [0, 0, 20, 20]],  # cat duplicate below the score threshold: not counted
            [0.9, 0.8, 0.7, 0.6, 0.1], [0, 1, 0, 1, 0]),
        dets([[60, 60, 80, 80]], [0.5], [1]),  # inside the ignored region: counts nowhere; the cat is missed
    ]
    m = confusion_matrix(records, detections, num_classes=2, conf=0.25, iou=0.5)
    expected = np.array([
        # predicted: cat dog background
        [1, 0, 2],  # true cat
        [1, 1, 0],  # true dog
        [0, 1, 0],  # background
    ])
    np.testing.assert_array_equal(m, expected)


# ----------------------------------------------------------------------------- the loop on a real model


def raccoon_dataset(root: Path, split: str = "test") -> DetectionDataset:
    """raccoon's csv split, parsed by hand (VOC corners are 1-based pixel indices)."""
    rows: dict[str, list] = {}
    with open(root / "data" / f"{split}_labels.csv") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["filename"], []).append(row)
    records = []
    for i, (name, boxes) in enumerate(sorted(rows.items())):
        b = [[float(r["xmin"]) - 1, float(r["ymin"]) - 1, float(r["xmax"]), float(r["ymax"])] for r in boxes]
        records.append(Record(root / "images" / name, i, int(boxes[0]["width"]), int(boxes[0]["height"]), b, [0] * len(b)))
    return DetectionDataset(records, ["raccoon"], [0], root, "voc")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = preset("default", num_classes=1, input_size=128)
    cfg.backbone.weights, cfg.backbone.freeze_bn = "none", False  # random backbone: nothing to freeze
    cfg.postprocess.score_thresh = 0.0  # an untrained model scores about the 0.01 prior: keep its boxes
    cfg.postprocess.max_detections = 20
    cfg.rect = False  # evaluation letterboxes to the square, as training does: predict the same way
    model = build_model(cfg, class_names=["raccoon"], category_ids=[0])
    with torch.no_grad():  # spread the scores: an untrained head ties them all at the prior, and ties
        for conv in model.head.modules():  # would make the top detections depend on rounding
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.normal_(conv.weight, std=0.2)
    return model


def test_evaluate_loop_writes_every_promised_file(raccoon, tiny_model, tmp_path):
    ds = raccoon_dataset(raccoon)
    tiny_model.train()
    out = tmp_path / "eval"
    report = evaluate(tiny_model, ds, EvalConfig(batch_size=3), out_dir=out, progress=False, max_images=6)
    assert tiny_model.training  # training mode restored
    assert list(report.metrics) == list(METRIC_NAMES) and all(isinstance(v, float) for v in report.metrics.values())

    for name in ("confusion_matrix.png", "pr_curves.png"):
        with Image.open(out / name) as im:
            im.verify()
    samples = sorted((out / "samples").glob("*.png"))
    assert len(samples) == 6
    first = ds.records[0]
    with Image.open(out / "samples" / f"{first.image_id}_{first.image_path.stem}.png") as im:
        rgb = read_image(first.image_path)
        scale = min(1.0, 640 / max(rgb.shape[-2:]))
        assert im.width > 2 * rgb.shape[-1] * scale  # two panels side by side
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == report.metrics and saved["images"] == 6
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == saved["detections"] == 6 * 20
    gt = json.loads((out / "ground_truth.json").read_text())
    assert len(gt["images"]) == 6 and {a["category_id"] for a in gt["annotations"]} == {0}
    with open(out / "confusion_matrix.csv") as f:
        assert next(csv.reader(f)) == ["true \\ predicted", "raccoon", "background"]
    # The metrics are those of pycocotools on the written files.
    E = pycocotools_by_hand(out / "ground_truth.json", out / "detections.json")
    assert [report.metrics[n] for n in METRIC_NAMES] == list(E.stats)

    # The batched, letterboxed loop gives what model.predict gives image by image.
    first = [r for r in results if r["image_id"] == ds.records[3].image_id]
    expected = tiny_model.predict(read_image(ds.records[3].image_path))[0]
    np.testing.assert_allclose([r["bbox"] for r in first], torch.cat([expected.boxes[:, :2], expected.boxes[:, 2:] - expected.boxes[:, :2]], 1), atol=2e-3)
    np.testing.assert_allclose([r["score"] for r in first], expected.scores, atol=1e-5)


def test_evaluate_returns_flat_metrics_and_writes_no_plots_when_off(raccoon, tiny_model, tmp_path):
    ds = raccoon_dataset(raccoon)
    m0 = evaluate(tiny_model, ds, EvalConfig(batch_size=2), progress=False, max_images=4).metrics
    m1 = evaluate(tiny_model, ds, EvalConfig(batch_size=4, workers=1), out_dir=tmp_path, plots=False, progress=False, max_images=4).metrics
    assert m0 == m1 and list(m0) == list(METRIC_NAMES)  # batch size and worker processes change nothing
    assert not list(tmp_path.rglob("*.png"))
    assert {p.name for p in tmp_path.iterdir()} == {"ground_truth.json", "detections.json", "metrics.json", "per_class.csv", "per_class.txt"}


def test_conf_applies_to_this_evaluation_only(raccoon, tiny_model):
    ds = raccoon_dataset(raccoon)
    before = tiny_model.cfg.postprocess.score_thresh
    scores = lambda report: sorted(a["score"] for a in report.cocoeval.cocoDt.anns.values())  # noqa: E731
    every = scores(evaluate(tiny_model, ds, progress=False, max_images=2))
    conf = float(np.median(every))
    kept = scores(evaluate(tiny_model, ds, EvalConfig(conf=conf), progress=False, max_images=2))
    assert tiny_model.cfg.postprocess.score_thresh == before  # the model's config is not written
    assert 0 < len(kept) < len(every) and min(kept) >= conf - 1e-5


def test_evaluate_rejects_bad_input(raccoon, tiny_model):
    ds = raccoon_dataset(raccoon)
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        evaluate(tiny_model, ds, max_images=0, progress=False)
    empty = DetectionDataset([rec(1, [], [])], ["raccoon"], [0], Path("/data/empty"), "voc")
    with pytest.raises(ValueError, match="/data/empty: no .*ground-truth boxes"):
        evaluate(tiny_model, empty, progress=False)


def test_a_broken_image_is_one_clear_error_even_from_a_worker(tiny_model, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    broken = Record(tmp_path / "broken.jpg", 1, 100, 100, [[0, 0, 10, 10]], [0])
    ds = DetectionDataset([broken], ["raccoon"], [0], tmp_path, "voc")
    for workers in (0, 1):
        with pytest.raises(ImageError) as info:
            evaluate(tiny_model, ds, EvalConfig(workers=workers), progress=False)
        message = str(info.value)
        assert "broken.jpg: cannot decode image" in message and "\n" not in message, (workers, message)


def test_label_mapping_by_name():
    ds = DetectionDataset([], ["cat", "dog", "bird"], [3, 5, 9])
    assert label_mapping(["cat", "dog", "bird"], ds) == [0, 1, 2]
    assert label_mapping(["bird", "cat"], ds) == [2, 0]  # a model of a subset, in another order
    assert label_mapping(["0", "1", "2"], ds) == [0, 1, 2]  # an unnamed model of as many classes
    with pytest.raises(ValueError, match="'horse'"):
        label_mapping(["cat", "horse"], ds)


def test_eval_command(raccoon, tiny_model, tmp_path, capsys):
    ckpt = save_checkpoint(
        {"model": tiny_model.state_dict(), "config": {"model": to_dict(tiny_model.cfg)}, "class_names": ["raccoon"], "category_ids": [0]},
        tmp_path / "tiny.pt",
    )
    out = tmp_path / "eval"
    args = ["eval", "--model", str(ckpt), "--data", str(raccoon), "--split", "test", "--out", str(out),
            "--max-images", "4", "--batch", "2", "--no-plots"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["images"] == 4 and not list(out.rglob("*.png"))
    lines = {line.split()[0]: line.split()[-1] for line in printed.splitlines() if line.strip()}
    for name in METRIC_NAMES:  # every number printed, as saved ('-' for pycocotools' -1: no such objects)
        value = saved["metrics"][name]
        assert lines[name] == ("-" if value == NO_GROUND_TRUTH else f"{value:.3f}"), name
    assert "raccoon" in printed and "AP50" in printed

    assert main(["eval", "--model", str(ckpt), "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_training_curves_from_a_log_with_missing_validation(tmp_path):
    from retinanet.history import plot_training_curves, read_results_csv

    log = tmp_path / "results.csv"
    log.write_text(
        "epoch,train_loss,train_cls,lr,val_AP,val_AP50\n"
        "1,2.5,1.5,0.01,,\n"  # no validation this epoch
        "2,1.25,0.75,0.005,0.125,0.5\n"
    )
    cols = read_results_csv(log)
    np.testing.assert_array_equal(cols["train_loss"], [2.5, 1.25])
    assert np.isnan(cols["val_AP"][0]) and cols["val_AP50"][1] == 0.5
    png = plot_training_curves(log, tmp_path / "curves.png")
    with Image.open(png) as im:
        im.verify()
    with pytest.raises(FileNotFoundError, match="missing.csv: training log not found"):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png")
