"""How well a model's anchors cover a dataset's boxes, and anchors fitted to them.

Best possible recall (BPR): the fraction of the (non-ignored) boxes, letterboxed to the
model's input size, that at least one anchor overlaps with IoU >= the matcher's
foreground threshold. A box below it is only ever trained through its single
low-quality match, however long training runs.

Fitting follows YOLOv5's autoanchor: k-means with distance 1 - IoU on the box shapes,
then a mutation search that keeps a change only when it does not lower the recall. Our
anchors are a grid (per-level sizes x scales x ratios), so the k-means centroids are
constrained to that grid: each box goes to the anchor shape it overlaps most, and each
scale / ratio becomes the mean log side / log aspect of its boxes. The per-level sizes
stay as configured; the result is ``model.anchors.scales`` and ``model.anchors.ratios``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torchvision.ops import box_iou
from tqdm import tqdm

from .anchors import AnchorGenerator, anchors_for
from .boxes import batched_box_iou
from .config import AnchorConfig, ModelConfig
from .data.dataset import DetectionDataset
from .figures import figure, literal_text, save_figure

# COCO's size buckets by box area (here in input pixels after letterboxing).
SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
BUCKETS = ("small", "medium", "large", "all")
# Boxes used by the fitting loop (subsampled beyond this; the report uses all of them).
MAX_FIT_BOXES = 20000
# Decimals of the printed (and evaluated) fitted sizes, scales and ratios.
DECIMALS = 3
# With fit_sizes, the finest level's size starts at this quantile of the box sides.
SMALL_QUANTILE = 0.05


@dataclass
class AnchorRecall:
    """Coverage of one anchor set on one set of boxes."""

    scales: tuple[float, ...]
    ratios: tuple[float, ...]
    fg_iou: float
    counts: dict[str, int]
    """Boxes per bucket (small / medium / large / all)."""
    recall: dict[str, float | None]
    """Fraction of each bucket's boxes with an anchor at IoU >= fg_iou (None: empty bucket)."""
    mean_best_iou: float
    """Mean over boxes of the best anchor IoU."""
    best_iou: Tensor = field(repr=False)
    """(B,) best anchor IoU of every box."""


@dataclass
class AnchorFitReport:
    input_size: int
    sizes: tuple[float, ...]
    boxes: Tensor = field(repr=False)
    """(B, 4) the boxes evaluated, xyxy in input pixels."""
    skipped: int
    """Boxes left out: ignore regions and boxes of zero width or height."""
    default: AnchorRecall
    """The config's anchors (the preset's unless overridden); shown as 'config'."""
    fitted: AnchorRecall | None = None


def letterboxed(dataset: DetectionDataset, input_size: int) -> tuple[Tensor, Tensor, int]:
    """Non-ignored boxes of every record scaled by its letterbox factor (input / longer
    side), as (B, 4) xyxy input pixels, their labels (B,), and the number of boxes left
    out (ignored or empty)."""
    out, labels, skipped = [], [], 0
    for r in dataset.records:
        keep = ~r.ignore
        b = torch.from_numpy(r.boxes[keep]) * (input_size / max(r.width, r.height))
        valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        skipped += len(r.boxes) - int(valid.sum())
        out.append(b[valid])
        labels.append(torch.as_tensor(r.labels[keep], dtype=torch.long)[valid])
    if not out:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), skipped
    return torch.cat(out).float(), torch.cat(labels), skipped


def letterboxed_boxes(dataset: DetectionDataset, input_size: int) -> tuple[Tensor, int]:
    """The boxes of ``letterboxed`` and the number left out."""
    boxes, _, skipped = letterboxed(dataset, input_size)
    return boxes, skipped


def anchor_generator(cfg: ModelConfig, anchors: AnchorConfig | None = None) -> AnchorGenerator:
    """The model's anchor generator, with ``anchors`` in place of ``cfg.anchors`` when given."""
    return anchors_for(cfg, anchors)


