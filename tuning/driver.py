"""A β × T sweep as two Tune experiments, then its table, Pareto front and plot.

::

    phase 1  Tune grid over units = backbones × T          stage1_trial (train + cache)
    phase 2  Tune grid (or Optuna) over units × β          stage2_trial (gates + eval
                                                            + post-hoc threshold curve)
    then     points.parquet (every β trial and every post-hoc τ point, failed trials with
             status="error"; validation metrics, and the same points on test in test_*),
             pareto.parquet (on validation), pareto.png, summary.json

Cost: #units × (stage 1 + cache build) + #units × #β × (stage 2 on cached features +
evaluation + post-hoc curve); see docs/tuning.md.

Resources: a trial itself holds ``sweep.trial_cpus`` CPUs (it drives training and runs
the small evaluation); the Ray Train run it launches asks for its own workers
(``train.num_workers × train.cpus_per_worker``). Tune cannot see those, so β trials at
once are capped with ``max_concurrent_trials`` = (cluster CPUs − ``data.decode_concurrency``
left to Ray Data tasks) ÷ (trial + workers' CPUs); stage-1 units run
``sweep.stage1_concurrency`` (1) at a time, each a full DDP run. β trials whose caches fit
in ``sweep.stage2_in_process_mb`` train in their own process on one thread
(``tuning.gates``): then as many run at once as the cluster has CPUs.
Failures: ``FailureConfig(max_failures)`` retries a trial; one that still fails is an
``error`` row of the table and the sweep goes on. Resume: run the same command again
(finished units are read from their records), with ``--resume`` the Tune experiments
themselves are restored (needed to continue an Optuna search where it stopped).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from frameexit.config import Config, config_to_dict, save_config
from frameexit.operating_point import paper_threshold
from frameexit.storage import (
    absolute_uri,
    join_uri,
    options_for,
    pyarrow_filesystem,
    write_parquet,
)
from pipelines.common import ensure_ray
from tuning.gates import IN_PROCESS, stage2_mode
from tuning.pareto import pareto_front, pareto_mask
from tuning.plot import save_pareto_plot
from tuning.records import SweepStore, unit_key
from tuning.spec import SweepSpec
from tuning.trials import stage1_trial, stage2_trial, unit_config

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    root: str
    points: pd.DataFrame
    front: pd.DataFrame
    summary: dict[str, Any]


def run_sweep(cfg: Config, *, resume: bool = False) -> SweepResult:
    """Run (or continue) the sweep ``cfg.sweep`` describes; write its outputs; return them."""
    spec = SweepSpec.from_config(cfg)
    ensure_ray(cfg)
    store = SweepStore(spec.storage, options_for(spec.storage, cfg.data.storage_options))
    if not cfg.data.manifest:  # the embedded synthetic corpus, as pipelines/train.py does
        from pipelines.defaults import default_corpus

        cfg.data.manifest = default_corpus(cfg)
    base = config_to_dict(cfg)
    base["data"]["manifest"] = (
        absolute_uri(base["data"]["manifest"]) if base["data"]["manifest"] else ""
    )
    _save_config(cfg, store)
    units = {
        unit_key(bb, t): {"key": unit_key(bb, t), "backbone": bb, "num_steps": t}
        for bb in spec.backbones
        for t in spec.num_steps
    }
    params = {"base": base, "units": units, "store": store, "sweep": asdict(spec)}
    started = time.perf_counter()

    # Phase 1: stage 1 + feature cache, once per unit.
    grid1 = _fit(
        stage1_trial,
        "stage1",
        {"unit": _grid(list(units))},
        params=params,
        store=store,
        spec=spec,
        concurrency=spec.stage1_concurrency,
        resume=resume,
    )
    stage1_errors = {r.config["unit"]: _error_text(r.error) for r in grid1 if r.error is not None}
    ready = [u for u in units if u not in stage1_errors]
    phase1_done = time.perf_counter()

    # Phase 2: β trials on the cached features of every unit whose stage 1 finished.
    grid2 = []
    if ready:
        base2 = config_to_dict(cfg)
        base2["data"]["manifest"] = base["data"]["manifest"]
        base2["train"]["num_workers"] = spec.stage2_num_workers
        params2 = {**params, "base": base2}
        if spec.searcher == "grid":
            space = {"unit": _grid(ready), "beta": _grid(spec.betas)}
            search = None
        else:
            space, search = _optuna_space(ready, spec)
        in_process = all(
            stage2_mode(
                unit_config(base2, units[u], store),
                store.read_json(store.stage1_record(u))["cache"],
                spec.stage2_in_process_mb,
            )
            == IN_PROCESS
            for u in ready
        )
        grid2 = _fit(
            stage2_trial,
            "stage2",
            space,
            params=params2,
            store=store,
            spec=spec,
            concurrency=spec.max_concurrent or _auto_concurrency(cfg, spec, in_process=in_process),
            resume=resume,
            search_alg=search,
            num_samples=spec.num_samples if search else 1,
        )
    phase2_done = time.perf_counter()

    points = _points_table(grid2, units, stage1_errors, spec, cfg, store)
    points["pareto"] = pareto_mask(points)
    front = pareto_front(points)
    options = store.options or None
    write_parquet(store("points.parquet"), points, storage_options=options)
    write_parquet(store("pareto.parquet"), front, storage_options=options)
    save_pareto_plot(
        points, store("pareto.png"), title=f"{cfg.train.name}: β × T sweep", storage_options=options
    )
    finished = time.perf_counter()
    summary = _summary(store, units, started, phase1_done, phase2_done, finished, points)
    summary["resumed"] = resume
    store.write_json(store("summary.json"), summary)  # the latest invocation
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(summary["started"]))
    store.write_json(store("summaries", f"{stamp}.json"), summary)  # one per invocation
    return SweepResult(root=store.root, points=points, front=front, summary=summary)


def _save_config(cfg: Config, store: SweepStore) -> None:
    """The sweep's resolved config (credentials redacted) at ``{sweep}/config.yaml``."""
    save_config(cfg, store("config.yaml"), storage_options=store.options)


