"""The stages of a training run, each reusable on its own (tuning calls them directly).

::

    run_stage1(cfg)                          ─► {run}/checkpoints/stage1.pt
       Ray Data decode ─► Ray Train DDP (L_cls), checkpoint every epoch in {run}/ray/stage1
    build_feature_cache(cfg, stage1, splits) ─► {split: {run}/features/{split}}
       Ray Data batch inference, once per video: z_1..z_T, logits, per-step losses
       (pipelines.features)
    run_stage2(cfg, stage1, cache)           ─► {run}/checkpoints/stage2.pt
       Ray Train DDP on the cache (L_gate, gates only; the backbone never runs)
    evaluate(cfg, stage2, cache)             ─► metrics dict; {run}/eval/  (pipelines.evaluate)
    run_pipeline(cfg, resume=...)            all of it (pipelines.pipeline); on resume finished
                                             stages are skipped

Stage 1 runs once per (backbone, T); stage 2 and evaluation once per β on the same cache.
Calling a stage again on the same run continues its Ray Train run from the last
checkpoint (Ray Train resumes by run name + storage path).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from frameexit.config import (
    Config,
    redacted,
    save_config,
)
from frameexit.storage import (
    exists,
    pyarrow_filesystem,
)
from frameexit.testing import hooks
from pipelines.common import RunPaths, ensure_ray, shared, uri_options, verbose
from pipelines.data import (
    ingest_options,
    training_columns,
    video_dataset,
)
from pipelines.features import finish_skipped

log = logging.getLogger("frameexit.pipelines")


def write_config(cfg: Config) -> str:
    """Write the resolved config (credentials masked) next to the run's outputs."""
    paths = RunPaths(cfg)
    return save_config(cfg, paths.config, storage_options=paths.options)


def _fault(stage: int) -> dict[str, Any] | None:
    """The test hook ``train.fail_after_epoch`` (frameexit.testing.hooks) for ``stage``."""
    spec = hooks.value("train.fail_after_epoch")
    if not spec:
        return None
    parts = str(spec).split(":", 2)
    if int(parts[0]) != stage:
        return None
    return {"stage": stage, "epoch": int(parts[1]), "marker": parts[2] if len(parts) > 2 else None}


# --- Ray Train ------------------------------------------------------------------------


def _fit(
    cfg: Config,
    loop,
    name: str,
    loop_config: dict[str, Any],
    datasets: dict[str, Any],
    *,
    stage: str,
):
    """One TorchTrainer run under {run}/ray/{name}; returns the ray.train Result."""
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.tracking import tracking_callback

    paths = RunPaths(cfg)
    storage_fs, storage_path = pyarrow_filesystem(paths.ray, paths.options)
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    callbacks = []
    if t.tracking:
        callbacks.append(
            tracking_callback(
                paths.root,
                stage if name in ("stage1", "stage2") else name,
                list(t.tracking),
                mlflow_uri=t.mlflow_uri,
                run_name=t.name,
                options=paths.options,
            )
        )
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            # Train's per-report dumps and worker-group lines: --verbose only
            logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ingest_options(cfg)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: Ray Train finished without a checkpoint")
    if t.tracking and result.metrics:
        _track_last_report(cfg, stage if name in ("stage1", "stage2") else name, result.metrics)
    return result


def _track_last_report(cfg: Config, stage: str, metrics: dict[str, Any]) -> None:
    """Log the run's last report again from the driver: Ray Train's controller may stop
    before its callback has seen the final report of a fast stage (a step logged twice
    holds the same values)."""
    from pipelines.tracking import Tracker

    paths = RunPaths(cfg)
    t = cfg.train
    tracker = Tracker(
        paths.root, list(t.tracking), mlflow_uri=t.mlflow_uri, run_name=t.name,
        options=paths.options,
    )  # fmt: skip
    try:
        tracker.log(stage, metrics, int(metrics.get("epoch", 0)))
    except Exception as error:  # noqa: BLE001 - tracking never fails a run
        log.warning("tracking %s failed: %s", stage, error)
    finally:
        tracker.close()


def _clock_name(paths: RunPaths, stage: str) -> str:
    import hashlib

    return f"frameexit-epoch-{stage}-{hashlib.sha256(paths.root.encode()).hexdigest()[:16]}"


