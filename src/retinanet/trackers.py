"""The experiment trackers a training run can write to (train.loggers): TensorBoard event
files in the run folder, and an MLflow run. loggers.py drives them; each gets scalars under
the trainer's step counter, so a resumed run continues the same curves:

- TensorBoard: a resumed run opens its writer with ``purge_step`` one past the checkpoint's
  step, so what an interrupted run wrote after its checkpoint is dropped when TensorBoard
  reads the folder, and the repeated steps appear once.
- MLflow: the run's id is kept in ``mlflow.json`` in the run folder and a resumed run logs
  into the same MLflow run, skipping the steps that run already holds. The tracking URI is
  ``MLFLOW_TRACKING_URI`` when set, else a file store in the run folder (``mlruns/``).
  Metrics are sent in batches when loggers.py flushes (every epoch's end).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from torch import Tensor

EVENTS_GLOB = "events.out.tfevents.*"
MLFLOW_FILE = "mlflow.json"  # {"tracking_uri", "run_id"} of the run folder's MLflow run
MLFLOW_EXPERIMENT = "retinanet"  # unless MLFLOW_EXPERIMENT_NAME says otherwise
MLFLOW_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
MLFLOW_PARAMS = 100  # params per log_batch call (MLflow's limit)
MLFLOW_VALUE_CHARS = 500  # a param's value is cut to this many characters
# Charts of TensorBoard's "custom scalars" tab: training and validation losses in one chart.
LAYOUT = {
    "losses per epoch": {
        part: ["Multiline", [f"epoch/train_{part}", f"val/{part}"]] for part in ("loss", "cls", "box")
    }
}


class TensorBoard:
    """Event files in the run folder (TensorBoard pointed at runs/train shows every run)."""

    name = "tensorboard"
    images = True

    def __init__(self, run_dir: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter

        earlier = any(run_dir.glob(EVENTS_GLOB))
        self.writer = SummaryWriter(str(run_dir), purge_step=step + 1 if earlier else None)
        if not earlier:
            self.writer.add_custom_scalars(LAYOUT)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def flush(self) -> None:
        self.writer.flush()

    def artifacts(self, files: list[tuple[Path, str | None]]) -> None:
        pass

    def close(self, status: str) -> None:
        self.writer.close()


def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config dict -> {"model.backbone.name": "...", ...} of strings."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:MLFLOW_VALUE_CHARS]
    return out


class MLflow:
    """One MLflow run per training run, continued by ``--resume``."""

    name = "mlflow"
    images = False

    def __init__(self, run_dir: Path, step: int, params: dict[str, str]):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or self._local_store(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        self.saved = run_dir / MLFLOW_FILE
        self.run_id, self.done = self._continue(uri, step), -1
        if self.run_id is not None:
            history = self.client.get_metric_history(self.run_id, "train/loss")
            self.done = max((m.step for m in history), default=-1)
        else:
            self.run_id = self._start(uri, run_dir, params)
        self.pending: list[Any] = []
        self.sent: dict[Path, int] = {}

    @staticmethod
    def _local_store(run_dir: Path) -> str:
        # MLflow 3 keeps its file store behind this switch; the user's own setting wins.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return (run_dir / "mlruns").resolve().as_uri()

    def _continue(self, uri: str, step: int) -> str | None:
        """The run folder's MLflow run, when it has one in this store (a resumed run)."""
        if not self.saved.is_file():
            return None
        from mlflow.exceptions import MlflowException

        saved = json.loads(self.saved.read_text())
        if saved.get("tracking_uri") != uri:
            return None
        try:
            self.client.update_run(saved["run_id"], status="RUNNING")
        except MlflowException:  # the store no longer has it: a new run
            return None
        return saved["run_id"]

    def _start(self, uri: str, run_dir: Path, params: dict[str, str]) -> str:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or MLFLOW_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"run_dir": str(run_dir.resolve())})
        items = [Param(mlflow_key(k), v) for k, v in params.items()]
        for i in range(0, len(items), MLFLOW_PARAMS):
            self.client.log_batch(run.info.run_id, params=items[i : i + MLFLOW_PARAMS])
        self.saved.write_text(json.dumps({"tracking_uri": uri, "run_id": run.info.run_id}) + "\n")
        return run.info.run_id

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.done:  # already in the run: an interrupted run logged it before its checkpoint
            return
        now = int(time.time() * 1000)
        self.pending += [Metric(mlflow_key(k), float(v), now, step) for k, v in values.items()]

    def image(self, tag: str, image: Tensor, step: int) -> None:
        pass

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MLFLOW_BATCH], self.pending[MLFLOW_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def artifacts(self, files: list[tuple[Path, str | None]]) -> None:
        """Upload each (file, folder in the run's artifacts) that is new or changed since the last upload."""
        for path, folder in files:
            stamp = path.stat().st_mtime_ns
            if self.sent.get(path) != stamp:
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
                self.sent[path] = stamp

    def close(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
