"""The two Tune function trainables of a sweep. Each launches training from inside itself.

::

    stage1_trial {unit: "tiny-T4"}                      once per distinct (backbone, T)
      └─ run_stage1(cfg_T) ─► stage1.pt ─► build_feature_cache(train, val[, test] splits)
         └─ records/stage1/tiny-T4.json  {model_uri, cache, seconds}
    stage2_trial {unit: "tiny-T4", beta: 1e-4}          once per (unit, β)
      └─ reads records/stage1/tiny-T4.json (never trains stage 1)
         gates on the cache: in this process when it fits in sweep.stage2_in_process_mb
         (tuning.gates), else run_stage2 (Ray Train) ─► stage2.pt
         ─► evaluate(val, thresholds=τ grid)  [─► evaluate(test, same τ grid)]
         (metrics at model.exit_threshold + the post-hoc τ curves, from the cached features)
         └─ records/stage2/tiny-T4-b0.0001.json  {accuracy, gflops, test_accuracy, ...}

Ray Train runs (``TorchTrainer.fit`` inside ``pipelines.stages``) are launched from these
functions, the pattern current Ray supports (a Trainer passed to a Tuner is deprecated).
A trial whose completion record exists reports it without training again (resume).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

from frameexit.config import Config, config_from_dict
from frameexit.operating_point import paper_threshold
from pipelines import features, stages
from pipelines.common import RunPaths
from pipelines.data import load_split
from pipelines.evaluate import evaluate
from pipelines.stages import write_config
from tuning.gates import IN_PROCESS, stage2_mode, train_gates_in_process
from tuning.records import SweepStore, trial_key


def unit_config(
    base: dict[str, Any], unit: dict[str, Any], store: SweepStore, *, beta: float | None = None
) -> Config:
    """The run config of one stage-1 unit (``beta=None``) or of one β trial."""
    data = copy.deepcopy(base)
    data["model"]["backbone"] = unit["backbone"]
    data["model"]["num_steps"] = unit["num_steps"]
    if beta is None:
        data["train"]["storage"] = store("stage1")
        data["train"]["name"] = unit["key"]
    else:
        data["train"]["beta"] = beta
        data["train"]["storage"] = store("stage2")
        data["train"]["name"] = trial_key(unit["key"], beta)
    return config_from_dict(data)


def stage1_trial(
    config: dict[str, Any], *, base: dict, units: dict, store: SweepStore, sweep: dict
) -> None:
    """Tune trainable: stage 1 and the feature cache of one (backbone, T), at most once."""
    unit = units[config["unit"]]
    record_uri = store.stage1_record(unit["key"])
    record = store.read_json(record_uri)
    if record is None:
        cfg = unit_config(base, unit, store)
        write_config(cfg)  # every run dir holds its resolved config
        splits = list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split]))
        if sweep["test"] and _has_test_split(cfg):
            splits.append(cfg.data.test_split)
        with store.event("stage1", unit["key"], **_unit_fields(unit)) as event:
            t0 = time.perf_counter()
            model_uri = stages.run_stage1(cfg)
            t1 = time.perf_counter()
            cache = features.build_feature_cache(cfg, model_uri, splits)
            t2 = time.perf_counter()
            event.data.update(stage1_seconds=t1 - t0, cache_seconds=t2 - t1)
        record = {
            **_unit_fields(unit),
            "model_uri": model_uri,
            "cache": dict(cache),
            "stage1_seconds": t1 - t0,
            "cache_seconds": t2 - t1,
        }
        store.write_json(record_uri, record)
        record["skipped"] = False
    else:
        record["skipped"] = True
    _report({k: v for k, v in record.items() if k != "cache"})


def stage2_trial(
    config: dict[str, Any], *, base: dict, units: dict, store: SweepStore, sweep: dict
) -> None:
    """Tune trainable: gates for one (unit, β) on the unit's cached features, evaluated."""
    unit = units[config["unit"]]
    beta = float(config["beta"])
    key = trial_key(unit["key"], beta)
    stage1 = store.read_json(store.stage1_record(unit["key"]))
    if stage1 is None:
        raise RuntimeError(f"{unit['key']}: stage 1 has no completion record; not training it here")
    cfg = unit_config(base, unit, store, beta=beta)  # an invalid β fails this trial only
    record_uri = store.stage2_record(key)
    record = store.read_json(record_uri)
    if record is None:
        write_config(cfg)
        cache = stage1["cache"]
        mode = stage2_mode(cfg, cache, float(sweep["stage2_in_process_mb"]))
        test = cfg.data.test_split if cfg.data.test_split in cache and sweep["test"] else None
        paths = RunPaths(cfg)
        with store.event("stage2", key, beta=beta, mode=mode, **_unit_fields(unit)) as event:
            t0 = time.perf_counter()
            if mode == IN_PROCESS:
                model_uri = train_gates_in_process(cfg, stage1["model_uri"], cache)
            else:
                model_uri = stages.run_stage2(cfg, stage1["model_uri"], cache)
            t1 = time.perf_counter()
            thresholds = sweep["thresholds"] or None
            metrics = evaluate(
                cfg, model_uri, cache, thresholds=thresholds, plots=sweep["eval_plots"]
            )
            test_metrics = {}
            if test:  # the same model and τ grid on test: selection on val, figures on test
                out = paths("eval", test)
                test_metrics = evaluate(
                    cfg, model_uri, cache, split=test, thresholds=thresholds, out=out, plots=False
                )
            t2 = time.perf_counter()
            event.data.update(stage2_seconds=t1 - t0, eval_seconds=t2 - t1)
        # evaluate() replays the τ grid on the cached features of a split (no training) and
        # writes the curve next to its metrics: {run}/eval[/{test}]/threshold_sweep.parquet.
        curve = "threshold_sweep.parquet"
        test_objectives = (
            objectives(test_metrics, multi_label=cfg.model.multi_label) if test else {}
        )
        record = {
            **_unit_fields(unit),
            "beta": beta,
            "threshold": paper_threshold(cfg.model),
            **objectives(metrics, multi_label=cfg.model.multi_label),
            "noexit_accuracy": float(metrics["noexit_accuracy"]),
            **{f"test_{k}": v for k, v in test_objectives.items() if k != "metric"},
            "model_uri": model_uri,
            "stage2_mode": mode,
            "thresholds_uri": paths("eval", curve) if thresholds else None,
            "test_thresholds_uri": paths("eval", test, curve) if thresholds and test else None,
            "stage2_seconds": t1 - t0,
            "eval_seconds": t2 - t1,
            "metrics": {k: v for k, v in metrics.items() if _scalar(v)},
        }
        store.write_json(record_uri, record)
        record["skipped"] = False
    else:
        record["skipped"] = True
    _report({k: v for k, v in record.items() if k != "metrics"})


