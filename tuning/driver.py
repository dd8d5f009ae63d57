"""A β × T sweep as two Tune experiments, then its table, Pareto front and plot.

::

    phase 1  Tune grid over units = backbones × T          stage1_trial (train + cache)
    phase 2  Tune grid (or Optuna) over units × β          stage2_trial (gates + eval
                                                            + post-hoc threshold curve)
    then     points.parquet (every β trial and every post-hoc τ point, failed trials with
             status="error"), pareto.parquet, pareto.png, summary.json

Cost: #units × (stage 1 + cache build) + #units × #β × (stage 2 on cached features +
evaluation + post-hoc curve); see docs/tuning.md.

Resources: a trial itself holds ``sweep.trial_cpus`` CPUs (it drives training and runs
the small evaluation); the Ray Train run it launches asks for its own workers
(``train.num_workers × train.cpus_per_worker``). Tune cannot see those, so β trials at
once are capped with ``max_concurrent_trials`` = (cluster CPUs − ``data.decode_concurrency``
left to Ray Data tasks) ÷ (trial + workers' CPUs); stage-1 units run
``sweep.stage1_concurrency`` (1) at a time, each a full DDP run.
Failures: ``FailureConfig(max_failures)`` retries a trial; one that still fails is an
``error`` row of the table and the sweep goes on. Resume: run the same command again
(finished units are read from their records), with ``--resume`` the Tune experiments
themselves are restored (needed to continue an Optuna search where it stopped).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from frameexit.config import Config, config_to_dict
from frameexit.errors import ConfigError
from pipelines.common import absolute_uri, ensure_ray, join, pyarrow_filesystem, storage_options
from tuning.pareto import pareto_front, pareto_mask
from tuning.plot import save_pareto_plot
from tuning.records import SweepStore, unit_key
from tuning.thresholds import DEFAULT_THRESHOLDS
from tuning.trials import DEFAULT_STAGES, stage1_trial, stage2_trial

log = logging.getLogger(__name__)

DEFAULT_BETAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
SEARCHERS = ("grid", "optuna")


@dataclass
class SweepSpec:
    """What ``cfg.sweep`` may hold (every key optional). Errors name ``sweep.<key>``."""

    backbones: list[str] = field(default_factory=list)  # default: [model.backbone]
    num_steps: list[int] = field(default_factory=list)  # default: [model.num_steps]
    betas: list[float] = field(default_factory=lambda: list(DEFAULT_BETAS))
    searcher: str = "grid"  # "grid" | "optuna" (multi-objective over T and log β)
    num_samples: int = 12  # optuna: number of β trials in all
    beta_range: list[float] = field(default_factory=lambda: [1e-6, 1e-2])  # optuna
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    storage: str = ""  # default: {train.storage}/sweeps/{train.name}
    trial_cpus: float = 0.25  # held by the trial process itself
    stage2_num_workers: int = 1  # Ray Train workers of a β trial (gates on cached features)
    max_concurrent: int = 0  # β trials at once; 0 = as many as the cluster's CPUs allow
    stage1_concurrency: int = 1  # stage-1 units at once (each is a full DDP run)
    max_failures: int = 1  # retries per trial before it counts as failed
    stages: str = DEFAULT_STAGES  # module with run_stage1/build_feature_cache/run_stage2/evaluate
    eval_plots: bool = True  # per-trial Fig. 3/4/5 PNGs from evaluate (False: tables only)
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Config) -> SweepSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(cfg.sweep) - known)
        if unknown:
            raise ConfigError(
                f"sweep.{unknown[0]}", f"unknown key; known: {', '.join(sorted(known))}"
            )
        spec = cls(**cfg.sweep)
        spec.backbones = [str(b) for b in (spec.backbones or [cfg.model.backbone])]
        spec.num_steps = list(spec.num_steps or [cfg.model.num_steps])
        spec.storage = absolute_uri(
            spec.storage or join(absolute_uri(cfg.train.storage), "sweeps", cfg.train.name)
        )
        spec.betas = [_number("sweep.betas", b) for b in spec.betas]
        spec.thresholds = [_number("sweep.thresholds", t) for t in spec.thresholds]
        spec.beta_range = [_number("sweep.beta_range", b) for b in spec.beta_range]
        spec.validate()
        return spec

    def validate(self) -> None:
        if not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in self.num_steps
        ):
            raise ConfigError("sweep.num_steps", f"must be integers >= 1, got {self.num_steps}")
        if self.searcher not in SEARCHERS:
            raise ConfigError(
                "sweep.searcher", f"must be one of {SEARCHERS}, got {self.searcher!r}"
            )
        if self.searcher == "grid" and not self.betas:
            raise ConfigError("sweep.betas", "must hold at least one β")
        lo, hi = (self.beta_range + [0, 0])[:2]
        if self.searcher == "optuna" and not (len(self.beta_range) == 2 and 0 < lo < hi):
            raise ConfigError(
                "sweep.beta_range",
                f"must be [low, high] with 0 < low < high, got {self.beta_range}",
            )
        if self.num_samples < 1:
            raise ConfigError("sweep.num_samples", f"must be >= 1, got {self.num_samples}")
        if not self.trial_cpus > 0:
            raise ConfigError(
                "sweep.trial_cpus", f"must be > 0 (Tune refuses 0), got {self.trial_cpus}"
            )
        for name in ("stage2_num_workers", "stage1_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sweep.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.max_concurrent < 0:
            raise ConfigError(
                "sweep.max_concurrent", f"must be >= 0 (0 = auto), got {self.max_concurrent}"
            )
        if not isinstance(self.eval_plots, bool):
            raise ConfigError("sweep.eval_plots", f"must be true or false, got {self.eval_plots!r}")
        if self.max_failures < 0:
            raise ConfigError("sweep.max_failures", f"must be >= 0, got {self.max_failures}")


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
    store = SweepStore(spec.storage, storage_options(cfg, spec.storage))
    if not cfg.data.manifest:  # the embedded synthetic corpus, as pipelines/train.py does
        from pipelines.train import default_corpus

        cfg.data.manifest = default_corpus(cfg)
    base = config_to_dict(cfg)
    base["data"]["manifest"] = _absolute_local(base["data"]["manifest"])
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
        grid2 = _fit(
            stage2_trial,
            "stage2",
            space,
            params=params2,
            store=store,
            spec=spec,
            concurrency=spec.max_concurrent or _auto_concurrency(cfg, spec),
            resume=resume,
            search_alg=search,
            num_samples=spec.num_samples if search else 1,
        )
    phase2_done = time.perf_counter()

    points = _points_table(grid2, units, stage1_errors, spec, cfg, store)
    points["pareto"] = pareto_mask(points)
    front = pareto_front(points)
    options = store.options or None
    points.to_parquet(store("points.parquet"), index=False, storage_options=options)
    front.to_parquet(store("pareto.parquet"), index=False, storage_options=options)
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
    import yaml

    from pipelines.stages import redacted

    fs, path = fsspec.core.url_to_fs(store("config.yaml"), **store.options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        yaml.safe_dump(config_to_dict(redacted(cfg)), handle, sort_keys=False)


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
    path = join(storage, name)
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


def _auto_concurrency(cfg: Config, spec: SweepSpec) -> int:
    """β trials at once: the cluster's CPUs, less ``data.decode_concurrency`` left free for
    Ray Data tasks (cache reads; 1 CPU each), ÷ (trial + its Train workers)."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0)) - cfg.data.decode_concurrency
    per_trial = spec.trial_cpus + spec.stage2_num_workers * cfg.train.cpus_per_worker
    return max(1, int(cpus // per_trial))


# --- the table -------------------------------------------------------------------------

COLUMNS = [
    "source", "backbone", "num_steps", "beta", "threshold", "accuracy", "metric", "gflops",
    "mean_steps", "status", "error", "model_uri", "trial_id", "stage2_seconds", "skipped",
]  # fmt: skip


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
            "threshold": float(cfg.model.exit_threshold),
            "accuracy": metrics.get("accuracy", math.nan),
            "metric": metrics.get("metric", "mAP" if cfg.model.multi_label else "top1"),
            "gflops": metrics.get("gflops", math.nan),
            "mean_steps": metrics.get("mean_steps", math.nan),
            "status": "ok" if result.error is None else "error",
            "error": _error_text(result.error) if result.error is not None else None,
            "model_uri": metrics.get("model_uri"),
            "trial_id": metrics.get("trial_id"),
            "stage2_seconds": metrics.get("stage2_seconds", math.nan),
            "skipped": metrics.get("skipped"),
        }
        rows.append(row)
        curve_uri = metrics.get("thresholds_uri")
        if row["status"] == "ok" and isinstance(curve_uri, str) and curve_uri:
            for point in pd.read_parquet(curve_uri, storage_options=store.options or None).to_dict(
                "records"
            ):
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
    for column in ("beta", "threshold", "accuracy", "gflops", "mean_steps", "stage2_seconds"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["num_steps"] = table["num_steps"].astype(int)
    return table.sort_values(
        ["backbone", "num_steps", "beta", "source", "threshold"], kind="stable"
    ).reset_index(drop=True)


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


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(name, f"must be numbers, got {value!r}") from error
    if not np.isfinite(number):
        raise ConfigError(name, f"must be finite, got {value!r}")
    return number


def _absolute_local(uri: str) -> str:
    if not uri or "://" in uri:
        return uri
    return absolute_uri(uri)
