"""A training run's folder, written in an order that leaves it consistent at any kill.

The folder holds config.yaml, anchors.txt and data_<split>.txt (what the checks of the
data found), last.pt (the resume point), best.pt (the model of the epoch with the best
validation AP, what inference needs and no more: run_state.py) and results.csv (one row
per finished epoch), then the plots of the final evaluation. The end of an epoch writes,
each file atomically (atomic.py):

1. best.pt, when the validation AP improved (last.pt, written next, records the new best);
2. last.pt: once it is renamed into place, the epoch is done;
3. results.csv, rewritten from the history that last.pt holds.

A kill before step 2 loses only that epoch: resuming repeats it, exactly, and reaches the
same weights and the same best.pt. A kill between 2 and 3 leaves the CSV a row short, and
resuming rewrites it from the checkpoint, so rows are never missing or duplicated. A
SIGTERM or Ctrl-C mid-epoch writes last.pt with the position in the epoch (stop.py).
Temporary files a kill leaves behind are removed when the run starts or resumes.

Fault injection, for tests: ``RETINANET_CRASH_AT=<point>`` or ``<point>@<epoch>`` makes the
process kill itself (SIGKILL) at that point of the end of an epoch; ``CRASH_POINTS`` lists
them in the order they are reached. "inside_X" is after X's temporary file is complete
and before its rename.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from .atomic import remove_stale_temps
from .checkpoint import save_checkpoint
from .history import VAL_LOSSES, write_results_csv

CRASH_ENV = "RETINANET_CRASH_AT"
CRASH_POINTS = ("before_best", "inside_best", "after_best", "inside_last", "after_last", "inside_results", "after_results")


def next_run_dir(out: str, name: str) -> Path:
    """``out/name``, or without a name the first free ``out/exp``, ``out/exp2``, ...,
    created here (empty): a folder is claimed by the mkdir that creates it, so two
    commands started together never get the same one."""
    base = Path(out)
    if name:
        return base / name
    n = 1
    while True:
        path = base / ("exp" if n == 1 else f"exp{n}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:  # taken, by an earlier run or by one starting now
            n += 1


def crash_point(point: str, epoch: int) -> None:
    """Kill this process here when RETINANET_CRASH_AT names ``point`` (and this epoch, if given)."""
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and (not at or int(at) == epoch):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def results_columns(history: Sequence[dict[str, float]]) -> list[str]:
    """results.csv's fixed columns: the first row's training fields, then the validation
    losses and every val_ metric (epochs that skip validation leave those cells empty)."""
    from .evaluation import METRIC_NAMES

    return [k for k in history[0] if not k.startswith("val_")] + list(VAL_LOSSES) + [f"val_{k}" for k in METRIC_NAMES]


class RunFolder:
    """The files of one run and the order they are written in."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.results = self.path / "results.csv"

    def open(self) -> list[Path]:
        """Create the folder; remove temporary files a killed write left. Returns those."""
        self.path.mkdir(parents=True, exist_ok=True)
        return remove_stale_temps(self.path, (self.last.name, self.best.name, self.results.name))

    def write_results(self, history: Sequence[dict[str, float]], epoch: int | None = None) -> None:
        """results.csv from ``history``; ``epoch``: the end of that epoch (a crash point)."""
        if history:
            hook = None if epoch is None else (lambda: crash_point("inside_results", epoch))
            write_results_csv(history, self.results, results_columns(history), hook)

    def commit_epoch(self, state: dict[str, Any], best: dict[str, Any] | None = None) -> None:
        """Write the end of epoch ``state["epoch"]`` in the order of the module doc: ``best``
        (best.pt's smaller state, for inference) when this epoch is the best, then ``state``
        (last.pt)."""
        epoch = int(state["epoch"])
        crash_point("before_best", epoch)
        if best is not None:
            save_checkpoint(best, self.best, lambda: crash_point("inside_best", epoch))
            crash_point("after_best", epoch)
        save_checkpoint(state, self.last, lambda: crash_point("inside_last", epoch))
        crash_point("after_last", epoch)
        self.write_results(state["history"], epoch)
        crash_point("after_results", epoch)

    def report_data(self, coverage: Any, train_data: Any, val_data: Any) -> None:
        """Say what the data checks fixed or warned about and how well the anchors cover the
        boxes (coverage.FitResult); keep the full reports in anchors.txt and data_<split>.txt."""
        from .coverage import format_table

        for line in coverage.lines:
            tqdm.write(line)
        (self.path / "anchors.txt").write_text("\n".join([*coverage.lines, "", format_table(coverage.after)]) + "\n")
        for split, ds in (("train", train_data), ("val", val_data)):
            report = getattr(ds, "report", None) if ds is not None else None
            if report is None:
                continue
            (self.path / f"data_{split}.txt").write_text(report.to_text())
            notes = [i for i in report.issues if i.level != "error"]
            if report.dropped_images or report.dropped_boxes:
                tqdm.write(f"data {split}: dropped {report.dropped_images} images and {report.dropped_boxes} boxes")
            for issue in notes[:5]:
                tqdm.write(f"data {split}: {issue.level}: {issue.file}: {issue.reason}")
            if len(notes) > 5:
                tqdm.write(f"data {split}: ... {len(notes) - 5} more in {self.path / f'data_{split}.txt'}")

    def save_interrupted(self, state: dict[str, Any]) -> Path:
        """A mid-epoch resume point (``state["position"]`` says where in the epoch)."""
        return save_checkpoint(state, self.last)
