import math

import pytest
import torch
import yaml

from retinanet.config import RunConfig, preset
from retinanet.data.dataset import DetectionDataset
from retinanet.data.synthetic import load_synthetic
from retinanet.engine import Trainer
from retinanet.optim import NonFiniteLossError, ema_avg_fn, lr_factor


def subset(ds: DetectionDataset, n: int) -> DetectionDataset:
    return DetectionDataset(ds.records[:n], ds.class_names, ds.category_ids, ds.root, ds.format)


@pytest.fixture(scope="module")
def tiny_data():
    return subset(load_synthetic("train", progress=False), 16), subset(load_synthetic("val", progress=False), 4)


def tiny_cfg(tmp_path, name: str, **train) -> RunConfig:
    cfg = RunConfig(model=preset("default", input_size=128))
    cfg.data.workers = 0
    cfg.train.epochs = 2
    cfg.train.batch_size = 4
    cfg.train.warmup_epochs = 0.5
    cfg.train.ema_tau = 4
    cfg.train.out = str(tmp_path)
    cfg.train.name = name
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_lr_schedule_hand_values():
    # 10 warmup steps from 0.1 to 1, then cosine over 90 steps down to 0.01.
    assert lr_factor(0, 100, 10, 0.1, 0.01) == pytest.approx(0.1)
    assert lr_factor(5, 100, 10, 0.1, 0.01) == pytest.approx(0.55)
    assert lr_factor(10, 100, 10, 0.1, 0.01) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100, 100, 10, 0.1, 0.01) == pytest.approx(0.01)


def test_ema_ramp():
    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    ema_avg_fn(0.9, 2.0)(avg, cur, torch.tensor(2))
    d = 0.9 * (1 - math.exp(-1.0))
    torch.testing.assert_close(avg[0], torch.full((3,), 1 - d))
    ints = [torch.zeros(2, dtype=torch.long)]
    ema_avg_fn(0.9, 2.0)(ints, [torch.tensor([3, 4])], torch.tensor(5))  # counters are copied
    assert ints[0].tolist() == [3, 4]


class Interrupt(Exception):
    pass


def test_resumed_run_reaches_the_same_weights(tmp_path, tiny_data):
    train, val = tiny_data
    full = Trainer(tiny_cfg(tmp_path, "full"), progress=False, train_data=train, val_data=val)
    full_result = full.fit()
    assert full.step == 8 and full_result.epochs == 2
    assert (tmp_path / "full" / "best.pt").is_file() and (tmp_path / "full" / "results.csv").is_file()

    def stop_mid_second_epoch(t: Trainer) -> None:
        if t.step == 6:  # epoch 1 is checkpointed at step 4; die half way through epoch 2
            raise Interrupt

    cut = Trainer(tiny_cfg(tmp_path, "cut"), progress=False, on_step=stop_mid_second_epoch, train_data=train, val_data=val)
    with pytest.raises(Interrupt):
        cut.fit()
    resumed = Trainer.resume(tmp_path / "cut", progress=False, train_data=train, val_data=val)
    assert (resumed.epoch, resumed.step) == (1, 4)
    resumed.fit()
    assert resumed.step == 8
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"model {name}")
    for (name, a), b in zip(full.ema.module.state_dict().items(), resumed.ema.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"ema {name}")
    assert full.scheduler.get_last_lr() == pytest.approx(resumed.scheduler.get_last_lr())


def test_divergence_stops_with_a_clear_error_and_never_steps_on_nan(tmp_path, tiny_data):
    train, val = tiny_data
    cfg = tiny_cfg(tmp_path, "boom", lr=1e9, warmup_epochs=0.0, grad_clip=0.0, max_nonfinite=3, epochs=5)
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        trainer.fit()
    # The skipped steps left the last good weights in place: nothing is NaN.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_trainer_leaves_the_callers_config_alone(tmp_path, tiny_data):
    train, val = tiny_data
    cfg = tiny_cfg(tmp_path, "copy")
    cfg.model.num_classes = 99
    trainer = Trainer(cfg, progress=False, train_data=train, val_data=val)
    assert cfg.model.num_classes == 99  # the caller's config is unchanged
    assert trainer.cfg.model.num_classes == train.num_classes == trainer.model.num_classes
    saved = yaml.safe_load((tmp_path / "copy" / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == train.num_classes
