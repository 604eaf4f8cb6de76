"""Typed configuration: every default is written once, in this package.

A config is a tree of dataclasses, one line of doc per field (``retinanet cfg`` prints
them all). It is read from a YAML file plus ``key=value`` overrides with dotted keys
(``model.fpn.channels=256``); an unknown key fails with the list of valid keys.

    model.py   the detector: backbone, fpn, anchors, head, loss, postprocess; presets
    train.py   data, augmentation, the training recipe; RunConfig (what a run saves)
    io.py      dataclass <-> dict, YAML, overrides
"""

from .io import ConfigError, apply_overrides, from_dict, load_yaml, merge, parse_overrides, save_yaml, to_dict
from .model import (
    PAPER_ANCHOR_RATIOS,
    PAPER_ANCHOR_SCALES,
    PAPER_ANCHOR_SIZES,
    PAPER_PRIOR_PROB,
    PRESETS,
    AnchorConfig,
    BackboneConfig,
    FPNConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    PostprocessConfig,
    preset,
)
from .train import AugmentConfig, DataConfig, RunConfig, TrainConfig

__all__ = [
    "PAPER_ANCHOR_RATIOS", "PAPER_ANCHOR_SCALES", "PAPER_ANCHOR_SIZES", "PAPER_PRIOR_PROB", "PRESETS",
    "AnchorConfig", "AugmentConfig", "BackboneConfig", "ConfigError", "DataConfig", "FPNConfig", "HeadConfig",
    "LossConfig", "ModelConfig", "PostprocessConfig", "RunConfig", "TrainConfig",
    "apply_overrides", "from_dict", "load_yaml", "merge", "parse_overrides", "preset", "save_yaml", "to_dict",
]  # fmt: skip