# --- Tune ---------------------------------------------------------------------------------


def _fit(
    trainable,
    name,
    space,
    *,
    params,
    store,
    spec,
    concurrency,
    resume,
    search_alg=None,
    num_samples=1,
):
    from ray import tune

    filesystem, storage = pyarrow_filesystem(store("tune"), store.options)
    fn = tune.with_resources(tune.with_parameters(trainable, **params), {"cpu": spec.trial_cpus})
    path = join_uri(storage, name)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        log.info("restoring Tune experiment %s", path)
        tuner = tune.Tuner.restore(
            path,
            trainable=fn,
            resume_errored=False,
            restart_errored=True,
            storage_filesystem=filesystem,
        )
    else:
        tuner = tune.Tuner(
            fn,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                num_samples=num_samples,
                max_concurrent_trials=concurrency,
                trial_dirname_creator=lambda trial: f"{name}_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                storage_filesystem=filesystem,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                verbose=1,
            ),
        )
    return list(tuner.fit())


def _grid(values: list) -> dict:
    from ray import tune

    return tune.grid_search(values)


def _optuna_space(units: list[str], spec: SweepSpec):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    space = {"unit": tune.choice(units), "beta": tune.loguniform(*spec.beta_range)}
    search = OptunaSearch(metric=["accuracy", "gflops"], mode=["max", "min"], seed=spec.seed)
    return space, search


