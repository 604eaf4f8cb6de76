"""Padded batches, seeded reproducibility across worker counts, and the model's loss on them."""

import numpy as np
import pytest
import torch

from retinanet.config import AugmentConfig, preset
from retinanet.data import DetectionDataset, Record, load_dataset
from retinanet.data.loader import AugmentedDataset, Batch, build_loader, collate, sample_seed
from retinanet.data.labels import CROWD_LABEL, PAD_LABEL
from retinanet.model import build_model


def _sample(boxes, labels, image_id=1, scale=0.5, orig=(20, 30), fill=0.0):
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "image_id": image_id,
        "scale": scale,
        "orig_size": orig,
    }
    return torch.full((3, 16, 16), fill), target


def test_collate_pads_boxes_and_labels():
    batch = collate(
        [
            _sample([[1, 2, 3, 4], [5, 6, 7, 8]], [3, CROWD_LABEL], image_id=7, scale=0.25, orig=(64, 48), fill=0.1),
            _sample([], [], image_id=9, scale=0.5, orig=(32, 32), fill=0.2),
            _sample([[0, 0, 9, 9]], [0], image_id=11, scale=1.0, orig=(16, 10), fill=0.3),
        ]
    )
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.images.shape == (3, 3, 16, 16) and batch.images[2, 0, 0, 0].item() == pytest.approx(0.3)
    expected_boxes = torch.tensor(
        [[[1.0, 2, 3, 4], [5, 6, 7, 8]], [[0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 9, 9], [0, 0, 0, 0]]]
    )
    torch.testing.assert_close(batch.boxes, expected_boxes)
    assert batch.labels.tolist() == [[3, CROWD_LABEL], [PAD_LABEL, PAD_LABEL], [0, PAD_LABEL]]
    assert batch.labels.dtype == torch.long and batch.image_ids.tolist() == [7, 9, 11]
    torch.testing.assert_close(batch.scales, torch.tensor([0.25, 0.5, 1.0]))
    assert batch.orig_sizes.tolist() == [[64, 48], [32, 32], [16, 10]] and batch.orig_sizes.dtype == torch.long
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.boxes, batch.boxes)


def test_collate_without_any_box_gives_g_zero():
    batch = collate([_sample([], []), _sample([], [])])
    assert batch.boxes.shape == (2, 0, 4) and batch.labels.shape == (2, 0)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(preset("default", num_classes=3, input_size=96, **{"backbone.weights": "none", "backbone.freeze_bn": False})).train()


@pytest.mark.parametrize(
    "samples",
    [
        [_sample([], []), _sample([], [])],  # G = 0
        [_sample([[10, 10, 60, 70]], [1]), _sample([], [])],  # an image without boxes next to one with
        [_sample([[10, 10, 60, 70], [0, 0, 96, 96]], [2, CROWD_LABEL]), _sample([], [])],
    ],
)
def test_model_loss_is_finite_on_collated_batches(small_model, samples):
    samples = [(torch.rand(3, 96, 96), t) for _, t in samples]
    batch = collate(samples)
    with torch.no_grad():
        out = small_model.loss(small_model(batch.images), batch.images.shape[-2:], batch.boxes, batch.labels)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    if (batch.labels >= 0).any():
        assert out["num_fg"] > 0 and out["box"] > 0
    else:
        assert out["num_fg"] == 0 and out["box"] == 0


@pytest.fixture(scope="module")
def coco16(coco128):
    ds = load_dataset(coco128, "train", check="header", progress=False)
    return DetectionDataset(ds.records[:16], ds.class_names, ds.category_ids)


def _batches(loader):
    return [(b.images.clone(), b.boxes.clone(), b.labels.clone(), b.image_ids.clone()) for b in loader]


def _equal(a, b):
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def test_same_seed_and_epoch_same_batches_with_0_or_2_workers(coco16):
    aug = AugmentConfig(scale=(0.6, 1.4), color_jitter=0.3, iou_crop=0.3, mosaic=0.3)
    kw = dict(input_size=128, train=True, batch_size=4, seed=5, augment=aug)
    inline = build_loader(coco16, workers=0, **kw)
    workers = build_loader(coco16, workers=2, **kw)
    inline.set_epoch(3)
    workers.set_epoch(3)
    a, b = _batches(inline), _batches(workers)
    assert len(a) == 4 and _equal(a, b)
    assert a[0][0].shape == (4, 3, 128, 128) and a[0][0].dtype == torch.float32
    workers.set_epoch(4)
    c = _batches(workers)
    assert not _equal(a, c)  # a new epoch reshuffles and re-draws
    workers.set_epoch(3)
    assert _equal(a, _batches(workers))  # and going back gives epoch 3 again (resume)
    assert sorted(torch.cat([x[3] for x in a]).tolist()) == sorted(r.image_id for r in coco16.records)


