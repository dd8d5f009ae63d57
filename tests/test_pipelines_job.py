"""`ray job submit` of pipelines/train.py against a separate local Ray head, end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_pipelines_train import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
@pytest.mark.slow
def test_train_script_under_ray_job_submit(ray_head, tiny_corpus, tmp_path) -> None:
    """The README's sequence with token authentication on: the venv's `ray` and `python`,
    `ray get-auth-token --generate`, `ray start --head` (the fixture), then
    `ray job submit --address ... --working-dir . -- python pipelines/train.py ...`."""
    storage = tmp_path / "runs"
    overrides = tiny_overrides(tiny_corpus.manifest, str(storage), "job")
    overrides += ["train.num_workers=1", "train.stage1.epochs=1", "train.stage2.epochs=1"]
    env = ray_head["env"]  # PATH starts with the venv (source .venv/bin/activate)
    # without the token the job server refuses
    stranger = {**env, "HOME": str(tmp_path / "no-token-here")}
    refused = subprocess.run(
        ["ray", "job", "list", "--address", ray_head["address"]],
        env=stranger, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    submit = [
        "ray", "job", "submit", "--address", ray_head["address"], "--working-dir", ".", "--",
        "python", "pipelines/train.py", "--config", "configs/synthetic.yaml", *overrides,
    ]  # fmt: skip
    done = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-6000:]
    assert "succeeded" in logs.lower() and "w/o exit" in logs
    # a quiet console: frameexit's epoch lines, not Ray Train's report dumps or Ray Data's
    # execution plans (those need --verbose)
    assert "[frameexit] stage 1  epoch" in logs
    for noise in ("Reporting training result", "Execution plan of Dataset", "ReferenceCounting"):
        assert noise not in logs, noise

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
