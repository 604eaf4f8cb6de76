"""Which images a run validates on: the source's val split, else a fixed held-out part of
train; never a test split (best.pt would be chosen on the data it is judged on)."""

from __future__ import annotations

import pytest

from retinanet.config import DataConfig, RunConfig, preset
from retinanet.data import load_dataset
from retinanet.data.splits import HOLDOUT, hold_out, resolve_val_split, saved_val_split


def test_auto_never_picks_a_test_split(raccoon, coco128, tmp_path):
    assert resolve_val_split(DataConfig(source=str(raccoon))) == HOLDOUT  # raccoon has train and test only
    assert resolve_val_split(DataConfig(source=str(coco128))) == HOLDOUT
    assert resolve_val_split(DataConfig(source=str(raccoon), val_split="test")) == "test"  # asked for by name
    assert resolve_val_split(DataConfig(source=str(raccoon), val_split="none")) is None
    assert resolve_val_split(DataConfig(source="synthetic")) == "val"


def test_hold_out_is_a_fixed_fifth_of_train_by_file_name(raccoon):
    train = load_dataset(raccoon, "train", check="header", progress=False)
    kept, held = hold_out(train, 0.2)
    assert len(held) == len(train) // 5 and len(kept) + len(held) == len(train)
    names = lambda ds: {r.image_path.name for r in ds.records}  # noqa: E731
    assert not names(kept) & names(held)
    ordered = sorted(r.image_path.name for r in train.records)
    assert names(held) == set(ordered[4::5])
    shuffled = load_dataset(raccoon, "train", check="header", progress=False)
    shuffled.records.reverse()
    assert names(hold_out(shuffled, 0.2)[1]) == names(held)  # the order of the records does not matter
    with pytest.raises(ValueError, match="holdout"):
        hold_out(train, 1.5)


def test_a_run_on_train_and_test_validates_on_held_out_training_images(raccoon, tmp_path, capsys):
    from retinanet.engine import Trainer

    cfg = RunConfig(model=preset("default", input_size=128))
    cfg.data.source, cfg.data.workers = str(raccoon), 0
    cfg.train.out, cfg.train.name, cfg.train.epochs = str(tmp_path), "holdout", 1
    trainer = Trainer(cfg, progress=False)
    trainer.close()
    test_names = {r.image_path.name for r in load_dataset(raccoon, "test", check="header", progress=False).records}
    val_names = {r.image_path.name for r in trainer.val_data.records}
    train_names = {r.image_path.name for r in trainer.train_data.records}
    assert len(val_names) == 32 and len(train_names) == 128 and not val_names & train_names
    assert not val_names & test_names
    assert "no val split: validating on 32 of the training images" in capsys.readouterr().out


def test_runs_saved_before_held_out_validation_resume_on_their_old_split(raccoon):
    # 'auto' used to mean val, else test: a run saved then must keep validating on test.
    assert saved_val_split(DataConfig(source=str(raccoon))) == "test"
    assert saved_val_split(DataConfig(source=str(raccoon), val_split="none")) == "none"


def test_too_few_images_to_hold_out_validate_on_train(raccoon):
    from retinanet.data.dataset import DetectionDataset
    from retinanet.data.splits import choose_validation

    full = load_dataset(raccoon, "train", check="header", progress=False)
    tiny = DetectionDataset(full.records[:3], full.class_names, full.category_ids, full.root, full.format)
    train, val, note = choose_validation(tiny, DataConfig(source=str(raccoon)))
    assert train is tiny and val is tiny and "too few" in note
