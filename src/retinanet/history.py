"""A run's history on disk: ``results.csv`` (one row per epoch), ``steps.csv`` (one row per
optimiser step: learning rate and losses; loggers.py writes it) and their curves as a PNG.

Both training loops (engine.py, pretrain/) keep their history as a list of row dicts,
saved in their checkpoints, and rewrite the CSV from it after every epoch: a resumed
run's file then holds exactly the epochs its checkpoint knows about.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .atomic import write_atomic
from .figures import figure, literal_text, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# One panel of a curve plot: its title and the columns it draws, column -> legend label.
Panel = tuple[str, dict[str, str]]


def write_results_csv(
    rows: Sequence[dict[str, float]], path: str | Path, columns: Sequence[str], on_written: Callable[[], None] | None = None
) -> Path:
    """Write ``rows`` under a fixed header of ``columns``, atomically: a value a row lacks
    (an epoch without validation) is an empty cell, a key not in ``columns`` is left out."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(columns), restval="", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return write_atomic(path, text.getvalue().encode(), on_written)


def rows_to_columns(rows: Sequence[dict[str, float]]) -> dict[str, np.ndarray]:
    """Rows -> column name -> float array (R,), NaN where a row lacks the column."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: np.array([float(row.get(name, float("nan"))) for row in rows]) for name in names}


@literal_text
def plot_curves(columns: dict[str, np.ndarray], path: str | Path, panels: Sequence[Panel], x: str = "epoch") -> Path:
    """One panel per entry of ``panels``, each column drawn against column ``x``; NaN
    points (epochs without validation) are skipped, and so are columns with no value.
    Drawn with figures.py: no display, no change to matplotlib's global backend."""
    from matplotlib.ticker import MaxNLocator

    shown = [(title, {k: v for k, v in series.items() if k in columns and np.isfinite(columns[k]).any()})
             for title, series in panels]  # fmt: skip
    shown = [(title, series) for title, series in shown if series]
    fig = figure(figsize=(5 * max(1, len(shown)), 4))
    axes = fig.subplots(1, max(1, len(shown)), squeeze=False)[0]
    for ax, (title, series) in zip(axes, shown):
        for name, label in series.items():
            ok = np.isfinite(columns[name])  # (R,)
            ax.plot(columns[x][ok], columns[name][ok], marker="o" if ok.sum() < 30 else None, ms=3, label=label)
        ax.set(xlabel=x, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the detector's curves

LOSS_KEYS = ("loss", "cls", "box")  # of model.loss: train_* per epoch, val_* on the validation split, per step in steps.csv
LOSS_PREFIX = "train_"
VAL_LOSSES = tuple(f"val_{k}" for k in LOSS_KEYS)  # results.csv's validation losses (epochs that validate)
VAL_METRICS = ("val_AP", "val_AP50", "val_AP75")
NOT_LOSSES = ("train_num_fg", "train_images_per_second")  # counts and rates logged beside the losses
STEPS_FILE = "steps.csv"  # beside results.csv: one row per optimiser step
STEP_COLUMNS = ("step", "epoch", "lr", *LOSS_KEYS)  # epoch: fractional, 1.0 at the end of the first


def read_results_csv(path: str | Path) -> dict[str, np.ndarray]:
    """A training log (one row per epoch, a header row) -> column name -> float array.

    Empty cells (an epoch without validation) and non-numeric cells become NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training log not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows to plot")
    return {name: np.array([_number(row.get(name)) for row in rows]) for name in rows[0]}


def _number(cell: str | None) -> float:
    try:
        return float(cell or "nan")
    except ValueError:
        return float("nan")


def _steps(path: Path) -> dict[str, np.ndarray] | None:
    """steps.csv's columns, or None without one (a run from before it, or no step yet)."""
    try:
        cols = read_results_csv(path)
    except (FileNotFoundError, ValueError):
        return None
    return cols if {"epoch", "lr"} <= set(cols) else None


def _line(ax, x: np.ndarray, y: np.ndarray, **style) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.any():
        ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, ms=3, **style)


@literal_text
def training_figure(cols: dict[str, np.ndarray], steps: dict[str, np.ndarray] | None = None) -> Figure:
    """Three panels against epoch: the losses (training solid, validation dashed, one colour
    per part, so overfitting shows as the dashed lines turning up), the validation AP /
    AP50 / AP75, and the learning rate (per step from ``steps`` when given, so the warmup
    shows, else per epoch)."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(figsize=(15, 4))
    loss_ax, val_ax, lr_ax = fig.subplots(1, 3)
    parts = [c.removeprefix(LOSS_PREFIX) for c in cols if c.startswith(LOSS_PREFIX) and c not in NOT_LOSSES]
    epoch = cols["epoch"]
    for i, part in enumerate(parts):
        _line(loss_ax, epoch, cols[LOSS_PREFIX + part], color=f"C{i}", label=f"train {part}")
        if f"val_{part}" in cols:
            _line(loss_ax, epoch, cols[f"val_{part}"], color=f"C{i}", ls="--", label=f"val {part}")
    for i, name in enumerate(VAL_METRICS):
        if name in cols:
            _line(val_ax, epoch, cols[name], color=f"C{i}", label=name.removeprefix("val_"))
    if steps is not None:
        lr_ax.plot(steps["epoch"], steps["lr"], lw=1.2, color="C0", label="lr per step")
    elif "lr" in cols:
        _line(lr_ax, epoch, cols["lr"], color="C0", label="lr")
    for ax, title in ((loss_ax, "loss"), (val_ax, "validation"), (lr_ax, "learning rate")):
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_training_curves(csv_path: str | Path, path: str | Path, steps_path: str | Path | None = None) -> Path:
    """Losses (training and validation), validation AP / AP50 / AP75 and learning rate
    against epoch, from the training log ``csv_path`` (columns ``epoch``, ``train_*``,
    ``val_*``, ``lr``) and the per-step log ``steps_path`` (default: steps.csv beside it)."""
    cols = read_results_csv(csv_path)
    if "epoch" not in cols:
        raise ValueError(f"{csv_path}: no 'epoch' column")
    steps = _steps(Path(steps_path) if steps_path is not None else Path(csv_path).with_name(STEPS_FILE))
    return save_figure(training_figure(cols, steps), path)
