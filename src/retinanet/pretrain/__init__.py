"""Backbone pretraining: train a MobileNet as an image classifier, the backbone's first stage.

The classifier learns on a folder of class-named subfolders (ImageNet layout, read by
torchvision's ImageFolder), from scratch or continuing from torchvision's ImageNet
weights with a new head, on the training stack the detector uses (optim.py, runtime.py,
checkpoint.py, history.py). Its output file is a plain dict that the detector starts
from through ``model.backbone.weights=PATH``:

    {"format", "classifier_state", "backbone", "width", "class_names", "epoch",
     "optimizer", "scheduler", "metrics", "best", "history", "config"}

    data.py   class folders, the held-out split, transforms
    model.py  the classifier, started from random weights, ImageNet or a file
    loop.py   one training / evaluation pass; optimiser and schedule of a PretrainConfig
    run.py    pretrain(): a whole run, resumable, and what it writes
    crops.py  make_crops: a detection dataset as a classification folder
"""

from ..checkpoint import PRETRAIN_FORMAT as FORMAT
from ..checkpoint import load_pretrain_checkpoint, save_pretrain_checkpoint
from ..config import CropConfig, PretrainConfig
from ..optim import NonFiniteLossError, lr_factor, param_groups
from .crops import CROPS_MANIFEST, detection_crops, make_crops
from .data import ClassFolder, ClassificationData, eval_transform, load_image_folder, split_indices, train_transform
from .loop import build_optimizer, build_scheduler, evaluate, train_one_epoch
from .model import build_pretrain_model, head_keys
from .run import PretrainResult, plan_run, pretrain, train_command

__all__ = [
    "CROPS_MANIFEST", "FORMAT", "ClassFolder", "ClassificationData", "CropConfig", "NonFiniteLossError",
    "PretrainConfig", "PretrainResult", "build_optimizer", "build_pretrain_model", "build_scheduler",
    "detection_crops", "eval_transform", "evaluate", "head_keys", "load_image_folder", "load_pretrain_checkpoint",
    "lr_factor", "make_crops", "param_groups", "plan_run", "pretrain", "save_pretrain_checkpoint", "split_indices",
    "train_command", "train_one_epoch", "train_transform",
]  # fmt: skip
