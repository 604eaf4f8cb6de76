"""Annotated images draw the lowest score first, so where boxes overlap the best box and
its label end on top, whatever order the detections come in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinanet.api import Result, annotate
from retinanet.data.images import read_image
from retinanet.draw import class_color, draw_boxes

BOX = [20.0, 30.0, 150.0, 160.0]  # x1, y1, x2, y2
BEST, WEAK = 1, 0  # class indices: the higher-scoring box's and the other's


def _count(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((image == np.array(colour, np.uint8)).all(axis=-1).sum())


def _label_strip(image: np.ndarray) -> np.ndarray:
    """Where the labels of boxes at BOX are drawn: just inside its top-left corner."""
    x1, y1 = int(BOX[0]), int(BOX[1])
    return image[y1 + 2 : y1 + 18, x1 + 2 : x1 + 40]


@pytest.mark.parametrize("best_first", [True, False])
def test_the_best_box_and_its_label_are_on_top(best_first):
    # Same box, two classes (same-length names, so the two label strips cover the same pixels).
    scores, labels, names = [0.9, 0.6], [BEST, WEAK], ["dog", "cat"]
    if not best_first:
        scores, labels, names = scores[::-1], labels[::-1], names[::-1]
    r = Result(np.array([BOX, BOX], np.float32), np.array(scores, np.float32), np.array(labels), names, (200, 220))
    out = annotate(np.zeros((200, 220, 3), np.uint8), r)
    strip = _label_strip(out)
    best, weak = class_color(BEST), class_color(WEAK)
    assert _count(strip, best) > 50  # the label's background has the best class's colour
    assert tuple(strip[-3, 10]) == best  # below the text, inside the strip
    # Nothing of the weaker box shows: its edges and label lie under the best one's.
    assert _count(out, weak) == 0


def test_real_image_keeps_the_best_label_on_top(coco128):
    image = read_image(coco128 / "train2017" / "000000000034.jpg")  # (3, H, W)
    h, w = image.shape[-2:]
    r = Result(
        np.array([BOX, BOX, [0, 0, 60, 60]], np.float32), np.array([0.8, 0.3, 0.5], np.float32),
        np.array([BEST, WEAK, 2]), ["dog", "cat", "owl"], (h, w),
    )  # fmt: skip
    out = annotate(image, r)
    strip = _label_strip(out)
    assert _count(strip, class_color(BEST)) > 50 and _count(strip, class_color(WEAK)) == 0


def test_draw_boxes_orders_by_scores_and_keeps_given_order_without():
    image = torch.zeros(3, 200, 220, dtype=torch.uint8)
    boxes = torch.tensor([BOX, BOX])
    colours = [class_color(BEST), class_color(WEAK)]
    by_score = draw_boxes(image, boxes, ["dog 0.90", "cat 0.60"], colours, scores=[0.9, 0.6])
    as_given = draw_boxes(image, boxes, ["dog 0.90", "cat 0.60"], colours)  # the last one drawn on top
    top = lambda t: tuple(t[:, int(BOX[1]), 60].tolist())
    assert top(by_score) == class_color(BEST)
    assert top(as_given) == class_color(WEAK)


def _corner_label(side: int, colour: tuple[int, int, int]) -> tuple[int, torch.Tensor]:
    """Rows of label background (box colour) at a box's top-left corner on a black
    side x side grey image, and that corner's pixels."""
    from retinanet.draw import draw_boxes

    img = torch.full((3, side, side), 128, dtype=torch.uint8)  # grey: black or white pixels are text
    x1, y1 = int(side * 0.2), int(side * 0.3)
    out = draw_boxes(img, torch.tensor([[x1, y1, side * 0.8, side * 0.9]]), ["person 0.91"], [colour])
    corner = out[:, y1 : y1 + side // 8, x1 : x1 + side // 3]  # the label sits in this corner
    column = corner[:, :, max(1, round(side / 320)) + 1].T  # just inside the box's left edge, (H, 3)
    height = int((column == torch.tensor(colour, dtype=torch.uint8)).all(1).sum())  # rows of label background
    return height, corner


def test_labels_grow_with_the_image_and_text_follows_contrast():
    from retinanet.draw import class_color

    small, _ = _corner_label(320, class_color(3))
    large, _ = _corner_label(1920, class_color(3))
    assert small >= 8 and large >= 3 * small  # a fixed-size label would stay about as tall
    for colour, text in (((250, 240, 120), (0, 0, 0)), ((30, 30, 140), (255, 255, 255))):
        _, strip = _corner_label(960, colour)
        pixels = strip.reshape(3, -1).T
        assert (pixels == torch.tensor(text, dtype=torch.uint8)).all(1).sum() > 20  # the text is in that colour
