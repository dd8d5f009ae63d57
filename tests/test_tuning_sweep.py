"""A tiny β × T sweep end to end on the tiny corpus (Ray Tune → Ray Train for stage 1,
gates in the β trials' own processes), resumed; and in-process gates = Ray Train gates."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from frameexit.config import config_from_dict, config_to_dict
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
    assert spec.stage2_in_process_mb > 0 and spec.test
    for key, value in (("stage2_in_process_mb", -1), ("stage2_in_process_mb", "x"), ("test", 1)):
        cfg.sweep = {key: value}
        with pytest.raises(ConfigError, match=f"sweep.{key}"):
            SweepSpec.from_config(cfg)


@pytest.fixture(scope="module")
def tiny_sweep(ray_cluster, tiny_corpus, tmp_path_factory):
    """The tiny sweep, run once for this module's tests: ``(cfg, result)``."""
    from tuning.driver import run_sweep

    storage = str(tmp_path_factory.mktemp("sweep"))
    cfg = tiny_sweep_config(tiny_corpus.manifest, tiny_corpus.num_classes, storage)
    return cfg, run_sweep(copy.deepcopy(cfg))


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_sweep_end_to_end_and_resume(tiny_sweep):
    from tuning.driver import run_sweep

    cfg, result = tiny_sweep
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
    # A trial's point is its own post-hoc curve at the paper's τ (model.exit_threshold or 0.5).
    from frameexit.operating_point import paper_threshold

    for _, row in ok.iterrows():
        same = posthoc[
            (posthoc["num_steps"] == row["num_steps"])
            & (posthoc["beta"] == row["beta"])
            & (posthoc["threshold"] == paper_threshold(cfg.model))
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

    # The caches are tiny: every β trial trained its gates in its own process (no Ray
    # Train run under stage2/), and the test split was cached and evaluated as well.
    assert summary["stage2_modes"] == {"in_process": 6}
    assert set(ok["stage2_mode"]) == {"in_process"}
    assert not list((root / "stage2").glob("*/ray"))
    for column in ("test_accuracy", "test_gflops", "test_mean_steps"):
        assert points.loc[points["status"] == "ok", column].notna().all(), column
    assert ok["test_accuracy"].between(0, 1).all() and (ok["test_gflops"] > 0).all()
    never_test = posthoc[posthoc["threshold"] > 1]
    assert (never_test["test_mean_steps"] == never_test["num_steps"]).all()

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


@pytest.mark.ray
@pytest.mark.slow
def test_in_process_gates_equal_ray_train_gates(tiny_sweep):
    """On one unit's cache, gates trained in process and by Ray Train agree: the same
    seed, initial gates, optimiser, schedule and step, and one batch per epoch (6 train
    videos, ``data.batch_size`` 6), so the row order cannot matter. Tolerance: 1e-6 on
    every gate weight (measured: 1.5e-8, float sums in another order); the same
    evaluation."""
    from frameexit.checkpoint import read_model_checkpoint
    from pipelines.evaluate import evaluate
    from pipelines.stages import run_stage2
    from tuning.gates import IN_PROCESS, RAY_TRAIN, stage2_mode, train_gates_in_process
    from tuning.trials import unit_config

    cfg, result = tiny_sweep
    store = SweepStore(result.root)
    stage1 = store.read_json(store.stage1_record("tiny-T3"))
    cache = stage1["cache"]
    base = config_to_dict(cfg)
    unit = {"key": "tiny-T3", "backbone": "tiny", "num_steps": 3}
    run = unit_config(base, unit, store, beta=0.5)  # ε_t straddles the losses: mixed labels
    run.train.stage2.epochs = 3  # several Adam steps: differences would grow
    assert stage2_mode(run, cache, 1.0) == IN_PROCESS
    assert stage2_mode(run, cache, 1e-6) == RAY_TRAIN == stage2_mode(run, cache, 0)

    trained = {}
    for name, train in (("in-process", train_gates_in_process), ("ray-train", run_stage2)):
        this = copy.deepcopy(run)
        this.train.name = f"equality-{name}"
        uri = train(this, stage1["model_uri"], cache)
        state, _, extra = read_model_checkpoint(uri)
        metrics = evaluate(this, uri, cache, plots=False)
        trained[name] = ({k: v for k, v in state.items() if k.startswith("gates.")}, extra, metrics)
    (ours, ours_extra, ours_metrics), (ray, ray_extra, ray_metrics) = trained.values()
    assert ours_extra["trained"] == IN_PROCESS and "trained" not in ray_extra
    assert 0 < ray_extra["final_pseudo_label_rate"] < 1  # the gates learn both answers
    assert ours.keys() == ray.keys() and ours
    initial, _, _ = read_model_checkpoint(stage1["model_uri"])
    moved = max(float((ours[k] - initial[k]).abs().max()) for k in ours)
    assert moved > 1e-3  # training changed the gates by far more than the tolerance
    for key in ours:
        torch.testing.assert_close(ours[key], ray[key], atol=1e-6, rtol=0, msg=key)
    for key in ("final_loss", "final_gate_agreement", "final_val_loss"):
        assert ours_extra[key] == pytest.approx(ray_extra[key], abs=1e-5), key
    for key in ("accuracy", "gflops", "mean_steps", "noexit_accuracy"):
        assert ours_metrics[key] == pytest.approx(ray_metrics[key]), key
