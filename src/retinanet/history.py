"""A run's history on disk: ``results.csv`` (one row per epoch) and its curves as a PNG.

Both training loops (engine.py, pretrain/) keep their history as a list of row dicts,
saved in their checkpoints, and rewrite the CSV from it after every epoch: a resumed
run's file then holds exactly the epochs its checkpoint knows about.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .atomic import write_atomic
from .figures import figure, literal_text, save_figure

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

LOSS_PREFIX = "train_"
VAL_METRICS = ("val_AP", "val_AP50", "val_AP75")
NOT_LOSSES = ("train_num_fg", "train_images_per_second")  # counts and rates logged beside the losses


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


def plot_training_curves(csv_path: str | Path, path: str | Path) -> Path:
    """Losses, validation AP / AP50 / AP75 and learning rate against epoch, from the
    training log ``csv_path`` (columns ``epoch``, ``train_*``, ``val_*``, ``lr``)."""
    cols = read_results_csv(csv_path)
    if "epoch" not in cols:
        raise ValueError(f"{csv_path}: no 'epoch' column")
    losses = {c: c.removeprefix(LOSS_PREFIX) for c in cols if c.startswith(LOSS_PREFIX) and c not in NOT_LOSSES}
    panels: list[Panel] = [
        ("loss", losses),
        ("validation", {c: c.removeprefix("val_") for c in VAL_METRICS}),
        ("learning rate", {"lr": "lr"}),
    ]
    return plot_curves(cols, path, panels)

