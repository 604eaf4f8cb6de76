"""The root of the configuration tree: one section per job, so ``retinanet cfg`` and the
docs list every key from one place. A training run saves its RunConfig part (model,
data, train) in config.yaml and in its checkpoints; each other command reads its own
section's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from .evaluation import EvalConfig
from .export import BenchConfig, ExportConfig, QuantizeConfig
from .model import ModelConfig
from .predict import PredictConfig
from .pretrain import CropConfig, PretrainConfig
from .train import DataConfig, TrainConfig


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The detector (`retinanet train`, and every checkpoint)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training data and its augmentation (`retinanet train`)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training recipe (`retinanet train`)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """`retinanet eval`."""
    predict: PredictConfig = field(default_factory=PredictConfig)
    """`retinanet predict`."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """`retinanet export`."""
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    """`retinanet export --int8`."""
    benchmark: BenchConfig = field(default_factory=BenchConfig)
    """`retinanet benchmark`."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """`retinanet pretrain`."""
    crops: CropConfig = field(default_factory=CropConfig)
    """`retinanet pretrain --from-detection`: object crops as classification images."""
