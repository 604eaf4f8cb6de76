"""What a training run logs beside its checkpoints, written by the main process only:

- ``steps.csv``: the step, fractional epoch, learning rate and losses of every optimiser
  step (always; training_curves.png draws the learning rate from it, warmup included);
- ``train_batch0.jpg`` .. ``train_batch2.jpg``: the first batches of the first epoch as the
  network sees them, augmented (preview.py; always, not re-written by a resumed run);
- the trackers ``train.loggers`` names (trackers.py): TensorBoard event files in the run
  folder (the default) and an MLflow run. Per step: each loss and the learning rate; per
  epoch: the epoch's mean losses, the validation losses, the 12 COCO numbers, each class's
  AP and (TensorBoard) a few validation images with their predictions.

Everything is logged under the trainer's step counter and flushed before the epoch's
checkpoint is written, so a resumed run continues the same curves: steps.csv drops the
rows past the checkpoint's step, TensorBoard purges them, MLflow skips the steps it holds.

Logging never stops a run: a logger that fails (a full disk, an unreachable server) says
so in one line and is left out from then on; training goes on.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .atomic import write_atomic
from .history import LOSS_KEYS, STEP_COLUMNS, STEPS_FILE
from .preview import PREVIEW_BATCHES, preview_path, save_batch_preview
from .stop import TrainingInterrupted

# train.loggers names -> (the module it needs, how to install it)
LOGGERS = {"tensorboard": ("tensorboard", "pip install tensorboard"), "mlflow": ("mlflow", "pip install mlflow-skinny")}
DRAWN = 3  # validation images drawn into TensorBoard every validated epoch
DRAWN_SIDE = 320  # longer side of each of their two panels
DRAWN_CONF = 0.25  # their score threshold when the validation found no F1-best one
RUN_FILES = ("config.yaml", "results.csv", STEPS_FILE, "training_curves.png", "anchors.txt")  # MLflow artifacts
VAL_FILES = ("metrics.json", "per_class.csv")  # and val/*.png


def check_loggers(names: Sequence[str]) -> None:
    """Fail before training when ``train.loggers`` names an unknown logger or one that is not installed."""
    for name in names:
        if name not in LOGGERS:
            raise ValueError(
                f"train.loggers: unknown logger {name!r}; choose from {', '.join(LOGGERS)} "
                "(results.csv and steps.csv are always written)"
            )
        module, install = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"train.loggers names {name}, which is not installed: {install}")


def warn(what: str, err: BaseException) -> None:
    first = (str(err).strip().splitlines() or [""])[0]
    tqdm.write(f"warning: {what} stopped: {type(err).__name__}: {first}; training goes on", file=sys.stderr)


def _csv_text(rows: list[dict[str, Any]], header: bool) -> str:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(STEP_COLUMNS), extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)
    return text.getvalue()


def _step_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class StepLog:
    """steps.csv: rows kept in memory and appended at each flush. Opened by a resumed run,
    it keeps only the rows up to the checkpoint's ``step`` (an interrupted run may have
    written later ones), so no step is there twice."""

    def __init__(self, path: Path, step: int):
        self.path, self.rows = path, []
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            kept = [r for r in rows if _step_of(r) <= step]
            if len(kept) < len(rows):
                write_atomic(path, _csv_text(kept, header=True).encode())

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        if rows:
            header = not self.path.is_file() or self.path.stat().st_size == 0
            with open(self.path, "a", newline="") as f:
                f.write(_csv_text(rows, header))


def _open_tracker(name: str, trainer: Any) -> Any:
    from .trackers import MLflow, TensorBoard, flat_params

    if name == "tensorboard":
        return TensorBoard(trainer.run_dir, trainer.step)
    from .config import to_dict

    return MLflow(trainer.run_dir, trainer.step, flat_params(to_dict(trainer.cfg)))


class RunLoggers:
    """The logs of one ``Trainer.fit()`` (module doc); inert in the other processes. A
    context manager: leaving it flushes everything and ends the trackers' runs (finished,
    killed by a signal, or failed); ``close()`` then uploads the files written after
    training (curves, the final evaluation) to MLflow."""

    def __init__(self, run_dir: Path | None = None, class_names: Sequence[str] = (), lr: float = 0.0):
        self.run_dir = run_dir
        self.class_names = list(class_names)
        self.lr = lr  # the learning rate the next step uses
        self.steps: StepLog | None = None
        self.trackers: list[Any] = []
        self.ended: list[Any] = []  # trackers whose run has ended, for close()'s uploads
        self.previews = run_dir is not None

    @classmethod
    def open(cls, trainer: Any) -> RunLoggers:
        if not trainer.dist.is_main:
            return cls()
        out = cls(trainer.run_dir, trainer.train_data.class_names, trainer.optimizer.param_groups[0]["lr"])
        out.steps = out._safe(STEPS_FILE, lambda: StepLog(trainer.run_dir / STEPS_FILE, trainer.step))
        for name in trainer.cfg.train.loggers:
            tracker = out._safe(name, lambda: _open_tracker(name, trainer))
            if tracker is not None:
                out.trackers.append(tracker)
        return out

    # -- failing safely

    def _safe(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None with one warning line when it raises."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - logging never stops a run
            warn(what, e)
            return None

    def _each(self, method: str, *args: Any) -> None:
        """Call ``method`` on every tracker; one that fails is warned about and dropped."""
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001
                warn(f"{tracker.name} logging", e)
                self.trackers.remove(tracker)
                self._safe(f"{tracker.name} logging", lambda: tracker.close("FAILED"))

    # -- what the trainer reports

    def step(self, trainer: Any, done: int, batch: Any, losses: dict[str, torch.Tensor] | None) -> None:
        """After batch ``done`` (1-based) of the epoch; ``losses`` None: the step was skipped."""
        if self.run_dir is None:
            return
        if self.previews and trainer.epoch == 0 and done <= PREVIEW_BATCHES:
            path = preview_path(self.run_dir, done - 1)
            if not path.exists() and self._safe("batch previews", lambda: save_batch_preview(batch, self.class_names, path)) is None:
                self.previews = False
        if losses is None:
            return
        lr, self.lr = self.lr, trainer.optimizer.param_groups[0]["lr"]
        values = {k: float(losses[k].detach()) for k in LOSS_KEYS}
        if self.steps is not None:
            epoch = trainer.epoch + done / trainer.steps_per_epoch
            self.steps.add({"step": trainer.step, "epoch": f"{epoch:.6g}", "lr": f"{lr:.6g}", **{k: f"{v:.6g}" for k, v in values.items()}})
        self._each("scalars", {**{f"train/{k}": v for k, v in values.items()}, "train/lr": lr}, trainer.step)

    def epoch(self, trainer: Any, stats: dict[str, float], metrics: dict[str, float]) -> None:
        """At an epoch's end, before its checkpoint: the epoch's numbers, then a flush."""
        if self.run_dir is None:
            return
        from .evaluation.coco import NO_GROUND_TRUTH

        values = {"epoch/epoch": float(trainer.epoch), **{f"epoch/{k}": v for k, v in stats.items()}}
        values.update({f"metrics/{k}": v for k, v in metrics.items()})
        val = getattr(trainer, "validation", None)
        if val is not None:
            values.update({f"val/{k}": v for k, v in val.losses.items()})
            values.update({f"AP_per_class/{r['class']}": r["AP"] for r in val.per_class if r["AP"] != NO_GROUND_TRUTH})
        self._each("scalars", values, trainer.step)
        if val is not None and any(t.images for t in self.trackers):
            self._safe("validation images", lambda: self._images(trainer, val))
        self.flush()

    def _images(self, trainer: Any, val: Any) -> None:
        """A few validation images, ground truth beside the predictions above the threshold."""
        from .data.images import read_image
        from .evaluation.plots import draw_side_by_side

        records, names = trainer.val_data.records, trainer.val_data.class_names
        conf = val.threshold.threshold if val.threshold is not None and val.threshold.threshold is not None else DRAWN_CONF
        for i in sorted(set(np.linspace(0, len(records) - 1, min(DRAWN, len(records))).round().astype(int).tolist())):
            r, d = records[i], val.detections[i]
            gt = [torch.from_numpy(np.asarray(x)) for x in (r.boxes, r.labels, r.ignore)]
            image = draw_side_by_side(read_image(r.image_path), *gt, d.boxes, d.scores, d.labels, names, DRAWN_SIDE, conf)
            self._each("image", f"val_predictions/{r.image_path.stem}", image, trainer.step)

    # -- flushing and ending

    def flush(self) -> None:
        if self.steps is not None:
            try:
                self.steps.flush()
            except Exception as e:  # noqa: BLE001
                warn(STEPS_FILE, e)
                self.steps = None
        self._each("flush")

    def artifacts(self) -> list[tuple[Path, str | None]]:
        """The run's files worth keeping with an MLflow run: (path, folder in the run's artifacts)."""
        run = self.run_dir
        files = [run / n for n in RUN_FILES] + sorted(run.glob("train_batch*.jpg"))
        val = sorted((run / "val").glob("*.png")) + [run / "val" / n for n in VAL_FILES]
        return [(p, None) for p in files if p.is_file()] + [(p, "val") for p in val if p.is_file()]

    def __enter__(self) -> RunLoggers:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> bool:
        if self.run_dir is None:
            return False
        interrupted = kind is not None and issubclass(kind, (TrainingInterrupted, KeyboardInterrupt))
        status = "FINISHED" if kind is None else "KILLED" if interrupted else "FAILED"
        self.flush()
        self._each("artifacts", self._safe("artifacts", self.artifacts) or [])
        self._each("close", status)
        self.ended, self.trackers = self.trackers, []
        return False

    def close(self) -> None:
        """Upload what was written after training (curves, val/) to the ended MLflow run."""
        if self.run_dir is None or not self.ended:
            return
        self.trackers, self.ended = self.ended, []
        self._each("artifacts", self._safe("artifacts", self.artifacts) or [])
        self.trackers = []