def run_stage1(cfg: Config) -> str:
    """Stage 1 (backbone + projection + classifiers, L_cls) with Ray Train, validated on
    ``data.val_split`` every ``train.val_every`` epochs; returns ``{run}/checkpoints/
    stage1.pt``: the epoch with the best validation metric (top-1, or mAP for multi-label
    data), or the last epoch when there is no validation split. The last epoch is kept as
    ``stage1-last.pt`` either way."""
    import ray

    from frameexit.checkpoint import model_from_state, read_model_checkpoint, save_model_checkpoint
    from pipelines.data import load_split, start_epoch_clock
    from pipelines.loops import read_state, stage1_loop

    ensure_ray(cfg)
    paths = RunPaths(cfg)
    began = time.perf_counter()
    clock = _clock_name(paths, "stage1")
    clock_actor = start_epoch_clock(clock)
    train = video_dataset(
        cfg, cfg.data.train_split, train=True, skip_dir=paths.skipped_parts, clock=clock
    )
    datasets = {"train": training_columns(train)}
    validate = (
        cfg.data.val_split != cfg.data.train_split and not load_split(cfg, cfg.data.val_split).empty
    )
    if validate:
        val = video_dataset(cfg, cfg.data.val_split, train=False, skip_dir=paths.skipped_parts)
        datasets["val"] = training_columns(val)
    best_uri = paths.model("stage1-best")
    names = class_names(cfg)
    log.info(
        "stage 1: %d epochs, %d workers%s -> %s",
        cfg.train.stage1.epochs,
        cfg.train.num_workers,
        f", validating on {cfg.data.val_split!r} every {cfg.train.val_every}" if validate else "",
        paths("ray", "stage1"),
    )
    try:
        result = _fit(
            cfg,
            stage1_loop,
            "stage1",
            {
                "cfg": shared(cfg),
                "fault": _fault(1),
                "clock": clock,
                "validate": validate,
                "best_uri": best_uri if validate else None,
                "storage_options": shared(paths.options),
                "class_names": names,
            },
            datasets,
            stage="stage1",
        )
    finally:
        ray.kill(clock_actor)
    state = read_state(result.checkpoint)
    model = model_from_state(cfg.model, state["model"], source="stage 1's last checkpoint")
    metrics = _scalars(state.get("metrics"))
    last_uri, uri = paths.model("stage1-last"), paths.model("stage1")
    extra = {"stage": 1, "epochs": int(state["epoch"]), **metrics}
    save_model_checkpoint(
        model, redacted(cfg), last_uri, storage_options=paths.options, extra=extra,
        class_names=names,
    )  # fmt: skip
    if validate and exists(best_uri, storage_options=paths.options):
        best, _, best_extra = read_model_checkpoint(best_uri, storage_options=paths.options)
        model = model_from_state(cfg.model, best, source=best_uri)
        extra = {
            **extra,
            "selected_epoch": int(best_extra["epoch"]),
            "selected_by": best_extra["selected_by"],
        }
    else:
        extra = {**extra, "selected_epoch": int(state["epoch"]), "selected_by": "last epoch"}
    save_model_checkpoint(
        model, redacted(cfg), uri, storage_options=paths.options, extra=extra,
        class_names=names,
    )  # fmt: skip
    finish_skipped(cfg)
    log.info(
        "stage 1 done in %.0f s (%d epochs, model of epoch %d by %s): %s",
        time.perf_counter() - began,
        state["epoch"],
        extra["selected_epoch"],
        extra["selected_by"],
        uri,
    )
    return uri


#: a feature-cache split up to this size is read into the object store once for stage 2
CACHE_IN_MEMORY_BYTES = 256 * 1024**2


