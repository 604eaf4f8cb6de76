"""Box-aware augmentation: boxes stay on their objects through every transform.

The synthetic images carry a coloured rectangle exactly where their box is; after a
transform the box must still frame the pixels of that colour.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.config import AugmentConfig
from retinanet.data.dataset import DetectionDataset, Record
from retinanet.data.loader import AugmentedDataset
from retinanet.data.mosaic import mosaic
from retinanet.data.transforms import CropOrPad, DetectionTransforms, make_sample, unpack
from retinanet.data.labels import CROWD_LABEL
from retinanet.preprocess import letterbox

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
GREY = (40, 40, 40)
NO_AUG = dict(hflip=0.0, scale=(1.0, 1.0), iou_crop=0.0, color_jitter=0.0, mosaic=0.0)


def rect_image(h, w, boxes, colours, background=GREY):
    """(3, h, w) uint8 with each box filled with its colour."""
    img = torch.tensor(background, dtype=torch.uint8)[:, None, None].repeat(1, h, w)
    for (x1, y1, x2, y2), c in zip(boxes, colours):
        img[:, int(y1) : int(y2), int(x1) : int(x2)] = torch.tensor(c, dtype=torch.uint8)[:, None, None]
    return img


def colour_mask(image, colour):
    """Pixels of a float (3, H, W) image closer to ``colour`` than to anything else we paint."""
    target = torch.tensor(colour, dtype=torch.float32)[:, None, None] / 255
    return (image - target).abs().amax(dim=0) < 0.3


def mask_box(mask):
    """Pixel-edge bounding box [x1, y1, x2, y2] of a boolean mask, or None."""
    ys, xs = mask.nonzero(as_tuple=True)
    if len(xs) == 0:
        return None
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def run(transforms, image, boxes, labels, ignore=None, seed=0):
    torch.manual_seed(seed)
    return unpack(transforms(*make_sample(image, np.array(boxes, np.float32), labels, ignore)))


def test_eval_letterbox_by_hand_and_equal_to_preprocess_letterbox():
    box = [60.0, 40.0, 180.0, 120.0]
    img = rect_image(200, 300, [box], [RED])
    out, boxes, labels, scale = run(DetectionTransforms(150, train=False), img, [box], [3])
    assert scale == 0.5 and labels.tolist() == [3]
    torch.testing.assert_close(boxes, torch.tensor([[30.0, 20.0, 90.0, 60.0]]))  # box * scale
    assert out.shape == (3, 150, 150) and out.dtype == torch.float32
    assert colour_mask(out, RED)[20:60, 30:90].all()
    assert colour_mask(out, RED).sum() == 40 * 60
    assert (out[:, 100:, :] == 0).all()  # padding only at the bottom (150 x 100 content)
    ref, ref_scale, _ = letterbox([img], 150)
    assert ref_scale.item() == scale
    # Same geometry and filter; ours resizes uint8, so values differ by at most a rounding step.
    assert (out - ref[0]).abs().max() <= 1 / 255 + 1e-6


def test_eval_on_a_real_image_scales_boxes_per_axis(coco128):
    path = coco128 / "train2017" / "000000000009.jpg"  # 640 x 480
    rec_boxes = np.array([[1.08, 187.69, 612.67, 473.53], [311.73, 4.31, 631.01, 232.99]], np.float32)
    img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    out, boxes, _, scale = run(DetectionTransforms(320, train=False), img, rec_boxes, [0, 1])
    assert scale == 0.5
    torch.testing.assert_close(boxes, torch.from_numpy(rec_boxes) * 0.5)
    ref, _, _ = letterbox([img], 320)
    assert (out - ref[0]).abs().max() <= 1 / 255 + 1e-6


def test_eval_rounding_follows_the_pixels():
    # 427 rows -> round(213.5) = 214 rows: y scales by 214/427, x by exactly 0.5 = the scale.
    img = rect_image(427, 640, [], [])
    _, boxes, _, scale = run(DetectionTransforms(320, train=False), img, [[100, 400, 300, 427]], [0])
    assert scale == 0.5
    torch.testing.assert_close(boxes, torch.tensor([[50.0, 400 * 214 / 427, 150.0, 214.0]]))
    assert (boxes[0] - torch.tensor([100.0, 400, 300, 427]) * scale).abs().max() <= 0.5


def test_flip_by_hand_keeps_padding_bottom_right():
    box = [60.0, 40.0, 180.0, 120.0]
    img = rect_image(200, 300, [box], [RED])
    t = DetectionTransforms(150, train=True, cfg=AugmentConfig(**{**NO_AUG, "hflip": 1.0}))
    out, boxes, _, _ = run(t, img, [box], [0])
    # Resized width 150: [x1, y1, x2, y2] -> [W - x2, y1, W - x1, y2] of [30, 20, 90, 60].
    torch.testing.assert_close(boxes, torch.tensor([[150 - 90.0, 20.0, 150 - 30.0, 60.0]]))
    torch.testing.assert_close(mask_box(colour_mask(out, RED)), boxes[0])
    assert (out[:, 100:, :] == 0).all() and (out[:, :100, :].amax(dim=0) > 0).all()


def test_crop_drops_outside_boxes_clips_partial_ones_and_keeps_ignore_regions():
    boxes = [[10, 10, 50, 50], [150, 150, 190, 190], [80, 20, 140, 60], [90, 90, 130, 130]]
    img = rect_image(200, 200, [], [])
    t = DetectionTransforms(100, train=True, cfg=AugmentConfig(**NO_AUG))
    crop = CropOrPad(100)
    sample = make_sample(img, np.array(boxes, np.float32), [1, 2, 3, 4], [False, False, False, True])
    _, out_boxes, labels, _ = unpack(t.finish(*crop.crop(*sample, top=0, left=0)))
    torch.testing.assert_close(out_boxes, torch.tensor([[10.0, 10, 50, 50], [80, 20, 100, 60], [90, 90, 100, 100]]))
    assert labels.tolist() == [1, 3, CROWD_LABEL]
    # Window at (top 50, left 60): the first box leaves, the others shift by (-60, -50).
    _, out_boxes, labels, _ = unpack(t.finish(*crop.crop(*sample, top=50, left=60)))
    torch.testing.assert_close(out_boxes, torch.tensor([[20.0, 0, 80, 10], [30, 40, 70, 80]]))
    assert labels.tolist() == [3, CROWD_LABEL]


def test_window_beyond_the_image_pads_black():
    img = rect_image(50, 80, [[0, 0, 80, 50]], [RED])
    image, target = CropOrPad(100).crop(*make_sample(img, np.array([[0, 0, 80, 50]], np.float32), [0]), top=0, left=0)
    assert image.shape == (3, 100, 100)
    assert (image[:, :50, :80] == img).all() and (image[:, 50:] == 0).all() and (image[:, :, 80:] == 0).all()
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[0.0, 0, 80, 50]]))


def test_crop_trains_on_windows_at_the_input_size_scale():
    # augment.crop=64 with input 128: the 256 px image is halved (input scale) and a 64 px
    # window is cut from it; the red box keeps the input scale (80 -> 40 px) and frames its pixels.
    box = [100.0, 100.0, 180.0, 180.0]
    img = rect_image(256, 256, [box], [RED])
    t = DetectionTransforms(128, train=True, cfg=AugmentConfig(**NO_AUG, crop=64))
    seen = 0
    for seed in range(12):
        out, boxes, labels, scale = run(t, img, [box], [0], seed=seed)
        assert out.shape == (3, 64, 64) and scale == 0.5
        red = mask_box(colour_mask(out, RED))
        if red is None:
            assert len(boxes) == 0
            continue
        seen += 1
        torch.testing.assert_close(boxes[0], red)
        assert (boxes[0, 2:] - boxes[0, :2]).max() <= 40.0
    assert seen > 0
    # Evaluation ignores crop and the mosaic canvas follows it.
    assert DetectionTransforms(128, train=False, cfg=AugmentConfig(crop=64)).place.size == 128
    with pytest.raises(ValueError, match="must not exceed the input size"):
        DetectionTransforms(128, train=True, cfg=AugmentConfig(crop=192))
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectionTransforms(128, train=True, cfg=AugmentConfig(crop=50))


def test_tiny_boxes_are_dropped_below_min_box_size():
    img = rect_image(200, 200, [], [])
    boxes = [[10, 10, 13, 40], [50, 50, 90, 90]]  # the first is 3 px wide -> 1.5 px at scale 0.5
    _, kept, labels, _ = run(DetectionTransforms(100, True, AugmentConfig(**NO_AUG)), img, boxes, [0, 1])
    assert labels.tolist() == [1]
    _, kept, labels, _ = run(DetectionTransforms(100, True, AugmentConfig(**NO_AUG, min_box_size=1.0)), img, boxes, [0, 1])
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(kept[0], torch.tensor([5.0, 5.0, 6.5, 20.0]))


@pytest.mark.parametrize("iou_crop", [0.0, 1.0])
def test_random_geometry_keeps_boxes_on_their_pixels(iou_crop):
    boxes = [[60.0, 40.0, 180.0, 120.0], [200.0, 130.0, 290.0, 190.0]]
    img = rect_image(200, 300, boxes, [RED, BLUE])
    cfg = AugmentConfig(hflip=0.5, scale=(0.5, 2.0), iou_crop=iou_crop, color_jitter=0.0)
    t = DetectionTransforms(128, train=True, cfg=cfg)
    seen_crops = 0
    for seed in range(16):
        out, out_boxes, labels, _ = run(t, img, boxes, [0, 1], [False, True], seed=seed)
        assert out.shape == (3, 128, 128)
        for label, colour in ((0, RED), (CROWD_LABEL, BLUE)):  # the ignore region travels as CROWD_LABEL
            found = mask_box(colour_mask(out, colour))
            mine = out_boxes[labels == label]
            if len(mine):
                assert found is not None, seed
                assert (mine[0] - found).abs().max() <= 1.0, (seed, mine, found)
            elif iou_crop == 0:
                # Dropped only when (almost) nothing of the object is left in the window.
                assert found is None or min(found[2] - found[0], found[3] - found[1]) <= cfg.min_box_size + 1, seed
        seen_crops += int(len(labels) < 2)
    assert seen_crops > 0  # the zoom range really moved boxes out of the window sometimes


def test_colour_jitter_changes_pixels_not_boxes():
    boxes = [[60.0, 40.0, 180.0, 120.0]]
    img = rect_image(200, 300, boxes, [(200, 120, 60)], background=(90, 140, 200))
    plain = DetectionTransforms(128, True, AugmentConfig(hflip=0.5, scale=(0.8, 1.5), color_jitter=0.0))
    jitter = DetectionTransforms(128, True, AugmentConfig(hflip=0.5, scale=(0.8, 1.5), color_jitter=0.4, hue=0.05))
    for seed in range(3):
        a, boxes_a, _, _ = run(plain, img, boxes, [0], seed=seed)
        b, boxes_b, _, _ = run(jitter, img, boxes, [0], seed=seed)
        torch.testing.assert_close(boxes_a, boxes_b)  # geometry draws come before colour draws
        assert (a - b).abs().max() > 0.02
        assert (b >= 0).all() and (b <= 1).all()


def test_mosaic_by_hand():
    # Four 100 x 100 tiles, each with one rectangle; centre (40, 60) on a 100 x 100 canvas.
    rects = [[70, 50, 90, 90], [10, 50, 30, 90], [70, 10, 90, 30], [0, 0, 100, 100]]
    colours = [RED, GREEN, BLUE, YELLOW]
    tiles = [make_sample(rect_image(100, 100, [r], [c]), np.array([r], np.float32), [k]) for k, (r, c) in enumerate(zip(rects, colours))]
    for i, (_, tg) in enumerate(tiles):
        tg["scale"] = 0.5 + i
    image, target = mosaic(tiles, 100, (40, 60))
    # top-left shows tile 0's window x 60..100, y 40..100: its box shifts by (-60, -40)
    # top-right tile 1's window x 0..60, y 40..100: shift by (+40, -40), cut at x = 100
    # bottom-left tile 2's window x 60..100, y 0..40: shift by (-60, +60)
    # bottom-right tile 3's window x 0..60, y 0..40: whole quadrant
    expected = torch.tensor([[10.0, 10, 30, 50], [50, 10, 70, 50], [10, 70, 30, 90], [40, 60, 100, 100]])
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)
    assert target["labels"].tolist() == [0, 1, 2, 3] and target["scale"] == 0.5
    out = image.float() / 255
    for box, colour in zip(expected, colours):
        torch.testing.assert_close(mask_box(colour_mask(out, colour)), box)


def test_mosaic_pads_small_tiles_black():
    small = make_sample(rect_image(20, 30, [[0, 0, 30, 20]], [RED]), np.array([[0, 0, 30, 20]], np.float32), [0])
    image, target = mosaic([small] * 4, 100, (50, 50))
    # Top-left tile sits with its bottom-right corner on the centre: x 20..50, y 30..50.
    assert target["boxes"][0].tolist() == [20.0, 30.0, 50.0, 50.0]
    assert (image[:, :30, :50] == 0).all() and (image[:, 30:50, :20] == 0).all()


def _write_dataset(tmp_path, n=4):
    colours = [RED, GREEN, BLUE, YELLOW]
    records = []
    for k in range(n):
        box = [20 + 10 * k, 30, 120 + 10 * k, 110 + 5 * k]
        path = tmp_path / f"img{k}.png"
        Image.fromarray(rect_image(160, 200, [box], [colours[k]]).permute(1, 2, 0).numpy()).save(path)
        records.append(Record(path, 100 + k, 200, 160, boxes=[box], labels=[k]))
    return DetectionDataset(records, ["red", "green", "blue", "yellow"])


@pytest.mark.parametrize("crop", [0, 96])
def test_mosaic_in_the_dataset_keeps_every_box_on_its_colour(tmp_path, crop):
    colours = [RED, GREEN, BLUE, YELLOW]
    aug = AugmentConfig(mosaic=1.0, color_jitter=0.0, crop=crop)
    ds = AugmentedDataset(_write_dataset(tmp_path), 128, True, aug, seed=3)
    side = crop or 128  # a mosaic fills the training canvas: the crop window when set
    for i in range(4):
        image, target = ds[i]
        assert image.shape == (3, side, side) and target["image_id"] == 100 + i
        for k, colour in enumerate(colours):
            mask = colour_mask(image, colour)
            boxes = target["boxes"][target["labels"] == k]
            covered = torch.zeros_like(mask)
            for x1, y1, x2, y2 in boxes.round().long().tolist():
                assert mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].float().mean() > 0.99  # box interior is its colour
                covered[y1:y2, x1:x2] = True
            # No pixel of that colour lies outside its boxes, except a sliver of a box dropped as too thin.
            stray = mask_box(mask & ~covered)
            assert stray is None or min(stray[2] - stray[0], stray[3] - stray[1]) <= 2.0 + 1, (i, k, stray)


def test_dataset_eval_sample_and_size_check(tmp_path):
    data = _write_dataset(tmp_path, 2)
    image, target = AugmentedDataset(data, 100, train=False)[1]
    assert image.shape == (3, 100, 100) and target["scale"] == 0.5
    torch.testing.assert_close(target["boxes"], torch.tensor([[15.0, 15.0, 65.0, 57.5]]))
    assert target["labels"].tolist() == [1] and target["image_id"] == 101 and target["orig_size"] == (160, 200)
    data.records[0].width = 160  # the annotation disagrees with the file
    with pytest.raises(ValueError, match=r"img0\.png.*200x160.*160x160"):
        AugmentedDataset(data, 100, train=False)[0]


def test_same_seed_epoch_index_same_sample_and_global_rng_untouched(tmp_path):
    ds = AugmentedDataset(_write_dataset(tmp_path), 96, True, AugmentConfig(scale=(0.5, 1.5), color_jitter=0.3), seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = ds[(2, 1)], ds[(2, 1)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    others = [ds[(e, 1)] for e in range(3, 8)]
    assert any(not torch.equal(a[0], o[0]) for o in others)


@pytest.mark.parametrize(
    "field, value",
    [("hflip", 1.5), ("mosaic", -0.1), ("color_jitter", 1.0), ("min_box_size", 0.5), ("scale", (1.2, 0.8))],
)
def test_bad_augment_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=f"augment.{field}"):
        DetectionTransforms(320, True, AugmentConfig(**{field: value}))
