"""Anchor coverage (best possible recall) and fitted anchors."""

import math

import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from retinanet.anchor_fit import (
    anchor_generator,
    anchor_recall,
    anchor_report,
    best_anchor_iou,
    fit_anchors,
    format_report,
    letterboxed_boxes,
    overrides,
    plot_report,
)
from retinanet.cli import main
from retinanet.config import AnchorConfig, ModelConfig, RunConfig, apply_overrides, preset
from retinanet.data import DetectionDataset, Record, load_dataset


def tiny_config():
    """64 px input, two levels: P3 (stride 8, 16 px anchors) and P4 (stride 16, 32 px), one square anchor each."""
    return apply_overrides(
        ModelConfig(input_size=64),
        ["fpn.min_level=3", "fpn.max_level=4", "anchors.sizes=[16,32]", "anchors.scales=[1]", "anchors.ratios=[1]"],
    )


def test_best_possible_recall_by_hand():
    boxes = torch.tensor(
        [
            [4.0, 4, 20, 20],  # 16x16 on the P3 anchor centred at (12, 12): IoU 1
            [0, 0, 16, 8],  # 16x8: best is a P3 anchor, 12*8 / (128 + 256 - 96) = 1/3
            [30, 30, 62, 62],  # 32x32 centred at 46: nearest P4 centre 40, 26^2 / (2*1024 - 26^2) = 0.4927
            [8, 8, 40, 40],  # 32x32 on the P4 anchor centred at (24, 24): IoU 1
            [0, 0, 64, 64],  # 64x64 centred at 32: P4 anchor at (40, 40) inside it, 1024 / 4096
        ]
    )
    r = anchor_recall(boxes, tiny_config())
    c_iou = 26**2 / (2 * 1024 - 26**2)
    torch.testing.assert_close(r.best_iou, torch.tensor([1.0, 1 / 3, c_iou, 1.0, 0.25]))
    assert r.counts == {"small": 2, "medium": 3, "large": 0, "all": 5}  # areas 256, 128 | 1024, 1024, 4096
    assert r.recall == {"small": 0.5, "medium": pytest.approx(1 / 3), "large": None, "all": pytest.approx(0.4)}  # None: no NaN
    assert r.mean_best_iou == pytest.approx((1 + 1 / 3 + c_iou + 1 + 0.25) / 5)


def test_nearest_centre_search_equals_all_anchors(coco128):
    cfg = preset("default")  # 320 px: P7 has ceil(320 / 128) = 3 cells, the last one partly outside
    ds = load_dataset(coco128, "train", check="header", progress=False)
    boxes, skipped = letterboxed_boxes(ds, cfg.input_size)
    assert len(boxes) == 929 and skipped == 10  # coco128: 929 boxes + 10 crowd regions
    gen = anchor_generator(cfg)
    anchors, _ = gen((cfg.input_size, cfg.input_size))
    reference = box_iou(boxes, anchors).max(dim=1).values  # every anchor of the model
    torch.testing.assert_close(best_anchor_iou(boxes, gen, cfg.input_size), reference, rtol=0, atol=1e-6)


def test_letterboxed_boxes_skip_ignored_and_empty(tmp_path):
    rec = Record(
        tmp_path / "a.jpg", 1, width=200, height=100,
        boxes=[[0, 0, 100, 50], [10, 10, 10, 30], [0, 0, 200, 100]], labels=[0, 0, 0], ignore=[False, False, True],
    )
    boxes, skipped = letterboxed_boxes(DetectionDataset([rec], ["a"]), 64)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0, 32, 16]]))  # scale 64 / 200
    assert skipped == 2


def test_kmeans_finds_the_one_shape_of_the_data():
    # 24x8 boxes centred on P3 anchor centres: one scale and one ratio cover them exactly,
    # side sqrt(192) = 16 * 0.866, ratio h / w = 1/3.
    centres = torch.tensor([[12.0, 12], [28, 36], [44, 20], [52, 52]])
    boxes = torch.cat([centres - torch.tensor([12.0, 4]), centres + torch.tensor([12.0, 4])], dim=1)
    cfg = tiny_config()
    # The square 16 px anchor: 16*8 / (192 + 256 - 128) = 0.4 < 0.5 for every box.
    torch.testing.assert_close(anchor_recall(boxes, cfg).best_iou, torch.full((4,), 0.4))
    fitted = fit_anchors(boxes, cfg, 1, 1, generations=50)
    assert fitted.sizes == (16.0, 32.0)
    assert fitted.scales[0] == pytest.approx(math.sqrt(192) / 16, abs=2e-3)
    assert fitted.ratios[0] == pytest.approx(1 / 3, abs=2e-3)
    r = anchor_recall(boxes, cfg, fitted)
    assert r.recall["all"] == 1.0 and r.mean_best_iou > 0.99


