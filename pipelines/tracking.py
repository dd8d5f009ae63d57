"""Experiment tracking through Ray Train's callback API: TensorBoard, and MLflow.

::

    Train workers ── ray.train.report(metrics) ──► controller: TrackingCallback.after_report
        ├─► TensorBoard event files   {run}/tensorboard/{stage}/events.out.tfevents.*
        └─► MLflow (train.tracking includes "mlflow"): one MLflow run per training run,
            metrics ``{stage}/{name}`` per epoch; tracking URI ``train.mlflow_uri``, by
            default a local file store ``{run}/mlruns`` (any MLflow URI works)

Logged per epoch: the losses (total and per step f_1..f_T), accuracy on the training
batches, lr, pseudo-label rate and gate agreement (stage 2), validation metrics, and at
the end of a run the evaluation (accuracy, GFLOPs, frames, per split). Event files are
written to a local folder and copied to the run's storage after each report, so a run on
``s3://`` gets them too.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from frameexit.storage import is_local, join_uri, local_path, upload_dir

log = logging.getLogger("frameexit.pipelines.tracking")

TRACKERS = ("tensorboard", "mlflow")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class Tracker:
    """Writes scalars of one training run to TensorBoard and/or MLflow (driver or
    controller side; no Ray needed)."""

    def __init__(
        self,
        run_root: str,
        kinds: list[str],
        *,
        mlflow_uri: str = "",
        run_name: str = "frameexit",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = run_root
        self.kinds = list(kinds)
        self.mlflow_uri = mlflow_uri or _file_uri(join_uri(run_root, "mlruns"))
        self.run_name = run_name
        self.options = dict(options or {})
        self._writers: dict[str, Any] = {}
        self._staging: str | None = None

    def _writer(self, stage: str) -> Any:
        if stage not in self._writers:
            from tensorboardX import SummaryWriter

            if is_local(self.root):
                folder = os.path.join(local_path(self.root), "tensorboard", stage)
            else:
                self._staging = self._staging or tempfile.mkdtemp(prefix="fe-tb-")
                folder = os.path.join(self._staging, stage)
            os.makedirs(folder, exist_ok=True)
            self._writers[stage] = SummaryWriter(logdir=folder, flush_secs=5)
        return self._writers[stage]

    def log(self, stage: str, metrics: Mapping[str, Any], step: int) -> None:
        """Write the numeric entries of ``metrics`` at ``step`` under ``stage``."""
        values = _scalars(metrics)
        if "tensorboard" in self.kinds:
            writer = self._writer(stage)
            for key, value in values.items():
                writer.add_scalar(f"{stage}/{key}", value, global_step=step)
            writer.flush()
            self._upload()
        if "mlflow" in self.kinds:
            self._mlflow_log({f"{stage}/{k}": v for k, v in values.items()}, step)

    def _mlflow_log(self, values: dict[str, float], step: int) -> None:
        import mlflow

        if self.mlflow_uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode behind this opt-in; a local
            # folder beside the run needs no database (any tracking URI works instead)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.mlflow_uri)
        experiment = mlflow.set_experiment("frameexit")
        runs = mlflow.search_runs(
            experiment_ids=[experiment.experiment_id],
            filter_string=f"tags.mlflow.runName = '{self.run_name}'",
            output_format="list",
        )
        run_id = runs[0].info.run_id if runs else None
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else self.run_name):
            mlflow.log_metrics({_mlflow_key(k): v for k, v in values.items()}, step=step)

    def _upload(self) -> None:
        """Event files staged locally (remote runs) go to ``{run}/tensorboard``."""
        if self._staging:
            upload_dir(
                self._staging, join_uri(self.root, "tensorboard"), storage_options=self.options
            )

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._upload()


def _mlflow_key(key: str) -> str:
    """MLflow allows letters, digits, ``_ - . space : /`` in metric names."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)


def _file_uri(uri: str) -> str:
    return "file://" + os.path.abspath(local_path(uri)) if is_local(uri) else uri


def tracking_callback(
    run_root: str,
    stage: str,
    kinds: list[str],
    *,
    mlflow_uri: str = "",
    run_name: str = "frameexit",
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A Ray Train ``UserCallback`` logging every report of ``stage`` (rank 0's metrics)."""
    from ray.train import UserCallback

    class TrackingCallback(UserCallback):
        def __init__(self) -> None:
            self.tracker = Tracker(
                run_root, kinds, mlflow_uri=mlflow_uri, run_name=run_name, options=options
            )

        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            if metrics:
                try:
                    self.tracker.log(stage, metrics[0], int(metrics[0].get("epoch", 0)))
                except Exception as error:  # noqa: BLE001 - tracking never stops training
                    log.warning("tracking %s failed: %s", stage, error)

    return TrackingCallback()
