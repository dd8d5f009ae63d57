"""Tracking: TensorBoard event files (local and on S3) and MLflow (local file store)."""

from __future__ import annotations

import pytest
from test_pipelines_train import read_scalars

from pipelines.tracking import Tracker


def test_tensorboard_and_mlflow_hold_the_logged_metrics(tmp_path):
    tracker = Tracker(str(tmp_path), ["tensorboard", "mlflow"], run_name="run-a")
    for epoch, loss in ((1, 1.5), (2, 0.75)):
        tracker.log("stage1", {"epoch": epoch, "loss": loss, "note": "text is skipped"}, epoch)
    tracker.log("eval/val", {"accuracy": 0.5, "gflops": 0.1}, 0)
    tracker.close()
    scalars = read_scalars(tmp_path / "tensorboard" / "stage1")
    assert scalars["stage1/loss"] == {1: 1.5, 2: 0.75} and "stage1/note" not in scalars
    assert read_scalars(tmp_path / "tensorboard" / "eval/val")["eval/val/gflops"] == {
        0: pytest.approx(0.1)
    }

    import mlflow

    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    (run,) = mlflow.search_runs(experiment_names=["frameexit"], output_format="list")
    assert run.info.run_name == "run-a"
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "stage1/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 0.75)]
    assert run.data.metrics["eval/val/accuracy"] == 0.5


@pytest.mark.s3
def test_event_files_reach_a_remote_run_directory(moto_s3, s3_bucket, tmp_path):
    root = f"{s3_bucket}/runs/r"
    tracker = Tracker(root, ["tensorboard"], options=moto_s3.storage_options)
    tracker.log("stage2", {"epoch": 1, "gate_agreement": 0.8}, 1)
    tracker.close()
    fs = moto_s3.filesystem()
    files = fs.find(f"{root[5:]}/tensorboard/stage2")
    assert files and all("events.out.tfevents" in f for f in files)
    local = tmp_path / "copy"
    local.mkdir()
    fs.get(files[0], str(local / files[0].rsplit("/", 1)[-1]))
    assert read_scalars(local)["stage2/gate_agreement"] == {1: pytest.approx(0.8)}