@pytest.mark.parametrize("source", ["coco128", "raccoon"])
def test_fitted_anchors_are_not_worse_than_the_defaults(request, source):
    ds = load_dataset(request.getfixturevalue(source), "train", check="header", progress=False)
    cfg = preset("default")
    report = anchor_report(ds, cfg, fit=(3, 3), seed=0)
    default, fitted = report.default, report.fitted
    assert fitted.recall["all"] >= default.recall["all"]
    assert (fitted.recall["all"], fitted.mean_best_iou) > (default.recall["all"], default.mean_best_iou)
    if source == "coco128":
        # Half of coco128's boxes are under 32^2 px at 320: the defaults (>= 32 px) miss most of them.
        assert default.recall["small"] < 0.25 and fitted.recall["all"] > default.recall["all"] + 0.1
    # The printed overrides give a config with exactly the fitted anchors and recall.
    line = overrides(fitted.scales, fitted.ratios)
    applied = apply_overrides(RunConfig(), line.split()).model  # what `retinanet train ... <line>` does
    assert applied.anchors.scales == fitted.scales and applied.anchors.ratios == fitted.ratios
    assert anchor_recall(report.boxes, applied).recall == fitted.recall


def test_report_text_and_plot(tmp_path):
    boxes = torch.tensor([[4.0, 4, 20, 20], [0, 0, 16, 8], [0, 0, 64, 64]])
    cfg = tiny_config()
    from retinanet.anchor_fit import AnchorFitReport

    report = AnchorFitReport(64, (16.0, 32.0), boxes, 1, anchor_recall(boxes, cfg))
    report.fitted = anchor_recall(boxes, cfg, AnchorConfig((16.0, 32.0), (0.8, 2.0), (0.5, 1.0)))
    text = format_report(report)
    assert "model.anchors.scales=[0.8,2] model.anchors.ratios=[0.5,1]" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line}
    assert lines["all"].split()[1:] == ["3", "33.3%", f"{100 * report.fitted.recall['all']:.1f}%"]
    assert lines["medium"].split()[1:] == ["1", "0.0%", f"{100 * report.fitted.recall['medium']:.1f}%"]  # 64x64
    assert lines["large"].split()[-3:] == ["0", "-", "-"]
    png = plot_report(report, tmp_path / "out" / "anchors.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300


def test_cli_prints_the_table_and_the_overrides(raccoon, tmp_path, capsys):
    assert main(["anchors", str(raccoon), "--split", "test", "--fit", "2", "3", "--plot", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out
    assert "[test]: 40 images" in out and "all" in out and (tmp_path / "a.png").is_file()
    fitted = [line for line in out.splitlines() if line.startswith("fitted:")][0]
    scales = fitted.split("model.anchors.scales=[")[1].split("]")[0].split(",")
    ratios = fitted.split("model.anchors.ratios=[")[1].split("]")[0].split(",")
    assert (len(scales), len(ratios)) == (2, 3)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["anchors", str(tmp_path / "nothing")]) == 1
    assert "retinanet anchors: error:" in capsys.readouterr().err
    assert main(["anchors", str(tmp_path), "--fit", "0", "3"]) == 1
    assert "--fit" in capsys.readouterr().err


def test_cli_model_overrides_change_the_measured_anchors(raccoon, capsys):
    assert main(["anchors", str(raccoon), "model.anchors.sizes=[16,32,64,128,256]", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "anchor sizes [16, 32, 64, 128, 256]" in out
    assert main(["anchors", str(raccoon), "anchors.sizes=[16,32,64,128,256]"]) == 1
    assert "only model.* overrides" in capsys.readouterr().err
