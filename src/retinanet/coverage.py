"""Fit the model to the data before the first step: does every class have anchors it can
learn from at this input size?

At the start of a run (engine.Trainer) the training boxes, letterboxed to the input size,
are measured against the anchors: best possible recall (BPR, anchor_fit.py) overall and per
class, and the share of boxes smaller than the finest level's stride. When coverage is
poor and ``model.anchors.fit`` is on, each level's base size is fitted with the scales and
ratios (every position keeps the same scales x ratios), and the run keeps the fitted
anchors in its config, so config.yaml, the checkpoints and the exported model carry them. A class that even fitted
anchors cannot cover is named before training starts, with what to do about it.
``model.input_size=auto`` picks the input size from the box sizes first.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from torch import Tensor

from .anchor_fit import anchor_generator, best_anchor_iou, fit_anchors, letterboxed
from .config import ConfigError, ModelConfig
from .data.dataset import DetectionDataset

AUTO = "auto"
AUTO_SIZES = (320, 416, 512, 640)  # never above 640: the cost grows with the square of the size
TINY_STRIDES = 2  # a box under 2 strides of the finest level spans at most 2 x 2 grid cells
MAX_TINY_SHARE = 0.05  # auto picks the smallest size with at most this share of tiny boxes
REFIT_RECALL = 0.98  # refit below this overall BPR (YOLOv5's autoanchor threshold)
CLASS_REFIT_RECALL = 0.9  # ... or when a class's BPR is below this
AT_RISK_RECALL = 0.5  # a class below this after fitting is named as at risk
MIN_CLASS_BOXES = 5  # classes with fewer training boxes are reported but never decide a refit
MAX_CLASS_LOSS = 0.05  # fitted anchors are refused when a class loses more coverage than this
SMALL_STRIDES = 4  # a class whose median box side is under 4 finest strides (32 px) counts as small


@dataclass
class ClassCoverage:
    name: str
    boxes: int
    recall: float
    """Share of the class's boxes with an anchor at IoU >= the matcher's fg_iou."""
    median_side: float
    """Median sqrt(w * h) of its boxes, input pixels."""
    below_stride: float
    """Share of its boxes whose longer side is under the finest level's stride."""


@dataclass
class Coverage:
    input_size: int
    recall: float
    classes: list[ClassCoverage] = field(default_factory=list)

    def weak(self, threshold: float) -> list[ClassCoverage]:
        return [c for c in self.classes if c.boxes >= MIN_CLASS_BOXES and c.recall < threshold]


def measure(boxes: Tensor, labels: Tensor, cfg: ModelConfig, names: list[str]) -> Coverage:
    """BPR of ``cfg``'s anchors on ``boxes`` (B, 4) input pixels, overall and per class."""
    best = best_anchor_iou(boxes, anchor_generator(cfg), cfg.input_size)  # (B,)
    hit = (best >= cfg.loss.fg_iou).float()
    wh = boxes[:, 2:] - boxes[:, :2]  # (B, 2)
    side = wh.prod(dim=1).sqrt()
    under = (wh.max(dim=1).values < 2**cfg.fpn.min_level).float()
    classes = []
    for k, name in enumerate(names):
        m = labels == k
        if m.any():
            recall, median, small = float(hit[m].mean()), float(side[m].median()), float(under[m].mean())
            classes.append(ClassCoverage(name, int(m.sum()), recall, median, small))
    return Coverage(cfg.input_size, float(hit.mean()) if len(hit) else 1.0, classes)


def pick_input_size(dataset: DetectionDataset, cfg: ModelConfig) -> tuple[int, str]:
    """The smallest of AUTO_SIZES at which at most MAX_TINY_SHARE of the training boxes are
    tiny (side under TINY_STRIDES strides of the finest level), else the largest; and why."""
    tiny_px = TINY_STRIDES * 2**cfg.fpn.min_level
    shares: dict[int, float] = {}
    for size in AUTO_SIZES:  # stops at the first size that passes; else ends at the largest
        boxes, _, _ = letterboxed(dataset, size)
        side = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1).sqrt()
        shares[size] = float((side < tiny_px).float().mean()) if len(side) else 0.0
        if shares[size] <= MAX_TINY_SHARE:
            break
    seen = ", ".join(f"{100 * v:.1f}% at {s}" for s, v in shares.items())
    why = (
        f"model.input_size=auto -> {size}: boxes under {tiny_px} px ({TINY_STRIDES}x the finest stride): {seen} "
        f"(the smallest size with at most {100 * MAX_TINY_SHARE:g}%, never above {AUTO_SIZES[-1]})"
    )
    return size, why


def resolve_input_size(cfg: ModelConfig, dataset: DetectionDataset) -> tuple[ModelConfig, list[str]]:
    """``cfg`` with an integer input size (``auto`` resolved on ``dataset``), and what to say."""
    if not isinstance(cfg.input_size, str):
        return cfg, []
    if cfg.input_size.strip().lower() != AUTO:
        raise ConfigError(f"model.input_size must be an integer or 'auto', got {cfg.input_size!r}")
    size, why = pick_input_size(dataset, cfg)
    cfg = copy.deepcopy(cfg)
    cfg.input_size = size
    return cfg, [why]


@dataclass
class FitResult:
    cfg: ModelConfig
    """The model config to train: input size resolved, anchors fitted when that helped."""
    before: Coverage
    after: Coverage
    auto: list[str]
    """Why model.input_size=auto chose its size (empty when it was a number)."""
    fitting: list[str]
    """The coverage before, and after fitting when the anchors were fitted."""
    risks: list[str]
    """One warning per class at risk, with the coverage a larger input would give it."""
    at_risk: list[ClassCoverage]

    @property
    def lines(self) -> list[str]:
        """What to print before training starts."""
        return [*self.auto, *self.fitting, *self.risks]


