"""Training images decoded at the size augmentation can use (JPEG draft mode) and the
in-memory cache (data.cache=ram): boxes follow the reduced pixels, the cache serves
images whose files are gone, it is refused when memory is short, and a cached batch is
the uncached one up to a second resize."""

import warnings

import pytest
import torch
from PIL import Image, ImageDraw

from retinanet.config import AugmentConfig
from retinanet.data import DetectionDataset, Record
from retinanet.data import cache as cache_module
from retinanet.data.cache import ImageSource
from retinanet.data.loader import AugmentedDataset, build_loader

W, H = 2000, 1500
BOX = (600.0, 450.0, 1400.0, 1050.0)  # a white rectangle on black, in the file's pixels


def _photo_dataset(tmp_path, n=3):
    records = []
    for i in range(n):
        image = Image.new("RGB", (W, H))
        x1, y1, x2, y2 = BOX
        ImageDraw.Draw(image).rectangle((x1 + 20 * i, y1, x2 - 1, y2 - 1), fill=(255, 255, 255))
        path = tmp_path / f"photo{i}.jpg"
        image.save(path, quality=95)
        records.append(Record(path, i, W, H, boxes=[[BOX[0] + 20 * i, *BOX[1:]]], labels=[0]))
    return DetectionDataset(records, ["box"], root=tmp_path, format="coco")


def test_a_big_jpeg_decodes_reduced_with_boxes_on_the_same_pixels(tmp_path):
    data = _photo_dataset(tmp_path, 1)
    ds = AugmentedDataset(data, 320, train=True, augment=AugmentConfig(scale=(0.75, 1.25)))
    assert ds.transforms.source_side == 400  # 320 x the largest zoom
    image, target = ds.load(0)
    assert tuple(image.shape[-2:]) == (375, 500)  # 1/4 scale: the largest that keeps 400 x 300
    assert target["scale"] == pytest.approx(0.25)
    x1, y1, x2, y2 = (round(v) for v in target["boxes"][0].tolist())
    assert (x1, y1, x2, y2) == (150, 112, 350, 262)
    inside = image[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].float().mean()
    outside = image[:, : y1 - 2].float().mean()
    assert inside > 240 and outside < 15  # the box still frames the rectangle


def test_images_smaller_than_twice_the_need_decode_in_full(tmp_path):
    data = _photo_dataset(tmp_path, 1)
    image, fx, fy = ImageSource(data, side=1200).read(0)
    assert tuple(image.shape[-2:]) == (H, W) and fx == fy == 1.0


def test_ram_cache_serves_images_whose_files_are_gone(tmp_path):
    data = _photo_dataset(tmp_path)
    source = ImageSource(data, side=400, cache="ram", progress=False)
    assert source.cached and source.cache_bytes() == 3 * 400 * 300 * 3
    for r in data.records:
        r.image_path.unlink()
    image, fx, fy = source.read(2)
    assert tuple(image.shape[-2:]) == (300, 400) and fx == pytest.approx(0.2) and fy == pytest.approx(0.2)
    with pytest.raises(ValueError, match="image file not found"):
        ImageSource(data, side=400).read(0)  # uncached, the same read needs the file


def test_ram_cache_is_refused_when_memory_is_short(tmp_path, monkeypatch):
    data = _photo_dataset(tmp_path)
    monkeypatch.setattr(cache_module, "available_memory", lambda: 2 * 3 * 400 * 300 * 3 - 1)  # the cache needs just over half
    with pytest.warns(UserWarning, match=r"data.cache=ram: 3 training images .* reads them from disk instead"):
        source = ImageSource(data, side=400, cache="ram", progress=False)
    assert not source.cached and tuple(source.read(0)[0].shape[-2:]) == (375, 500)


def test_unknown_cache_mode_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data.cache must be one of none, ram, got 'disk'"):
        build_loader(_photo_dataset(tmp_path, 1), 320, train=True, batch_size=1, workers=0, cache="disk")


def test_cached_batches_match_uncached_ones_up_to_a_second_resize(tmp_path):
    data = _photo_dataset(tmp_path, 4)
    batches = []
    for cache in ("none", "ram"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the cache must really be used here
            loader = build_loader(data, 320, train=True, batch_size=4, workers=0, seed=3, cache=cache)
        loader.set_epoch(1)
        batches.append(next(iter(loader)))
    plain, cached = batches
    assert loader.dataset.images.cached
    assert torch.equal(plain.labels, cached.labels)
    torch.testing.assert_close(cached.boxes, plain.boxes, atol=1.5, rtol=0)
    diff = (cached.images - plain.images).abs()
    assert diff.mean() < 0.01