def best_anchor_iou(boxes: Tensor, generator: AnchorGenerator, input_size: int) -> Tensor:
    """(B,) the best IoU of each box with any anchor of the input_size x input_size grid.

    Exact, without scoring every anchor: for a fixed anchor shape the overlap along x
    falls with |dx| and along y with |dy|, so each level's best anchor of each shape sits
    at the grid centre nearest the box centre, i.e. the centre of the cell the box centre
    falls in. Only levels x A candidates per box are scored.
    """
    if len(boxes) == 0:
        return torch.zeros(0)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (B, 2) as (x, y)
    best = torch.zeros(len(boxes))
    for level, ((fh, fw), stride) in enumerate(zip(generator.feature_sizes((input_size, input_size)), generator.strides)):
        limit = torch.tensor([fw - 1, fh - 1])
        cell = torch.minimum(torch.div(centre, stride, rounding_mode="floor").clamp(min=0), limit)  # (B, 2)
        grid_centre = (cell + 0.5) * stride
        candidates = grid_centre.repeat(1, 2)[:, None, :] + generator.cell_anchors(level)[None]  # (B, A, 4)
        iou = batched_box_iou(boxes[:, None, :], candidates)[:, 0, :]  # (B, 1, A) -> (B, A)
        best = torch.maximum(best, iou.max(dim=1).values)
    return best


def anchor_recall(boxes: Tensor, cfg: ModelConfig, anchors: AnchorConfig | None = None) -> AnchorRecall:
    """Best possible recall of ``anchors`` (default: the config's) per COCO size bucket."""
    a = anchors if anchors is not None else cfg.anchors
    best = best_anchor_iou(boxes, anchor_generator(cfg, a), cfg.input_size)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    masks = {
        "small": area < SMALL_MAX_AREA,
        "medium": (area >= SMALL_MAX_AREA) & (area < MEDIUM_MAX_AREA),
        "large": area >= MEDIUM_MAX_AREA,
        "all": torch.ones(len(boxes), dtype=torch.bool),
    }
    hit = best >= cfg.loss.fg_iou
    counts = {k: int(m.sum()) for k, m in masks.items()}
    recall = {k: (float(hit[m].float().mean()) if counts[k] else None) for k, m in masks.items()}
    return AnchorRecall(
        tuple(a.scales), tuple(a.ratios), cfg.loss.fg_iou, counts, recall,
        float(best.mean()) if len(best) else 0.0, best,
    )


# ----------------------------------------------------------------------------- fitting


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # The search runs thousands of ops on tensors of ~10^4..10^5 elements: too small to
    # gain from intra-op threads, and on a busy machine the thread hand-offs cost 30x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _centred(w: Tensor, h: Tensor) -> Tensor:
    """Shapes as boxes centred on the origin (N, 4), so box_iou gives the shape IoU."""
    return torch.stack([-w / 2, -h / 2, w / 2, h / 2], dim=1)


def _kmeans(
    w: Tensor, h: Tensor, sizes: Tensor, log_s: Tensor, log_r: Tensor, iterations: int = 50
) -> tuple[Tensor, Tensor]:
    """k-means with distance 1 - IoU of shapes, centroids constrained to sizes x scales x ratios.

    Assignment: each box to the anchor shape of highest IoU (any level). Update: each
    scale = mean of (log side - log level size) of its boxes, each ratio = mean log(h / w)
    of its boxes (the log-space centroid, which factorises over the grid exactly).
    """
    n_s, n_r = len(log_s), len(log_r)
    log_side = 0.5 * (w.log() + h.log())
    log_aspect = (h / w).log()
    boxes = _centred(w, h)
    assign = None
    for _ in range(iterations):
        side = sizes[:, None, None] * log_s.exp()[None, :, None]  # (L, S, 1)
        sqrt_r = (0.5 * log_r).exp()[None, None, :]  # (1, 1, R)
        aw, ah = side / sqrt_r, side * sqrt_r  # (L, S, R) widths and heights
        shapes = _centred(aw.reshape(-1), ah.reshape(-1))  # (L*S*R, 4), level-major like the head
        new = box_iou(boxes, shapes).argmax(dim=1)  # (B,)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        level, rest = assign // (n_s * n_r), assign % (n_s * n_r)
        si, ri = rest // n_r, rest % n_r
        rel = log_side - sizes.log()[level]
        log_s = log_s.clone()
        log_r = log_r.clone()
        for i in range(n_s):
            if (si == i).any():
                log_s[i] = rel[si == i].mean()
        for j in range(n_r):
            if (ri == j).any():
                log_r[j] = log_aspect[ri == j].mean()
    return log_s, log_r