def fit_to_data(cfg: ModelConfig, dataset: DetectionDataset, fit: bool = True, seed: int = 0, kept_from: str = "") -> FitResult:
    """Resolve ``input_size=auto``, measure the anchors' coverage of ``dataset``'s boxes,
    fit per-level anchor sizes when coverage is poor and ``fit`` is on, and name the
    classes still at risk, with the coverage a larger input would give them. ``cfg``
    itself is not changed. ``kept_from``: the detector checkpoint whose anchors ``cfg``
    holds (a fine-tuning run): they are measured, never refitted, and the lines say so."""
    cfg, auto = resolve_input_size(cfg, dataset)
    configured = cfg
    notes = []
    if kept_from:
        fit = False
        notes.append(f"anchors kept from {kept_from}: its head learned them, so they are measured here, not refitted")
    if fit and cfg.loss.assigner != "paper":
        fit = False  # ATSS picks anchors by centre distance and a per-box threshold, not IoU >= fg_iou
        notes.append(f"model.loss.assigner={cfg.loss.assigner} does not assign by IoU >= fg_iou: anchors measured, not fitted")
    cfg, before, after, fitting = _fit_at(cfg, dataset, fit, seed)
    at_risk = after.weak(AT_RISK_RECALL)
    risks = []
    if at_risk:
        larger = {
            size: _fit_at(dataclasses.replace(configured, input_size=size), dataset, fit, seed)[2]
            for size in AUTO_SIZES
            if size > cfg.input_size
        }
        risks = [_risk_line(c, cfg, larger) for c in at_risk]
    return FitResult(cfg, before, after, auto, fitting + notes, risks, at_risk)


def _fit_at(cfg: ModelConfig, dataset: DetectionDataset, fit: bool, seed: int) -> tuple[ModelConfig, Coverage, Coverage, list[str]]:
    """At ``cfg.input_size``: (config to train, coverage before, coverage after, lines)."""
    boxes, labels, _ = letterboxed(dataset, cfg.input_size)
    names = list(dataset.class_names)
    before = measure(boxes, labels, cfg, names)
    lines = [_summary("anchors", before, cfg)]
    if not (fit and len(boxes) and (before.recall < REFIT_RECALL or before.weak(CLASS_REFIT_RECALL))):
        return cfg, before, before, lines
    fitted = copy.deepcopy(cfg)
    fitted.anchors = fit_anchors(boxes, cfg, fit_sizes=True, seed=seed)
    after = measure(boxes, labels, fitted, names)
    if not _better(after, before):
        return cfg, before, before, [*lines, "fitted anchors would cover fewer boxes of some class: keeping the configured ones"]
    note = f" (model.anchors.fit; before: {100 * before.recall:.1f}%)"
    return fitted, before, after, [*lines, _summary("fitted anchors", after, fitted) + note]


def _better(a: Coverage, b: Coverage) -> bool:
    """Fitted anchors ``a`` replace ``b`` when they cover more boxes overall and no class
    with MIN_CLASS_BOXES boxes or more loses more than MAX_CLASS_LOSS of its coverage: the
    overall gain must not come out of one class, say the large objects."""
    before = {x.name: x.recall for x in b.classes if x.boxes >= MIN_CLASS_BOXES}
    worst_loss = max((before[x.name] - x.recall for x in a.classes if x.name in before), default=0.0)
    return round(a.recall, 4) > round(b.recall, 4) and worst_loss <= MAX_CLASS_LOSS


def _summary(what: str, c: Coverage, cfg: ModelConfig) -> str:
    sizes = " ".join(f"{s:g}" for s in cfg.anchors.sizes)
    scales = " ".join(f"{s:.3g}" for s in cfg.anchors.scales)
    ratios = " ".join(f"{r:.3g}" for r in cfg.anchors.ratios)
    return (
        f"{what} at {c.input_size} px: best possible recall {100 * c.recall:.1f}% of the training boxes "
        f"(sizes {sizes}; scales {scales}; ratios {ratios})"
    )


def _risk_line(c: ClassCoverage, cfg: ModelConfig, larger: dict[int, Coverage]) -> str:
    """Why a class is at risk, and the coverage a run at each larger input would give it."""
    at = {size: next((x.recall for x in cov.classes if x.name == c.name), 0.0) for size, cov in larger.items()}
    hint = ", ".join(f"{100 * r:.0f}% at model.input_size={size}" for size, r in at.items())
    stride = 2**cfg.fpn.min_level
    if c.median_side < SMALL_STRIDES * stride:
        advice = "Boxes this small need a larger input (model.input_size, or auto)"
    else:  # not small: their shapes fall between the anchors'
        advice = (
            "Its boxes are not small: their shapes fall between the anchors' (thin or elongated objects); "
            "more anchor ratios can cover them, e.g. model.anchors.ratios=[0.25,0.5,1,2,4]"
        )
    return (
        f"warning: class {c.name!r} may go undetected: the anchors cover only {100 * c.recall:.0f}% of its "
        f"{c.boxes} boxes (median side {c.median_side:.0f} px, {100 * c.below_stride:.0f}% under the finest stride "
        f"{stride} px)" + (f"; a run would cover {hint}" if hint else "") + f". {advice}"
    )


def format_table(c: Coverage) -> str:
    """Per-class coverage as a text table (written to the run folder as anchors.txt)."""
    rows = [f"{'class':20s}{'boxes':>7s}{'recall':>9s}{'median side':>13s}{'< stride':>10s}"]
    for x in c.classes:
        rows.append(f"{x.name[:20]:20s}{x.boxes:7d}{100 * x.recall:8.1f}%{x.median_side:12.1f}px{100 * x.below_stride:9.1f}%")
    return "\n".join(rows)
