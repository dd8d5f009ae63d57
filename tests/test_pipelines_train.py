"""Both training stages with Ray Train (2 DDP workers), resume, retry, evaluation outputs."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from frameexit.checkpoint import load_model_checkpoint, read_model_checkpoint
from frameexit.config import load_config
from frameexit.model import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
T = 4


def tiny_overrides(manifest: str, storage: str, name: str) -> list[str]:
    """configs/synthetic.yaml shrunk to seconds: 32 px, T = 4, 64-d features."""
    return [
        f"data.manifest={manifest}",
        f"train.storage={storage}",
        f"train.name={name}",
        "model.num_classes=3",
        f"model.num_steps={T}",
        "model.image_size=32",
        "model.feature_dim=64",
        "data.batch_size=4",
        "train.num_workers=2",
        "train.stage1.epochs=2",
        "train.stage1.milestones=[1]",
        "train.stage2.epochs=2",
        "train.stage2.milestones=[1]",
        "train.beta=0.5",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_configs_validate_and_build_the_model(path: Path) -> None:
    cfg = load_config(str(path))
    cfg.model.pretrained = None  # no weights download here; shapes are what we check
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert len(model.classifiers) == len(model.gates) == cfg.model.num_steps
    assert model.classifiers[0].out_features == cfg.model.num_classes


@pytest.mark.ray
@pytest.mark.slow
def test_two_stage_pipeline_resume_retry_and_evaluation(
    ray_cluster, tiny_corpus, tmp_path, monkeypatch
) -> None:
    """Interrupted after stage-1 epoch 1, resumed to the end; a stage-2 worker failure is
    retried from its checkpoint; then the evaluation outputs are checked."""
    from pipelines.stages import FAULT_ENV, run_pipeline

    storage = str(tmp_path / "runs")
    cfg = load_config(
        str(ROOT / "configs/synthetic.yaml"),
        [*tiny_overrides(tiny_corpus.manifest, storage, "t"), "train.max_failures=0"],
    )

    # 1. Interrupted run: stage 1 dies right after epoch 1's checkpoint (no retries left).
    monkeypatch.setenv(FAULT_ENV, "1:1")
    with pytest.raises(Exception, match="injected fault"):
        run_pipeline(cfg)
    run = tmp_path / "runs" / "t"
    assert not (run / "checkpoints" / "stage1.pt").exists()

    # 2. --resume: stage 1 continues at epoch 2; stage 2 fails once after its epoch 1 and
    #    FailureConfig(max_failures=1) restarts the workers from that checkpoint.
    monkeypatch.setenv(FAULT_ENV, f"2:1:{tmp_path / 'stage2-fault-marker'}")
    cfg.train.max_failures = 1
    metrics = run_pipeline(cfg, resume=True)
    assert (tmp_path / "stage2-fault-marker").exists()

    _, _, extra1 = read_model_checkpoint(str(run / "checkpoints" / "stage1.pt"))
    assert extra1["epochs"] == 2 and extra1["final_resumed_from"] == 1
    _, _, extra2 = read_model_checkpoint(str(run / "checkpoints" / "stage2.pt"))
    assert extra2["epochs"] == 2 and extra2["final_resumed_from"] == 1
    model, saved_cfg = load_model_checkpoint(str(run / "checkpoints" / "stage2.pt"))
    assert saved_cfg.model.num_steps == T and not model.training

    assert (run / "config.yaml").exists()
    assert load_config(str(run / "config.yaml")).train.name == "t"
    assert (run / "features" / "train" / "_SUCCESS").exists()
    assert glob.glob(str(run / "ray" / "stage1" / "checkpoint_*"))

    # Evaluation: consistent counts, tables and plots.
    val_videos = int((tiny_corpus.table["split"] == "val").sum())
    assert metrics["num_videos"] == val_videos
    assert 1 <= metrics["mean_frames"] <= T
    assert metrics["noexit_frames"] == T
    assert metrics["gflops"] == pytest.approx(metrics["mean_frames"] * metrics["gflops_per_step"])
    assert metrics["gflops"] <= metrics["noexit_gflops"] + 1e-12
    on_disk = json.loads((run / "eval" / "metrics.json").read_text())
    assert on_disk["accuracy"] == pytest.approx(metrics["accuracy"])
    hist = pd.read_parquet(run / "eval" / "exit_histogram.parquet")
    assert hist["count"].sum() == val_videos and list(hist["step"]) == list(range(1, T + 1))
    predictions = pd.read_parquet(run / "eval" / "predictions.parquet")
    assert len(predictions) == val_videos
    assert predictions["correct"].mean() == pytest.approx(metrics["top1"])
    assert (
        predictions["exit_step"].value_counts().sort_index()
        == hist.set_index("step")["count"][lambda c: c > 0]
    ).all()
    matrix = pd.read_parquet(run / "eval" / "exit_matrix.parquet")
    assert matrix.shape == (T, T + 1)
    per_class = pd.read_parquet(run / "eval" / "per_class_frames.parquet")
    assert per_class["count"].sum() == val_videos
    sweep = pd.read_parquet(run / "eval" / "threshold_sweep.parquet")
    assert sweep["gflops"].max() == pytest.approx(metrics["noexit_gflops"])
    for png in (
        "fig3_exit_histogram",
        "fig4_exit_matrix",
        "fig5_per_class_frames",
        "threshold_curve",
    ):
        assert (run / "eval" / f"{png}.png").stat().st_size > 1000
    skipped = pd.read_parquet(run / "skipped_videos.parquet")
    assert len(skipped) == metrics["skipped_videos"] == 0

    # The cache is plain Parquet, readable without Ray (flat lists of T×D, T×K, T values).
    cache = pd.read_parquet(run / "features" / "val")
    assert len(cache) == val_videos
    assert {"video", "label_ids", "features", "logits", "step_losses"} <= set(cache.columns)
    assert np.asarray(cache["features"].iloc[0]).size == T * 64
    assert np.asarray(cache["step_losses"].iloc[0]).size == T
