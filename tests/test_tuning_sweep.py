"""A tiny β × T sweep end to end on the tiny corpus (Ray Tune → Ray Train), and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from frameexit.config import config_from_dict
from frameexit.errors import ConfigError
from tuning.pareto import pareto_front, pareto_mask
from tuning.records import SweepStore
from tuning.spec import SweepSpec

BETAS = [1e-6, 1e-4, 1e-2]
BAD_BETA = -1.0  # passes the sweep's parsing, fails its trial's config validation


def tiny_sweep_config(manifest: str, num_classes: int, storage: str, **sweep):
    """Seconds per stage: 32 px, 32-d features, 1 epoch per stage, 1 worker per trial."""
    return config_from_dict(
        {
            "model": {
                "backbone": "tiny",
                "num_classes": num_classes,
                "image_size": 32,
                "feature_dim": 32,
                "gate_hidden": 16,
            },
            "data": {"manifest": manifest, "batch_size": 6, "decode_concurrency": 1},
            "train": {
                "storage": storage,
                "name": "tiny",
                "num_workers": 1,
                "cpus_per_worker": 0.5,
                "max_failures": 0,
                "stage1": {"epochs": 1, "lr": 1e-3, "milestones": []},
                "stage2": {"epochs": 1, "lr": 1e-3, "milestones": []},
            },
            "sweep": {
                "num_steps": [2, 3],
                "betas": [*BETAS, BAD_BETA],
                "stage1_concurrency": 2,  # overlap the two Ray Train start-ups
                "eval_plots": False,
                **sweep,
            },
        }
    )


def test_sweep_spec_defaults_and_errors(tmp_path):
    cfg = tiny_sweep_config("m.parquet", 3, str(tmp_path))
    spec = SweepSpec.from_config(cfg)
    assert spec.num_steps == [2, 3] and spec.backbones == ["tiny"]
    assert spec.storage == str(tmp_path / "sweeps" / "tiny")
    cfg.sweep = {"num_step": [2]}
    with pytest.raises(ConfigError, match="sweep.num_step"):
        SweepSpec.from_config(cfg)
    cfg.sweep = {"searcher": "optuna", "beta_range": [1e-2, 1e-6]}
    with pytest.raises(ConfigError, match="sweep.beta_range"):
        SweepSpec.from_config(cfg)


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_sweep_end_to_end_and_resume(ray_cluster, tiny_corpus, tmp_path):
    from tuning.driver import run_sweep

    cfg = tiny_sweep_config(tiny_corpus.manifest, tiny_corpus.num_classes, str(tmp_path))
    result = run_sweep(cfg)
    root = Path(result.root)
    store = SweepStore(result.root)

    # Stage 1 ran exactly once per T (its execution records), and every β trial of a T
    # trained its gates on that T's stage-1 model and cache.
    events = store.events()
    stage1 = [e for e in events if e["stage"] == "stage1"]
    assert sorted(e["key"] for e in stage1) == ["tiny-T2", "tiny-T3"]
    assert all(e["status"] == "done" for e in stage1)
    for steps in (2, 3):
        record = store.read_json(store.stage1_record(f"tiny-T{steps}"))
        assert record["model_uri"].startswith(str(root / "stage1" / f"tiny-T{steps}"))
        for beta in BETAS:
            trial = store.read_json(store.stage2_record(f"tiny-T{steps}-b{beta:.6g}"))
            assert trial["num_steps"] == steps and trial["beta"] == beta
            assert trial["model_uri"].startswith(str(root / "stage2" / f"tiny-T{steps}-b"))

    # The table: 6 trained points, 2 failed trials (the bad β) that did not stop the sweep,
    # and every trained model's post-hoc threshold curve.
    points = pd.read_parquet(root / "points.parquet")
    trials = points[points["source"] == "beta"]
    ok = trials[trials["status"] == "ok"]
    assert sorted(zip(ok["num_steps"], ok["beta"], strict=True)) == sorted(
        (t, b) for t in (2, 3) for b in BETAS
    )
    failed = trials[trials["status"] == "error"]
    assert sorted(failed["num_steps"]) == [2, 3] and (failed["beta"] == BAD_BETA).all()
    assert failed["error"].str.contains("train.beta").all()
    posthoc = points[points["source"] == "threshold"]
    assert len(posthoc) == 6 * len(SweepSpec().thresholds)
    assert ok["accuracy"].between(0, 1).all() and (ok["gflops"] > 0).all()
    # A trial's point is its own post-hoc curve at τ = model.exit_threshold.
    for _, row in ok.iterrows():
        same = posthoc[
            (posthoc["num_steps"] == row["num_steps"])
            & (posthoc["beta"] == row["beta"])
            & (posthoc["threshold"] == cfg.model.exit_threshold)
        ]
        assert same["accuracy"].tolist() == pytest.approx([row["accuracy"]])
        assert same["gflops"].tolist() == pytest.approx([row["gflops"]])
    # Larger T costs more without exits: the τ > 1 (never exit) points grow with T.
    never = posthoc[posthoc["threshold"] > 1].groupby("num_steps")["gflops"].mean()
    assert never[3] > never[2]

    # Pareto subset and plot agree with the table.
    assert points["pareto"].tolist() == pareto_mask(points).tolist()
    front = pd.read_parquet(root / "pareto.parquet")
    expected = pareto_front(points)
    assert list(zip(front["gflops"], front["accuracy"], strict=True)) == list(
        zip(expected["gflops"], expected["accuracy"], strict=True)
    )
    assert (root / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    drawn = json.loads((root / "pareto.front.json").read_text())
    assert list(zip(drawn["gflops"], drawn["accuracy"], strict=True)) == list(
        zip(front["gflops"], front["accuracy"], strict=True)
    )
    summary = result.summary
    assert summary["stage1_executions"] == {"tiny-T2": 1, "tiny-T3": 1}
    assert 0 < summary["phase1_share"] < 1 and 0 < summary["phase2_share"] < 1

    # Resume: the same sweep again recomputes nothing that finished (no new stage-1 or
    # successful stage-2 executions); the errored trials are retried (and fail again).
    done_before = sum(e["stage"] == "stage2" and e["status"] == "done" for e in events)
    again = run_sweep(cfg, resume=True)
    events_after = store.events()
    assert sum(e["stage"] == "stage1" for e in events_after) == 2
    assert (
        sum(e["stage"] == "stage2" and e["status"] == "done" for e in events_after) == done_before
    )
    again_ok = again.points[(again.points["source"] == "beta") & (again.points["status"] == "ok")]
    pd.testing.assert_frame_equal(
        again_ok[["num_steps", "beta", "accuracy", "gflops"]].reset_index(drop=True),
        ok[["num_steps", "beta", "accuracy", "gflops"]].reset_index(drop=True),
    )
