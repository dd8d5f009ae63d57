"""The whole training run: check, stages in order, operating point, evaluation.

::

    run_pipeline(cfg, resume=False)
      check_beta · check_resume (the fields declared `resumable` may change, nothing else)
      stage 1 ─► feature cache (train, val, test) ─► stage 2        (pipelines.stages)
      ─► the operating point: its family fitted on train, Learn-then-Test on val, stored
         in stage2.pt (pipelines.evaluate.calibrate_on_cache)
      ─► val and test at it and at the paper's rule ─► {run}/eval/, tracking, summary.json

On resume, finished stages are reused and an interrupted one continues from its last
checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from frameexit.config import Config, config_to_dict, fields_with, flatten, redacted, upgrade
from frameexit.errors import ConfigError
from frameexit.storage import exists, read_bytes, redact, url_to_fs, write_text
from pipelines.cluster_checks import check_storage
from pipelines.common import RunPaths, ensure_ray, uri_options
from pipelines.evaluate import evaluate
from pipelines.features import build_feature_cache, file_sha256, finish_skipped
from pipelines.lease import Lease
from pipelines.stages import run_stage1, run_stage2, write_config

log = logging.getLogger("frameexit.pipelines")


def _manifest_sha256(cfg: Config) -> str:
    return file_sha256(cfg.data.manifest, uri_options(cfg, cfg.data.manifest))


def _outermost(names: Any) -> list[str]:
    """``names`` without those inside another one listed (``label``, not ``label.top_k``)."""
    names = list(names)
    return [n for n in names if not any(n.startswith(o + ".") for o in names)]


def check_resume(cfg: Config) -> None:
    """Refuse a ``--resume`` whose config changed what the run's model and data are:
    compares with the run's ``config.yaml`` (and the manifest's content with the hash
    recorded in ``run.json``), naming every changed field that is not resumable."""
    import yaml

    paths = RunPaths(cfg)
    if not exists(paths.config, storage_options=paths.options):
        return
    recorded = yaml.safe_load(read_bytes(paths.config, storage_options=paths.options)) or {}
    before = flatten(upgrade(recorded))  # a run recorded with earlier field names
    now = flatten(config_to_dict(redacted(cfg)))
    # a field added since the run was recorded ran at its default then
    defaults = flatten(config_to_dict(Config()))
    for key in set(now) - set(before):
        if key in defaults:
            before[key] = defaults[key]
    resumable = fields_with("resumable")
    changed = sorted(
        key
        for key in set(before) | set(now)
        if before.get(key) != now.get(key)
        and not any(key == f or key.startswith(f + ".") for f in resumable)
    )
    record_uri = paths("run.json")
    if exists(record_uri, storage_options=paths.options):
        run = json.loads(read_bytes(record_uri, storage_options=paths.options))
        if run.get("manifest_sha256") not in (None, _manifest_sha256(cfg)):
            changed.append("data.manifest (its content)")
    if changed:
        shown = ", ".join(
            f"{k} ({before.get(k)!r} -> {now.get(k)!r})" if "(" not in k else k for k in changed[:8]
        )
        raise ConfigError(
            "--resume",
            f"run {paths.root} was made with another config: {shown}"
            + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            + f". Only {', '.join(_outermost(resumable))} may change on resume; start a new run "
            "(another train.name) instead",
        )


def _test_split(cfg: Config) -> str | None:
    from pipelines.data import load_split

    test = cfg.data.test_split
    if test in (cfg.data.train_split, cfg.data.val_split) or not test:
        return None
    return test if not load_split(cfg, test).empty else None


def run_pipeline(cfg: Config, *, resume: bool = False) -> dict[str, Any]:
    """Stage 1 → feature cache → stage 2 → the operating point (``exit.*``: its threshold
    family fitted on the training split, Learn-then-Test on validation; stored in
    ``stage2.pt``) → evaluation on validation and test at it, next to the paper's rule.
    ``resume`` skips finished stages and continues an interrupted one from its last
    checkpoint, after checking the config did not change what the run is
    (:func:`check_resume`); without it the run directory must not exist yet.

    Returns the validation metrics at the operating point (keys of
    :func:`pipelines.evaluate.evaluate`) with ``operating_point`` (its summary),
    ``paper`` (validation at the paper's rule) and, if the manifest has a test split,
    ``test`` and ``test_paper``."""
    from frameexit.config import check_beta

    paths = RunPaths(cfg)
    check_beta(cfg.train.beta, cfg.model.num_steps, multi_label=cfg.model.multi_label)
    if not resume and _non_empty(paths.root, paths.options):
        raise ConfigError(
            "train.name", f"run {paths.root} already exists; resume it or choose another name"
        )
    if resume:
        check_resume(cfg)
    from pipelines.data import load_split

    load_split(cfg, cfg.data.train_split)  # the manifest's classes fit the model: before Ray
    # one job per run name: a second submission refuses while this one holds the lease
    lease = Lease(
        paths.root, paths.options, seconds=cfg.train.lease_seconds, what="training job",
        field="train.name",
    )  # fmt: skip
    with lease:
        return _run(cfg, paths, lease, resume=resume)


def _run(cfg: Config, paths: RunPaths, lease: Lease, *, resume: bool) -> dict[str, Any]:
    """:func:`run_pipeline` while holding the run's lease (``lease.check()`` before each
    stage and each write of results: a job that lost it stops there)."""
    from frameexit.checkpoint import load_model_checkpoint, store_operating_point
    from frameexit.operating_point import paper_threshold, summary
    from pipelines.evaluate import calibrate_on_cache, read_cache_outputs

    ensure_ray(cfg)
    check_storage(cfg)  # a multi-node cluster needs train.storage every node sees
    lease.check()
    write_config(cfg)
    record_uri = paths("run.json")
    if not exists(record_uri, storage_options=paths.options):
        record = {"manifest": cfg.data.manifest, "manifest_sha256": _manifest_sha256(cfg)}
        write_text(record_uri, json.dumps(redact(record)), storage_options=paths.options)
    began = time.perf_counter()
    stage1 = paths.model("stage1")
    if not (resume and exists(stage1, storage_options=paths.options)):
        stage1 = run_stage1(cfg)
    else:
        log.info("stage 1: reusing %s", stage1)
    test = _test_split(cfg)
    splits = list(
        dict.fromkeys([cfg.data.train_split, cfg.data.val_split, *([test] if test else [])])
    )
    lease.check()
    cache = build_feature_cache(cfg, stage1, splits, resume=resume)
    lease.check()
    stage2 = paths.model("stage2")
    if not (resume and exists(stage2, storage_options=paths.options)):
        stage2 = run_stage2(cfg, stage1, cache)
    else:
        log.info("stage 2: reusing %s", stage2)
    # every step's outputs of val and test, read once: calibration and both rules use them
    model, _ = load_model_checkpoint(stage2, storage_options=uri_options(cfg, stage2) or None)
    val = cfg.data.val_split
    outputs = {
        split: read_cache_outputs(model, cache[split], uri_options(cfg, cache[split]))
        for split in dict.fromkeys([val, *([test] if test else [])])
    }
    point = calibrate_on_cache(
        cfg, stage2, cache, shape_split=cfg.data.train_split, split=val, held=outputs[val]
    )
    lease.check()
    store_operating_point(stage2, point, storage_options=paths.options)
    tau = paper_threshold(cfg.model)
    metrics = evaluate(cfg, stage2, cache, operating_point=point, outputs=outputs[val])
    metrics["operating_point"] = summary(point, metrics["gflops_per_step"])
    metrics["paper"] = evaluate(
        cfg, stage2, cache, threshold=tau, out=paths("eval", "paper"), plots=False,
        outputs=outputs[val],
    )  # fmt: skip
    if test:
        metrics["test"] = evaluate(
            cfg, stage2, cache, split=test, operating_point=point, out=paths("eval", test),
            outputs=outputs[test],
        )  # fmt: skip
        metrics["test_paper"] = evaluate(
            cfg, stage2, cache, split=test, threshold=tau, out=paths("eval", f"{test}-paper"),
            plots=False, outputs=outputs[test],
        )  # fmt: skip
    _track_results(cfg, metrics)
    skipped = finish_skipped(cfg)
    metrics["skipped_videos"] = int(len(skipped))
    metrics["pipeline_seconds"] = time.perf_counter() - began
    metrics["run"] = paths.root
    lease.check()
    write_text(
        paths("eval", "summary.json"), json.dumps(metrics, indent=1, default=str),
        storage_options=paths.options,
    )  # fmt: skip
    return metrics


def _track_results(cfg: Config, metrics: dict[str, Any]) -> None:
    """The evaluation in the run's tracking (TensorBoard/MLflow), per split."""
    if not cfg.train.tracking:
        return
    from pipelines.tracking import Tracker

    paths = RunPaths(cfg)
    tracker = Tracker(
        paths.root, list(cfg.train.tracking), mlflow_uri=cfg.train.mlflow_uri,
        run_name=cfg.train.name, options=paths.options,
    )  # fmt: skip
    try:
        tracker.log(f"eval/{metrics['split']}", metrics, step=0)
        tracker.log(
            "eval/operating_point",
            {k: v for k, v in metrics["operating_point"].items() if isinstance(v, int | float)},
            step=0,
        )
        if "test" in metrics:
            tracker.log(f"eval/{metrics['test']['split']}", metrics["test"], step=0)
    except Exception as error:  # noqa: BLE001 - tracking never fails a run
        log.warning("tracking the evaluation failed: %s", error)
    finally:
        tracker.close()


def _non_empty(uri: str, options: dict[str, Any]) -> bool:
    """Whether a run directory exists and holds anything."""
    fs, path = url_to_fs(uri, options)
    if not fs.exists(path):
        return False
    return bool(fs.ls(path)) if fs.isdir(path) else True