def test_a_pass_without_set_epoch_advances_the_epoch(coco16):
    loader = build_loader(coco16, 96, train=True, batch_size=8, workers=0, seed=1)
    first = _batches(loader)
    assert loader.epoch == 0
    second = _batches(loader)
    assert loader.epoch == 1 and not _equal(first, second)
    loader.set_epoch(0)
    assert _equal(first, _batches(loader))


def test_loading_in_the_main_process_leaves_the_global_rng_alone(coco16):
    aug = AugmentConfig(scale=(0.6, 1.4), color_jitter=0.3, iou_crop=0.5, mosaic=0.5)
    loader = build_loader(coco16, 96, train=True, batch_size=8, workers=0, seed=1, augment=aug)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    for _ in loader:  # shuffling, worker seeds and augmentation all use their own generators
        pass
    assert torch.equal(torch.rand(3), expected)


def test_eval_loader_keeps_dataset_order_and_letterbox_targets(coco16):
    loader = build_loader(coco16, 160, train=False, batch_size=5, workers=0)
    batches = list(loader)
    assert [len(b) for b in batches] == [5, 5, 5, 1]  # no drop_last in evaluation
    ids = torch.cat([b.image_ids for b in batches]).tolist()
    assert ids == [r.image_id for r in coco16.records]
    b, r = batches[0], coco16.records[0]
    scale = 160 / max(r.width, r.height)
    assert b.scales[0].item() == pytest.approx(scale) and b.orig_sizes[0].tolist() == [r.height, r.width]
    real = b.labels[0] != PAD_LABEL
    expect_labels = torch.from_numpy(np.where(r.ignore, CROWD_LABEL, r.labels))
    assert torch.equal(b.labels[0][real], expect_labels)
    # Boxes are the record's boxes times the letterbox scale (per-axis rounding: under half a pixel).
    assert (b.boxes[0][real] - torch.from_numpy(r.boxes) * scale).abs().max() <= 0.5


def test_training_loader_drops_the_ragged_batch_unless_the_data_is_smaller(coco16):
    assert len(build_loader(coco16, 96, train=True, batch_size=5, workers=0)) == 3
    tiny = DetectionDataset(coco16.records[:3], coco16.class_names, coco16.category_ids)
    assert [len(b) for b in build_loader(tiny, 96, train=True, batch_size=8, workers=0)] == [3]
    with pytest.raises(ValueError, match="no batch"):
        build_loader(tiny, 96, train=True, batch_size=8, workers=0, drop_last=True)


def test_bad_arguments_are_clear_errors(coco16, tmp_path):
    with pytest.raises(ValueError, match="no images"):
        build_loader(DetectionDataset([], ["a"]), 96, train=True)
    with pytest.raises(ValueError, match="batch size"):
        build_loader(coco16, 96, train=True, batch_size=0)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        build_loader(coco16, 96, train=True, distributed=True)
    missing = DetectionDataset([Record(tmp_path / "gone.jpg", 1, 10, 10)], ["a"])
    with pytest.raises(ValueError, match="gone.jpg"):
        next(iter(build_loader(missing, 96, train=False, workers=0)))


def test_sample_seed_depends_on_every_part():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)


def test_torch_dataset_has_one_sample_per_record(coco16):
    ds = AugmentedDataset(coco16, 96, train=True)
    assert len(ds) == 16
    image, target = ds[0]
    assert image.shape == (3, 96, 96) and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].shape[1] == 4 and len(target["boxes"]) == len(target["labels"])


def test_distributed_loader_shards_by_rank(coco16, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_loader(coco16, 96, train=True, batch_size=4, workers=0, seed=2, distributed=True)
        loader.set_epoch(1)
        ids = torch.cat([b.image_ids for b in loader]).tolist()
        # World size 1: this rank sees every image once, in DistributedSampler's (seed, epoch) order.
        order = torch.randperm(16, generator=torch.Generator().manual_seed(2 + 1)).tolist()
        assert ids == [coco16.records[i].image_id for i in order]
    finally:
        dist.destroy_process_group()
