"""Drawing detections: one class palette and one box drawer, shared by predict images and
evaluation plots, so a class has the same colour everywhere."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache

from torch import Tensor

GOLDEN_RATIO_CONJUGATE = 0.618033988749895
# Labels and lines are sized to the image: one line pixel per LINE_PX_PER of the longer side,
# a font of one pixel per FONT_PX_PER (and never below MIN_FONT_PX, which stays readable).
LINE_PX_PER = 320
FONT_PX_PER = 45
MIN_FONT_PX = 11
LUMA_LIGHT = 150  # BT.601 luma above which a background counts as light


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed RGB colour per class index. Golden-ratio hue steps give neighbouring classes
    clearly different hues for any number of classes (a fixed colour map of 10 or 20
    entries repeats, or pairs classes in near-identical shades)."""
    r, g, b = colorsys.hsv_to_rgb((label * GOLDEN_RATIO_CONJUGATE) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > LUMA_LIGHT else (255, 255, 255)


@lru_cache(maxsize=1)
def font_path() -> str:
    """matplotlib's DejaVu Sans: a scalable font that is always installed with matplotlib
    (PIL's built-in default is too small to read on large images)."""
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    labels: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    scores: Sequence[float] | None = None,
) -> Tensor:
    """(3, H, W) uint8 -> (3, H, W) uint8 with ``boxes`` (D, 4) xyxy drawn in ``colors`` and
    each ``labels`` text on a filled strip of its box's colour, line width and font size
    scaled to the image (torchvision.utils.draw_bounding_boxes). Boxes are drawn in the
    order given, each over the ones before; with ``scores``, from the lowest score up, so
    the best box and its label end on top (of equal scores, the one given first)."""
    from torchvision.utils import draw_bounding_boxes

    if not len(boxes):
        return image
    boxes, labels, colors = boxes.float().reshape(-1, 4), list(labels), list(colors)
    if scores is not None:
        order = sorted(range(len(labels)), key=lambda i: (scores[i], -i))  # lowest first
        boxes, labels, colors = boxes[order], [labels[i] for i in order], [colors[i] for i in order]
    side = max(image.shape[-2:])
    return draw_bounding_boxes(
        image, boxes, labels=labels, colors=colors,
        width=max(1, round(side / LINE_PX_PER)), font=font_path(), font_size=max(MIN_FONT_PX, round(side / FONT_PX_PER)),
        label_colors=[text_color(c) for c in colors], label_background_colors=colors, fill_labels=True,
    )  # fmt: skip


__all__ = ["class_color", "draw_boxes", "text_color"]