def _auto_concurrency(cfg: Config, spec: SweepSpec, *, in_process: bool = False) -> int:
    """β trials at once: the cluster's CPUs, less ``data.decode_concurrency`` left free for
    Ray Data tasks (cache reads; 1 CPU each), ÷ (trial + its Train workers); when every
    trial trains in its own process (one thread, no Ray Data), one per CPU."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if in_process:
        return max(1, int(cpus))
    cpus -= cfg.data.decode_concurrency
    per_trial = spec.trial_cpus + spec.stage2_num_workers * cfg.train.cpus_per_worker
    return max(1, int(cpus // per_trial))


# --- the table -------------------------------------------------------------------------

COLUMNS = [
    "source", "backbone", "num_steps", "beta", "threshold", "accuracy", "metric", "gflops",
    "mean_steps", "noexit_accuracy", "test_accuracy", "test_gflops", "test_mean_steps",
    "status", "error", "model_uri", "trial_id", "stage2_mode", "stage2_seconds", "skipped",
]  # fmt: skip
TEST_COLUMNS = ("accuracy", "gflops", "mean_steps")  # a test curve's columns, as test_*
NUMERIC = (
    "beta", "threshold", "accuracy", "gflops", "mean_steps", "noexit_accuracy",
    "test_accuracy", "test_gflops", "test_mean_steps", "stage2_seconds",
)  # fmt: skip


def _points_table(
    grid2, units, stage1_errors, spec: SweepSpec, cfg: Config, store: SweepStore
) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for result in grid2:
        unit = units[result.config["unit"]]
        metrics = dict(result.metrics or {})
        row = {
            "source": "beta",
            "backbone": unit["backbone"],
            "num_steps": unit["num_steps"],
            "beta": float(result.config["beta"]),
            "threshold": paper_threshold(cfg.model),
            "accuracy": metrics.get("accuracy", math.nan),
            "metric": metrics.get("metric", "mAP" if cfg.model.multi_label else "top1"),
            "gflops": metrics.get("gflops", math.nan),
            "mean_steps": metrics.get("mean_steps", math.nan),
            "noexit_accuracy": metrics.get("noexit_accuracy", math.nan),
            **{f"test_{k}": metrics.get(f"test_{k}", math.nan) for k in TEST_COLUMNS},
            "status": "ok" if result.error is None else "error",
            "error": _error_text(result.error) if result.error is not None else None,
            "model_uri": metrics.get("model_uri"),
            "trial_id": metrics.get("trial_id"),
            "stage2_mode": metrics.get("stage2_mode"),
            "stage2_seconds": metrics.get("stage2_seconds", math.nan),
            "skipped": metrics.get("skipped"),
        }
        rows.append(row)
        curve_uri = metrics.get("thresholds_uri")
        if row["status"] == "ok" and isinstance(curve_uri, str) and curve_uri:
            curve = _curve(curve_uri, metrics.get("test_thresholds_uri"), store)
            for point in curve.to_dict("records"):
                rows.append({**row, **point, "source": "threshold", "stage2_seconds": math.nan})
    for key, error in stage1_errors.items():
        unit = units[key]
        for beta in spec.betas if spec.searcher == "grid" else [math.nan]:
            rows.append(
                {
                    "source": "beta",
                    "backbone": unit["backbone"],
                    "num_steps": unit["num_steps"],
                    "beta": beta,
                    "status": "error",
                    "error": f"stage 1 failed: {error}",
                }
            )
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in NUMERIC:
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["num_steps"] = table["num_steps"].astype(int)
    return table.sort_values(
        ["backbone", "num_steps", "beta", "source", "threshold"], kind="stable"
    ).reset_index(drop=True)


def _curve(uri: str, test_uri: Any, store: SweepStore) -> pd.DataFrame:
    """A model's post-hoc τ curve on validation, with its test curve as test_* columns."""
    options = store.options or None
    curve = pd.read_parquet(uri, storage_options=options)
    if isinstance(test_uri, str) and test_uri:
        test = pd.read_parquet(test_uri, storage_options=options)
        test = test[["threshold", *TEST_COLUMNS]].rename(
            columns={k: f"test_{k}" for k in TEST_COLUMNS}
        )
        curve = curve.merge(test, on="threshold", how="left", validate="one_to_one")
    return curve


def _summary(store, units, started, phase1_done, phase2_done, finished, points) -> dict[str, Any]:
    events = store.events()
    done = [e for e in events if e.get("status") == "done"]
    stage1_runs = {
        u: sum(1 for e in events if e["stage"] == "stage1" and e["key"] == u) for u in units
    }

    def total(stage: str, key: str) -> float:
        return float(sum(e.get(key, 0.0) for e in done if e["stage"] == stage))

    wall = finished - started
    stage1 = total("stage1", "stage1_seconds") + total("stage1", "cache_seconds")
    stage2 = total("stage2", "stage2_seconds") + total("stage2", "eval_seconds")
    return {
        "started": time.time() - wall,
        "wall_seconds": wall,
        "phase1_seconds": phase1_done - started,
        "phase2_seconds": phase2_done - phase1_done,
        "outputs_seconds": finished - phase2_done,
        "phase1_share": (phase1_done - started) / wall if wall else math.nan,
        "phase2_share": (phase2_done - phase1_done) / wall if wall else math.nan,
        "stage1_train_seconds": total("stage1", "stage1_seconds"),
        "cache_seconds": total("stage1", "cache_seconds"),
        "stage2_train_seconds": total("stage2", "stage2_seconds"),
        "eval_seconds": total("stage2", "eval_seconds"),
        # trial-seconds over the sweep's whole history (trials overlap, so not wall time)
        "stage1_compute_share": stage1 / (stage1 + stage2) if stage1 + stage2 else math.nan,
        "stage2_compute_share": stage2 / (stage1 + stage2) if stage1 + stage2 else math.nan,
        "stage1_executions": stage1_runs,
        "stage2_executions": sum(1 for e in events if e["stage"] == "stage2"),
        # where the β trials trained their gates: {"in_process": n, "ray_train": m}
        "stage2_modes": dict(
            Counter(e.get("mode", "ray_train") for e in done if e["stage"] == "stage2")
        ),
        "points": int(len(points)),
        "failed_trials": int(((points["source"] == "beta") & (points["status"] != "ok")).sum()),
        "pareto_points": int(points["pareto"].sum()),
    }


def _error_text(error: BaseException | None) -> str:
    """The error's last line (a Ray error's str() is the remote traceback)."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:500]