def fit_anchors(
    boxes: Tensor,
    cfg: ModelConfig,
    n_scales: int | None = None,
    n_ratios: int | None = None,
    generations: int = 300,
    seed: int = 0,
    progress: bool = False,
    fit_sizes: bool = False,
) -> AnchorConfig:
    """Scales and ratios fitted to ``boxes`` ((B, 4) xyxy input pixels); with ``fit_sizes``
    also each level's base size, one per level (the structure stays: every position has
    the same scales x ratios around its level's size). With the config's numbers of
    scales and ratios the result's recall is never below the config's own anchors on
    these boxes (they are one of the starting points, and the search only accepts changes
    that keep or raise the recall; beyond MAX_FIT_BOXES boxes this holds on the random
    subset the search sees).
    """
    with _one_thread():
        return _fit(boxes, cfg, n_scales, n_ratios, generations, seed, progress, fit_sizes)


@dataclass
class _Anchors:
    """A point of the search, in log space: level sizes (L,), scales (S,), ratios (R,)."""

    sizes: Tensor
    scales: Tensor
    ratios: Tensor

    def config(self) -> AnchorConfig:
        values = lambda t: tuple(round(float(v), DECIMALS) for v in t.exp())  # noqa: E731
        return AnchorConfig(values(self.sizes), tuple(sorted(values(self.scales))), tuple(sorted(values(self.ratios))))


def _fitness(boxes: Tensor, cfg: ModelConfig, a: _Anchors) -> tuple[float, float]:
    """(recall, mean IoU of the covered boxes): compared as a pair, recall first."""
    anchors = AnchorConfig(tuple(a.sizes.exp().tolist()), tuple(a.scales.exp().tolist()), tuple(a.ratios.exp().tolist()))
    best = best_anchor_iou(boxes, anchor_generator(cfg, anchors), cfg.input_size)
    hit = best >= cfg.loss.fg_iou
    return float(hit.float().mean()), float((best * hit).mean())


def _starts(boxes: Tensor, cfg: ModelConfig, n_scales: int, n_ratios: int, fit_sizes: bool) -> list[_Anchors]:
    """Starting points: the paper's spacing (scales 2^(i/n) per octave) with ratios at the
    data's quantiles, the config's own anchors when the counts match, the k-means
    refinement of each, and with ``fit_sizes`` the same with the finest level's size
    brought down to the small boxes (each level then moves on its own in the search)."""
    a = cfg.anchors
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes = torch.tensor(a.sizes, dtype=torch.float32).log()
    even_s = torch.arange(n_scales, dtype=torch.float32) * (math.log(2) / n_scales)
    quant_r = torch.quantile((h / w).log(), (torch.arange(n_ratios, dtype=torch.float32) + 0.5) / n_ratios)
    starts = [_Anchors(sizes, even_s, quant_r)]
    if (n_scales, n_ratios) == (len(a.scales), len(a.ratios)):
        starts.append(_Anchors(sizes, torch.tensor(a.scales).float().log(), torch.tensor(a.ratios).float().log()))
    if fit_sizes:
        finest_stride = 2.0**cfg.fpn.min_level
        small_side = torch.quantile((w * h).sqrt(), SMALL_QUANTILE).clamp(min=finest_stride)
        shrunk = sizes.clone()
        shrunk[0] = torch.minimum(sizes[0], small_side.log())
        starts += [_Anchors(shrunk, s.scales, s.ratios) for s in list(starts)]
    refined = [_Anchors(s.sizes, *_kmeans(w, h, s.sizes.exp(), s.scales, s.ratios)) for s in starts]
    return starts + refined


