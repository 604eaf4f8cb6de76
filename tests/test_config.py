import pytest

from retinanet.config import ConfigError, ModelConfig, RunConfig, apply_overrides, from_dict, load_yaml, merge, preset, to_dict


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("num_classes: 3\nfpn:\n  channels: 64\nanchors:\n  ratios: [1, 2]\n")
    cfg = merge(preset("default"), load_yaml(path))
    apply_overrides(cfg, ["head.depth=2", "anchors.scales=[1.0, 1.5]", "backbone.freeze_bn=true"])
    assert (cfg.num_classes, cfg.fpn.channels, cfg.head.depth) == (3, 64, 2)
    assert cfg.anchors.ratios == (1.0, 2.0) and cfg.anchors.scales == (1.0, 1.5)
    assert cfg.backbone.freeze_bn is True
    # round trip through a plain dict
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        apply_overrides(preset("default"), ["fpn.chanels=64"])
    assert "fpn.chanels" in str(e.value) and "channels" in str(e.value) and "lite" in str(e.value)


@pytest.mark.parametrize("item", ["head.depth=2.5", "head.lite=maybe", "loss.alpha=abc", "head.depth"])
def test_bad_values_fail_clearly(item):
    with pytest.raises(ConfigError):
        apply_overrides(preset("default"), [item])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="default"):
        preset("huge")


def test_exponent_numbers_without_a_dot():
    # YAML 1.1 reads 8e-5 as a string; a float setting still takes it as the number.
    cfg = apply_overrides(RunConfig(), ["train.weight_decay=8e-5", "train.lr=1e-2"])
    assert cfg.train.weight_decay == 8e-5 and cfg.train.lr == 0.01
    with pytest.raises(ConfigError, match="expected a finite number"):
        apply_overrides(RunConfig(), ["train.lr=fast"])
    with pytest.raises(ConfigError, match="expected a finite number"):
        apply_overrides(RunConfig(), ["train.lr=inf"])
