"""Training configuration: data, augmentation and the optimisation recipe, and the
RunConfig that ties them to the model."""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import ModelConfig


@dataclass
class AugmentConfig:
    """Training augmentation (torchvision.transforms.v2, box-aware). Evaluation only letterboxes.

    Order: [IoU crop] -> resize (longer side = input_size * zoom) -> flip -> random crop /
    pad to input_size, or to ``crop`` when set (or a 4-image mosaic) -> colour jitter -> clip
    boxes, drop tiny ones.
    See docs/augmentation.md.
    """

    hflip: float = 0.5
    """Probability of a horizontal flip."""
    scale: tuple[float, float] = (0.75, 1.25)
    """Random zoom range of the letterboxed image before the crop/pad back to input_size (1 = none)."""
    iou_crop: float = 0.0
    """Probability of torchvision's RandomIoUCrop (SSD-style) before resizing."""
    color_jitter: float = 0.2
    """Strength of brightness/contrast/saturation jitter (0 = off)."""
    hue: float = 0.0
    """Hue jitter (fraction of the colour wheel, as ColorJitter's hue); about 3 ms per 320 px image on a CPU core."""
    mosaic: float = 0.0
    """Probability of a 4-image mosaic (each image decoded and resized: about 4x the data cost)."""
    crop: int = 0
    """Train on random crop x crop windows of the image resized to input_size (0 = the whole
    input_size canvas). Objects keep input_size's scale while a step costs what crop px costs;
    validation and inference still see the whole image at input_size."""
    min_box_size: float = 2.0
    """Boxes narrower or shorter than this many input pixels after augmentation are dropped (>= 1)."""


@dataclass
class DataConfig:
    source: str = "synthetic"
    """Dataset folder, annotation file or spec YAML; 'synthetic' renders the built-in shapes dataset."""
    train_split: str = "train"
    """Split trained on."""
    val_split: str = "auto"
    """Split evaluated each epoch (best.pt is chosen on it): a name, 'none', or 'auto' (the
    source's val split, else a fixed held-out part of the training split; never a test split)."""
    holdout: float = 0.2
    """Share of the training images held out for validation when 'auto' finds no val split
    (every 1/holdout-th image by file name, so every run holds out the same ones)."""
    workers: int = -1
    """DataLoader worker processes (0 = load in the main process; -1 = auto: none on a machine
    with 2 cores or fewer, where workers only take cores from the network, else up to 4)."""
    cache: str = "none"
    """'ram': decode every training image once and keep it in memory, resized to what the
    augmentation can use (refused with a warning above half the memory available);
    'none': decode from the files every epoch."""
    drop_bad: bool = False
    """Drop unusable images/boxes with a report instead of stopping."""
    allow_outside_root: bool = False
    """Read images an annotation (VOC filename, COCO file_name, YOLO list line) places outside its folder / dataset root."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    epochs: int = 30
    """Passes over the training split."""
    batch_size: int = 8
    """Images per step (per process under torchrun)."""
    optimizer: str = "sgd"
    """'sgd' (momentum, nesterov) or 'adamw'."""
    lr: float = 0.01
    """Peak learning rate after warmup."""
    momentum: float = 0.9
    """SGD momentum / AdamW beta1."""
    weight_decay: float = 1e-4
    """Applied to conv and linear weights only, not to norms and biases."""
    warmup_epochs: float = 1.0
    """Linear warmup from warmup_factor * lr to lr over this many epochs."""
    warmup_factor: float = 0.001
    """Learning rate at the first step, relative to lr."""
    min_lr_ratio: float = 0.01
    """Cosine decay ends at lr * min_lr_ratio."""
    grad_clip: float = 10.0
    """Max global gradient norm (0 = off)."""
    ema_decay: float = 0.9998
    """Decay of the weight EMA used for evaluation and the saved model (0 = no EMA)."""
    ema_tau: float = 500.0
    """The EMA decay ramps up as decay * (1 - exp(-updates / tau)) so early epochs are usable."""
    precise_bn: int = 32
    """Before each validation, the evaluated weights' batch-norm statistics are recomputed on
    this many training images, letterboxed as validation sees them (0 = keep the running
    averages, which lag fast-moving weights early in training)."""
    amp: str = "auto"
    """'auto' (bf16 on CUDA, fp16 on CUDA without bf16, off on a CPU), 'off', 'bf16' (also on a
    CPU: faster where it has AVX512-BF16 or AMX) or 'fp16' (CUDA only)."""
    weights: str = ""
    """A trained detector (best.pt or last.pt) to fine-tune from: layers that fit are loaded,
    the class predictor restarts when the class count differs, its anchors are kept."""
    freeze_backbone_epochs: int = 0
    """Keep the backbone frozen (weights and batch norm) for this many first epochs."""
    seed: int = 0
    """Seed of weights init, data order and augmentation."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    sync_bn: bool = False
    """Convert batch norm to SyncBatchNorm under torchrun (CUDA only)."""
    eval_every: int = 1
    """Validate every this many epochs (and always after the last)."""
    patience: int = 0
    """Stop when the validation AP has not improved for this many epochs (0 = never); the
    run still writes results.csv and evaluates best.pt at the end."""
    max_nonfinite: int = 20
    """Stop with an error after this many consecutive steps with a non-finite loss or gradient."""
    loggers: tuple[str, ...] = ("tensorboard",)
    """Experiment trackers besides results.csv and steps.csv: 'tensorboard' (event files in the run folder), 'mlflow'."""
    out: str = "runs/train"
    """Folder that holds one sub-folder per run."""
    name: str = ""
    """Run folder name under out (default: exp, exp2, ...)."""


@dataclass
class RunConfig:
    """Everything `retinanet train` needs; saved as config.yaml in the run folder and in checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
