"""Precise batch norm (train.precise_bn): before each validation the evaluated weights'
batch-norm statistics become the exact mean over a fixed set of training images,
letterboxed as validation sees them, each batch weighted by its image count; weights,
momenta and modes are left as they were, batch norms that were not training (a frozen
backbone's) keep their statistics, and a failure puts the old statistics back."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_finetune import SMALL, raccoon_parts, tiny_cfg

from retinanet.checkpoint import model_from_checkpoint
from retinanet.config import EvalConfig, preset
from retinanet.engine import Trainer
from retinanet.evaluation.loop import LetterboxedImages
from retinanet.model import RetinaNet
from retinanet.validation import recalibrate_bn, trained_norms

BN = torch.nn.modules.batchnorm._BatchNorm


def _small_model() -> RetinaNet:
    cfg = preset("default", num_classes=1, **SMALL)
    cfg.backbone.weights, cfg.backbone.freeze_bn, cfg.backbone.freeze_stages = "none", False, 0
    return RetinaNet(cfg)


def _norms(model) -> dict[str, BN]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BN)}


def _batch(records, size: int) -> torch.Tensor:
    return torch.stack([LetterboxedImages(records, size)[i][0] for i in range(len(records))])


def test_statistics_become_the_exact_statistics_of_the_images(raccoon):
    train, _ = raccoon_parts(raccoon, n_train=4)
    model = _small_model().train()
    for m in _norms(model).values():  # stale running averages, far from anything the images give
        m.running_mean.fill_(50.0)
        m.running_var.fill_(1e4)
    weights = copy.deepcopy(model.state_dict())
    frozen = "head.cls_tower.norms.0.0"
    names = set(_norms(model)) - {frozen}

    # The reference: every batch norm normalises the 4 images with their own batch statistics
    # (momentum 1: the running values become exactly that batch's).
    ref = copy.deepcopy(model).eval()
    for n, m in _norms(ref).items():
        m.reset_running_stats()
        m.momentum = 1.0
        m.train()
    with torch.no_grad():
        ref(_batch(train.records, model.cfg.input_size))

    used = recalibrate_bn(model, train.records, 4, EvalConfig(batch_size=4), names)
    assert used == 4
    assert model.training and all(m.momentum == 0.1 for m in _norms(model).values())  # modes and momenta restored
    got, want = _norms(model), _norms(ref)
    for n in names:
        assert torch.allclose(got[n].running_mean, want[n].running_mean, atol=1e-5), n
        assert torch.allclose(got[n].running_var, want[n].running_var, rtol=1e-4, atol=1e-6), n
    assert float(got[frozen].running_mean[0]) == 50.0  # not named: untouched
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items() if "running" not in k and "num_batches" not in k)


def test_batches_are_weighted_by_their_image_count_and_none_holds_one_image(raccoon):
    train, _ = raccoon_parts(raccoon, n_train=5)
    model = _small_model()
    name = "fpn.output.0.1"  # the first batch norm of the finest pyramid output
    seen: list[tuple[int, torch.Tensor]] = []
    bn = dict(model.named_modules())[name]
    hook = bn.register_forward_hook(lambda mod, inp, out: seen.append((len(inp[0]), inp[0].detach().mean((0, 2, 3)))))
    recalibrate_bn(model, train.records, 5, EvalConfig(batch_size=2), trained_norms(model.train()))
    hook.remove()
    assert [n for n, _ in seen] == [2, 3]  # 2 + 2 + 1: the lone image joins the batch before it
    assert torch.allclose(bn.running_mean, (2 * seen[0][1] + 3 * seen[1][1]) / 5, atol=1e-5)


def test_an_unreadable_image_leaves_the_statistics_as_they_were(raccoon, tmp_path):
    train, _ = raccoon_parts(raccoon, n_train=4)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    records = [*train.records[:3], dataclasses.replace(train.records[3], image_path=broken)]
    model = _small_model()
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in _norms(model).items()}
    with pytest.raises(Exception, match="broken.jpg"):
        recalibrate_bn(model, records, 4, EvalConfig(batch_size=2), trained_norms(model.train()))
    for n, m in _norms(model).items():
        assert torch.equal(m.running_mean, before[n][0]) and torch.equal(m.running_var, before[n][1]), n
    assert model.training and all(m.momentum == 0.1 for m in _norms(model).values())


def test_a_frozen_backbone_keeps_its_imagenet_statistics(raccoon, tmp_path):
    train, val = raccoon_parts(raccoon, n_train=4, n_val=2)
    cfg = tiny_cfg(tmp_path, "frozen", freeze_backbone_epochs=1, precise_bn=4)
    cfg.model.backbone.freeze_bn, cfg.model.backbone.freeze_stages = False, 0
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)
    start = {n: m.running_mean.clone() for n, m in _norms(trainer.model.backbone).items()}
    assert start  # the backbone has batch norms of its own to keep
    trainer.fit()
    saved = model_from_checkpoint(tmp_path / "frozen" / "last.pt")
    for n, m in _norms(saved.backbone).items():
        assert torch.equal(m.running_mean, start[n]), n
    # The pyramid's and the head's were recomputed on those 4 images: recomputing them again
    # (upstream norms in batch mode, as the run did) leaves them where they are.
    names = {n for n in _norms(saved) if not n.startswith("backbone.")}
    assert any(n.startswith("head.") for n in names) and any(n.startswith("fpn.") for n in names)
    before = {n: m.running_mean.clone() for n, m in _norms(saved).items() if n in names}
    recalibrate_bn(saved, train.records, 4, EvalConfig(batch_size=cfg.train.batch_size), names)
    moved = [n for n, m in _norms(saved).items() if n in names and not torch.allclose(m.running_mean, before[n], atol=1e-4)]
    assert moved == []


def test_a_training_run_saves_recalibrated_statistics_and_zero_turns_it_off(raccoon, tmp_path):
    train, val = raccoon_parts(raccoon, n_train=4, n_val=2)
    eval_cfg = EvalConfig(batch_size=4)
    for images, name in ((4, "on"), (0, "off")):
        Trainer(tiny_cfg(tmp_path, name, precise_bn=images), progress=False, train_data=train, val_data=val).fit()
        model = model_from_checkpoint(tmp_path / name / "last.pt")  # the EMA weights, as validated
        before = {n: m.running_mean.clone() for n, m in _norms(model).items()}
        recalibrate_bn(model, train.records, 4, eval_cfg, set(before))
        changed = [n for n, m in _norms(model).items() if not torch.allclose(m.running_mean, before[n], atol=1e-4)]
        if images:  # already the statistics of those 4 images: recomputing them changes nothing
            assert changed == []
        else:  # running averages of augmented batches, not those of the letterboxed images
            assert changed