def _evolve(boxes: Tensor, cfg: ModelConfig, best: _Anchors, generations: int, gen: torch.Generator, fit_sizes: bool, progress: bool) -> _Anchors:
    """YOLOv5's evolution: multiplicative mutations (here additive in log space) of a random
    subset of the values, kept when the fitness pair does not drop. Level sizes, when
    they move, stay increasing from level to level."""
    best_fit = _fitness(boxes, cfg, best)
    n_l, n_s = len(best.sizes), len(best.scales)
    for _ in tqdm(range(generations), desc="evolving anchors", disable=not progress, leave=False):
        sigma = 0.1 * float(torch.rand((), generator=gen))
        values = torch.cat([best.sizes, best.scales, best.ratios])
        mask = torch.rand(values.shape, generator=gen) < 0.9
        if not fit_sizes:
            mask[:n_l] = False
        trial = values + mask * torch.randn(values.shape, generator=gen) * sigma
        t = _Anchors(trial[:n_l], trial[n_l : n_l + n_s], trial[n_l + n_s :])
        if fit_sizes and not bool((t.sizes[1:] > t.sizes[:-1]).all()):
            continue
        f = _fitness(boxes, cfg, t)
        if f >= best_fit:
            best_fit, best = f, t
    return best


def _fit(
    boxes: Tensor, cfg: ModelConfig, n_scales: int | None, n_ratios: int | None, generations: int, seed: int,
    progress: bool, fit_sizes: bool,
) -> AnchorConfig:  # fmt: skip
    a = cfg.anchors
    n_scales = n_scales or len(a.scales)
    n_ratios = n_ratios or len(a.ratios)
    if n_scales < 1 or n_ratios < 1:
        raise ValueError(f"need at least one scale and one ratio, got {n_scales} scales and {n_ratios} ratios")
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = boxes[ok]
    if len(boxes) == 0:
        raise ValueError("no boxes to fit anchors to")
    gen = torch.Generator().manual_seed(seed)
    if len(boxes) > MAX_FIT_BOXES:
        boxes = boxes[torch.randperm(len(boxes), generator=gen)[:MAX_FIT_BOXES]]
    candidates = _starts(boxes, cfg, n_scales, n_ratios, fit_sizes)
    start = max(candidates, key=lambda c: _fitness(boxes, cfg, c))
    fitted = _evolve(boxes, cfg, start, generations, gen, fit_sizes, progress).config()
    if (n_scales, n_ratios) == (len(a.scales), len(a.ratios)):
        # Rounding for print can move a box across the threshold: never hand back worse than the config.
        own = _Anchors(*(torch.tensor(v).float().log() for v in (a.sizes, a.scales, a.ratios)))
        rounded = _Anchors(*(torch.tensor(v).float().log() for v in (fitted.sizes, fitted.scales, fitted.ratios)))
        if _fitness(boxes, cfg, rounded) < _fitness(boxes, cfg, own):
            return AnchorConfig(tuple(a.sizes), tuple(a.scales), tuple(a.ratios))
    return fitted if fit_sizes else AnchorConfig(tuple(a.sizes), fitted.scales, fitted.ratios)


