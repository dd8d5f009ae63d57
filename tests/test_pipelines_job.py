"""`ray job submit` of pipelines/train.py against a separate local Ray head, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipelines_train import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
@pytest.mark.slow
def test_train_script_under_ray_job_submit(ray_head, tiny_corpus, tmp_path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    storage = tmp_path / "runs"
    overrides = tiny_overrides(tiny_corpus.manifest, str(storage), "job")
    overrides += ["train.num_workers=1", "train.stage1.epochs=1", "train.stage2.epochs=1"]
    ray_bin = Path(sys.executable).with_name("ray")
    submit = [
        str(ray_bin),
        "job",
        "submit",
        "--address",
        ray_head["address"],
        "--submission-id",
        "frameexit-test-job",
        "--no-wait",
        "--working-dir",
        str(ROOT),
        "--",
        sys.executable,
        "pipelines/train.py",
        "--config",
        "configs/synthetic.yaml",
        *overrides,
    ]
    subprocess.run(submit, check=True, env=ray_head["env"], capture_output=True, timeout=120)
    client = JobSubmissionClient(ray_head["address"])
    deadline = time.monotonic() + 420
    status = client.get_job_status("frameexit-test-job")
    while not status.is_terminal():
        assert time.monotonic() < deadline, "job did not finish in time"
        time.sleep(2)
        status = client.get_job_status("frameexit-test-job")
    logs = client.get_job_logs("frameexit-test-job")
    assert status == JobStatus.SUCCEEDED, logs[-6000:]
    assert "FrameExit" in logs and "w/o exit" in logs

    run = storage / "job"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["num_videos"] == int((tiny_corpus.table["split"] == "val").sum())
    for path in (
        "config.yaml",
        "checkpoints/stage1.pt",
        "checkpoints/stage2.pt",
        "skipped_videos.parquet",
        "eval/fig3_exit_histogram.png",
    ):
        assert (run / path).exists(), path
