"""Typed configuration: every default is written once, in this package.

A config is a tree of dataclasses, one line of doc per field (``retinanet cfg`` prints
them all). It is read from a YAML file plus ``key=value`` overrides with dotted keys
(``model.fpn.channels=256``); an unknown key fails with the list of valid keys.

    model.py   the detector: backbone, fpn, anchors, head, loss, postprocess; presets
    train.py   data, augmentation, the training recipe; RunConfig (what a run saves)
    evaluation.py  EvalConfig: the evaluation loop and its plots
    export.py  settings of `retinanet export` (ONNX, int8) and `retinanet benchmark`
    predict.py settings of `retinanet predict`
    pretrain.py    PretrainConfig, CropConfig: `retinanet pretrain` and its object crops
    tree.py    Config: the root, one section per command
    describe.py every key with its default and doc (`retinanet cfg`)
    io.py      dataclass <-> dict, YAML, overrides
"""

from .evaluation import EvalConfig
from .export import BenchConfig, ExportConfig, QuantizeConfig
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
from .predict import PredictConfig
from .pretrain import CropConfig, PretrainConfig
from .train import AugmentConfig, DataConfig, RunConfig, TrainConfig
from .tree import Config

__all__ = [
    "PAPER_ANCHOR_RATIOS", "PAPER_ANCHOR_SCALES", "PAPER_ANCHOR_SIZES", "PAPER_PRIOR_PROB", "PRESETS",
    "AnchorConfig", "AugmentConfig", "BackboneConfig", "BenchConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "ExportConfig", "FPNConfig", "HeadConfig",
    "LossConfig", "ModelConfig", "PostprocessConfig", "PredictConfig", "QuantizeConfig", "RunConfig", "TrainConfig",
    "CropConfig", "PretrainConfig",
    "apply_overrides", "from_dict", "load_yaml", "merge", "parse_overrides", "preset", "save_yaml", "to_dict",
]  # fmt: skip