def _bytes_of(fs: Any, path: str) -> int:
    """Bytes under ``path`` (a pyarrow filesystem, or None for a local path)."""
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def _cache_dataset(cfg: Config, uri: str, columns: list[str], *, shuffle: bool):
    import ray.data
    from ray.data import RandomSeedConfig

    fs, path = pyarrow_filesystem(uri, uri_options(cfg, uri))
    ds = ray.data.read_parquet(path, filesystem=fs).select_columns(columns)
    if _bytes_of(fs, path) <= CACHE_IN_MEMORY_BYTES:
        # read once into the object store: every epoch then streams blocks already in
        # memory instead of starting Parquet reads again (seconds per epoch, more than
        # the gates' compute on a small cache)
        ds = ds.materialize()
    if shuffle:  # the cache follows the manifest's order: mix it every epoch
        ds = ds.randomize_block_order(
            seed=RandomSeedConfig(seed=cfg.train.seed, reseed_after_execution=True)
        )
    return ds


def run_stage2(cfg: Config, stage1_uri: str, cache: dict[str, str], *, name: str = "stage2") -> str:
    """Stage 2 (gates only, L_gate with ``train.beta``) on the cached train split (rows
    shuffled every epoch), with the gate loss and agreement on the cached validation split
    per epoch; returns ``{run}/checkpoints/{name}.pt`` (the stage-1 model with trained
    gates of the last epoch: the gate objective has no task metric to select by; the
    exit threshold is chosen on validation by ``evaluate``)."""
    from frameexit.checkpoint import model_from_state, read_model_checkpoint, save_model_checkpoint
    from pipelines.loops import read_state, stage2_loop

    ensure_ray(cfg)
    paths = RunPaths(cfg)
    began = time.perf_counter()
    cache_uri = cache[cfg.data.train_split]
    columns = ["features", "step_losses"]
    datasets = {"train": _cache_dataset(cfg, cache_uri, columns, shuffle=True)}
    val_uri = cache.get(cfg.data.val_split)
    if val_uri and cfg.data.val_split != cfg.data.train_split:
        datasets["val"] = _cache_dataset(cfg, val_uri, columns, shuffle=False)
    log.info(
        "stage 2: beta=%g, %d epochs on %s", cfg.train.beta, cfg.train.stage2.epochs, cache_uri
    )
    result = _fit(
        cfg,
        stage2_loop,
        name,
        {
            "cfg": shared(cfg),
            "stage1_uri": stage1_uri,
            "storage_options": shared(uri_options(cfg, stage1_uri)),
            "fault": _fault(2),
            "validate": "val" in datasets,
        },
        datasets,
        stage="stage2",
    )
    state = read_state(result.checkpoint)
    weights, _, _ = read_model_checkpoint(stage1_uri, storage_options=uri_options(cfg, stage1_uri))
    model = model_from_state(cfg.model, weights, source=stage1_uri)
    model.gates.load_state_dict(state["model"])
    uri = paths.model(name)
    save_model_checkpoint(
        model,
        redacted(cfg),
        uri,
        storage_options=paths.options,
        extra={
            "stage": 2,
            "epochs": int(state["epoch"]),
            "beta": cfg.train.beta,
            "stage1": stage1_uri,
            **_scalars(state.get("metrics")),
        },
        class_names=class_names(cfg),
    )
    log.info("stage 2 done in %.0f s: %s", time.perf_counter() - began, uri)
    return uri


# --- small helpers --------------------------------------------------------------------


def class_names(cfg: Config) -> list[str] | None:
    """The names of the model's K outputs: the training manifest's class map (padded with
    ``class_<i>`` for outputs no class uses), stored in every checkpoint of the run so
    that ``predict`` and ``label`` name their answers. None, with a warning, when the map
    cannot be read (the checkpoint is still written)."""
    from frameexit.checkpoint import padded_class_names
    from frameexit.errors import FrameExitError
    from frameexit.manifests import load_manifest

    manifest = cfg.data.manifest
    try:
        loaded = load_manifest(
            manifest, storage_options=uri_options(cfg, manifest) or None,
            allowed_prefixes=cfg.data.allowed_prefixes, allow_http=cfg.data.allow_http,
        )  # fmt: skip
        return padded_class_names(
            loaded.class_names, cfg.model.num_classes, source=f"the class map of {manifest}"
        )
    except (FrameExitError, OSError, ValueError) as error:
        log.warning(
            "the checkpoints of this run will carry NO CLASS NAMES (%s); predict and label "
            "will need --classes to name their answers", error,
        )  # fmt: skip
        return None


def _scalars(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {f"final_{k}": v for k, v in (metrics or {}).items() if isinstance(v, int | float | str)}
