"""The preview of augmented training batches: train_batch0.jpg .. train_batch2.jpg show the
first batches of the first epoch as the network receives them, each box drawn in its
class colour with its class name, written when a run starts and never again on resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATASETS, _require
from PIL import Image
from test_finetune import raccoon_parts, subset, tiny_cfg

from retinanet.data import load_dataset
from retinanet.data.dataset import DetectionDataset
from retinanet.data.labels import PAD_LABEL
from retinanet.data.loader import build_loader
from retinanet.draw import class_color
from retinanet.engine import Trainer
from retinanet.preview import GAP, draw_batch, grid_columns, save_batch_preview, tile_origin, tile_scale


def _first_batch(ds: DetectionDataset, size: int, batch: int, seed: int = 0, augment=None):
    loader = build_loader(ds, size, train=True, batch_size=batch, workers=0, seed=seed, augment=augment)
    loader.set_epoch(0)
    return next(iter(loader))


def _edge_colours(grid: torch.Tensor, batch, scale: float) -> list[tuple[int, float]]:
    """Per box: its class and the share of its top edge's pixels in exactly its class colour."""
    h, w = (round(s * scale) for s in batch.images.shape[-2:])
    cols = grid_columns(len(batch.images))
    out = []
    for i in range(len(batch.images)):
        ox, oy = tile_origin(i, cols, (h, w))
        for box, label in zip(batch.boxes[i].tolist(), batch.labels[i].tolist()):
            if label == PAD_LABEL or label < 0:
                continue
            x1, y1, x2, _ = (int(v * scale) for v in box)
            row = grid[:, oy + y1, ox + x1 : ox + x2 + 1].T  # (L, 3)
            hit = (row == torch.tensor(class_color(label), dtype=torch.uint8)).all(dim=1).float().mean()
            out.append((label, float(hit)))
    return out


def test_each_box_is_drawn_in_its_class_colour(tmp_path):
    aquarium = _require(DATASETS / "aquarium")  # 7 classes; under CI a missing folder fails
    ds = load_dataset(aquarium, "train", check="header", progress=False)
    ds = DetectionDataset(sorted(ds.records, key=lambda r: r.image_path.name), ds.class_names, ds.category_ids, ds.root, ds.format)
    batch = _first_batch(subset(ds, 0, 8), 160, 4)
    grid = draw_batch(batch.images, batch.boxes, batch.labels, ds.class_names)
    scale = tile_scale(160, 160)
    assert scale == 2.0  # a small input is enlarged by a whole factor: 4 tiles of 320 px in a 2 x 2 grid
    assert tuple(grid.shape) == (3, 2 * 320 + GAP, 2 * 320 + GAP)
    edges = _edge_colours(grid, batch, scale)
    assert len({label for label, _ in edges}) >= 2, "the batch should hold several classes"
    drawn = [share for _, share in edges if share >= 0.5]
    assert len(drawn) >= 0.8 * len(edges), edges  # a few edges lie under a later box's label

    blank = draw_batch(batch.images, batch.boxes, torch.full_like(batch.labels, PAD_LABEL), ds.class_names)
    assert max(share for _, share in _edge_colours(blank, batch, scale)) < 0.5  # the colour is the drawing's, not the photo's

    path = save_batch_preview(batch, ds.class_names, tmp_path / "train_batch0.jpg")
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (grid.shape[2], grid.shape[1])
        saved = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert (saved.float() - grid.float()).abs().mean() < 8  # the drawn grid, up to JPEG's loss


@pytest.fixture(scope="module")
def preview_run(raccoon, tmp_path_factory):
    """A 1-epoch run of 3 steps (6 photos in batches of 2)."""
    train, val = raccoon_parts(raccoon, 6, 2)
    cfg = tiny_cfg(tmp_path_factory.mktemp("preview"), "run", epochs=1, batch_size=2, loggers=())
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)
    trainer.fit()
    trainer.close()
    return trainer, train, val


def test_a_run_previews_its_first_three_augmented_batches(preview_run):
    trainer, train, _ = preview_run
    run = trainer.run_dir
    assert sorted(p.name for p in run.glob("train_batch*.jpg")) == ["train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg"]
    cfg = trainer.cfg
    loader = build_loader(train, cfg.model.input_size, train=True, batch_size=2, workers=0, seed=cfg.train.seed, augment=cfg.data.augment)
    loader.set_epoch(0)
    for i, batch in enumerate(loader):
        expected = draw_batch(batch.images, batch.boxes, batch.labels, train.class_names)
        with Image.open(run / f"train_batch{i}.jpg") as im:
            saved = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        assert saved.shape == expected.shape
        assert (saved.float() - expected.float()).abs().mean() < 8, f"train_batch{i}.jpg is not epoch 1's batch {i}"


def test_a_resumed_run_leaves_the_previews_alone(preview_run):
    trainer, train, val = preview_run
    run = trainer.run_dir
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.glob("train_batch*.jpg")}
    resumed = Trainer.resume(run, epochs=2, progress=False, train_data=train, val_data=val)
    resumed.fit()
    resumed.close()
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.glob("train_batch*.jpg")}
    assert after == before