def _has_test_split(cfg: Config) -> bool:
    """Whether ``data.test_split`` is a split of its own in the manifest (with videos)."""
    test = cfg.data.test_split
    if not test or test in (cfg.data.train_split, cfg.data.val_split):
        return False
    return not load_split(cfg, test).empty


def _report(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report({k: v for k, v in metrics.items() if v is None or _scalar(v)})


def objectives(metrics: dict[str, Any], *, multi_label: bool) -> dict[str, Any]:
    """``accuracy``, ``metric``, ``gflops``, ``mean_steps`` out of ``evaluate``'s dict."""
    missing = [key for key in ("accuracy", "gflops") if not _scalar(metrics.get(key))]
    if missing:
        raise KeyError(f"evaluate() returned no {missing}; keys: {sorted(metrics)}")
    return {
        "accuracy": float(metrics["accuracy"]),
        "metric": metrics.get("metric") or ("mAP" if multi_label else "top1"),
        "gflops": float(metrics["gflops"]),
        "mean_steps": float(metrics.get("mean_steps", metrics.get("mean_frames", math.nan))),
    }


def _scalar(value: Any) -> bool:
    if isinstance(value, bool | str | int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _unit_fields(unit: dict[str, Any]) -> dict[str, Any]:
    return {"unit": unit["key"], "backbone": unit["backbone"], "num_steps": unit["num_steps"]}