def anchor_report(
    dataset: DetectionDataset,
    cfg: ModelConfig,
    fit: tuple[int, int] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> AnchorFitReport:
    """Recall of the config's anchors on ``dataset`` and, with ``fit=(n_scales, n_ratios)``,
    of anchors fitted to it."""
    boxes, skipped = letterboxed_boxes(dataset, cfg.input_size)
    if len(boxes) == 0:
        raise ValueError("the dataset has no (non-ignored) boxes to compare anchors with")
    report = AnchorFitReport(cfg.input_size, tuple(cfg.anchors.sizes), boxes, skipped, anchor_recall(boxes, cfg))
    if fit is not None:
        fitted = fit_anchors(boxes, cfg, fit[0], fit[1], seed=seed, progress=progress)
        report.fitted = anchor_recall(boxes, cfg, fitted)
    return report


# ----------------------------------------------------------------------------- output


def overrides(scales: tuple[float, ...], ratios: tuple[float, ...]) -> str:
    """The key=value overrides that give a config these anchors (no spaces: one shell word each)."""
    fmt = lambda vs: "[" + ",".join(f"{v:g}" for v in vs) + "]"  # noqa: E731
    return f"model.anchors.scales={fmt(scales)} model.anchors.ratios={fmt(ratios)}"


def format_report(report: AnchorFitReport) -> str:
    """A text table: boxes and best possible recall per size bucket, config vs fitted."""
    cols = [("config", report.default)] + ([("fitted", report.fitted)] if report.fitted else [])
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    labels = {
        "small": f"small (< {int(math.sqrt(SMALL_MAX_AREA))}^2 px)",
        "medium": "medium",
        "large": f"large (>= {int(math.sqrt(MEDIUM_MAX_AREA))}^2 px)",
        "all": "all",
    }
    lines = [
        f"best possible recall: boxes with an anchor at IoU >= {report.default.fg_iou:g}, "
        f"input {report.input_size} px, anchor sizes {[f'{s:g}' for s in report.sizes]}".replace("'", ""),
        f"{'':22s}{'boxes':>7s}" + "".join(f"{name:>10s}" for name, _ in cols),
    ]
    for b in BUCKETS:
        lines.append(f"{labels[b]:22s}{report.default.counts[b]:7d}" + "".join(f"{pct(r.recall[b]):>10s}" for _, r in cols))
    lines.append(f"{'mean best IoU':22s}{'':7s}" + "".join(f"{r.mean_best_iou:10.3f}" for _, r in cols))
    if report.skipped:
        lines.append(f"({report.skipped} ignore regions / empty boxes not counted)")
    for name, r in cols:
        lines.append(f"{name + ':':9s}{overrides(r.scales, r.ratios)}")
    return "\n".join(lines)


@literal_text
def plot_report(report: AnchorFitReport, path: str | Path) -> Path:
    """PNG of the box shapes (width vs height, input pixels, log axes) with the anchor
    shapes of every level drawn over them."""
    fig = figure(figsize=(6.4, 6.0))
    ax = fig.subplots()
    b = report.boxes
    w, h = (b[:, 2] - b[:, 0]).numpy(), (b[:, 3] - b[:, 1]).numpy()
    hit = (report.default.best_iou >= report.default.fg_iou).numpy()
    ax.scatter(w[hit], h[hit], s=6, c="tab:blue", alpha=0.5, label="box (covered by config anchors)")
    ax.scatter(w[~hit], h[~hit], s=6, c="tab:red", alpha=0.5, label="box (not covered)")
    sets = [("config", report.default, "k", "x")] + ([("fitted", report.fitted, "tab:green", "+")] if report.fitted else [])
    for name, r, colour, marker in sets:
        aw, ah = [], []
        for size in report.sizes:
            for s in r.scales:
                for ratio in r.ratios:
                    aw.append(size * s / math.sqrt(ratio))
                    ah.append(size * s * math.sqrt(ratio))
        ax.scatter(aw, ah, s=60, c=colour, marker=marker, linewidths=1.5, label=f"{name} anchors")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width (input px)")
    ax.set_ylabel("height (input px)")
    ax.set_title(f"box shapes vs anchors at {report.input_size} px")
    ax.axvline(report.input_size, c="grey", lw=0.5)
    ax.axhline(report.input_size, c="grey", lw=0.5)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = [
    "AnchorRecall",
    "AnchorFitReport",
    "letterboxed_boxes",
    "best_anchor_iou",
    "anchor_recall",
    "fit_anchors",
    "anchor_report",
    "format_report",
    "plot_report",
    "overrides",
]
