"""The stages of a training run, each reusable on its own (tuning calls them directly).

::

    run_stage1(cfg)                          ─► {run}/checkpoints/stage1.pt
       Ray Data decode ─► Ray Train DDP (L_cls), checkpoint every epoch in {run}/ray/stage1
    build_feature_cache(cfg, stage1, splits) ─► {split: {run}/features/{split}}
       Ray Data batch inference, once per video: z_1..z_T, logits, per-step losses
    run_stage2(cfg, stage1, cache)           ─► {run}/checkpoints/stage2.pt
       Ray Train DDP on the cache (L_gate, gates only; the backbone never runs)
    evaluate(cfg, stage2, cache)             ─► metrics dict; {run}/eval/  (pipelines.evaluate)
    run_pipeline(cfg, resume=...)            all of it; on resume finished stages are skipped

Stage 1 runs once per (backbone, T); stage 2 and evaluation once per β on the same cache.
Calling a stage again on the same run continues its Ray Train run from the last
checkpoint (Ray Train resumes by run name + storage path).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from frameexit.config import Config, config_from_dict, config_to_dict
from frameexit.errors import ConfigError
from frameexit.storage import (
    exists,
    join_uri,
    list_files,
    options_for,
    pyarrow_filesystem,
    redact,
    remove,
    url_to_fs,
    write_text,
)
from pipelines.common import RunPaths, ensure_ray
from pipelines.data import collect_skipped, ingest_options, training_columns, video_dataset
from pipelines.evaluate import evaluate

log = logging.getLogger("frameexit.pipelines")

FAULT_ENV = "FRAMEEXIT_INJECT_FAULT"  # test hook: "STAGE:EPOCH[:MARKER]", see loops._maybe_fail


# --- config hygiene -------------------------------------------------------------------


def redacted(cfg: Config) -> Config:
    """A copy of ``cfg`` without credentials (what gets written to config.yaml/checkpoints)."""
    return config_from_dict(redact(config_to_dict(cfg)))


def write_config(cfg: Config) -> str:
    """Write the resolved (redacted) config next to the run's outputs; return its URI."""
    import yaml

    paths = RunPaths(cfg)
    text = yaml.safe_dump(config_to_dict(redacted(cfg)), sort_keys=False)
    write_text(paths.config, text, storage_options=paths.options)
    return paths.config


def _fault(stage: int) -> dict[str, Any] | None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    parts = spec.split(":", 2)
    if int(parts[0]) != stage:
        return None
    return {"stage": stage, "epoch": int(parts[1]), "marker": parts[2] if len(parts) > 2 else None}


# --- Ray Train ------------------------------------------------------------------------


def _fit(cfg: Config, loop, name: str, loop_config: dict[str, Any], datasets: dict[str, Any]):
    """One TorchTrainer run under {run}/ray/{name}; returns the ray.train Result."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    paths = RunPaths(cfg)
    storage_fs, storage_path = pyarrow_filesystem(paths.ray, paths.options)
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
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
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ingest_options(cfg)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: Ray Train finished without a checkpoint")
    return result


def run_stage1(cfg: Config) -> str:
    """Stage 1 (backbone + projection + classifiers, L_cls) with Ray Train; returns the
    URI of the final model ``{run}/checkpoints/stage1.pt``."""
    from frameexit.checkpoint import model_from_state, save_model_checkpoint
    from pipelines.loops import read_state, stage1_loop

    ensure_ray(cfg)
    paths = RunPaths(cfg)
    began = time.perf_counter()
    train = video_dataset(
        cfg,
        cfg.data.train_split,
        train=True,
        skip_dir=paths.skipped_parts,
    )
    log.info(
        "stage 1: %d epochs, %d workers -> %s",
        cfg.train.stage1.epochs,
        cfg.train.num_workers,
        paths("ray", "stage1"),
    )
    result = _fit(
        cfg,
        stage1_loop,
        "stage1",
        {"cfg": config_to_dict(cfg), "fault": _fault(1)},
        {"train": training_columns(train)},
    )
    state = read_state(result.checkpoint)
    model = model_from_state(cfg.model, state["model"], source="stage 1's last checkpoint")
    uri = paths.model("stage1")
    save_model_checkpoint(
        model,
        redacted(cfg),
        uri,
        storage_options=paths.options,
        extra={"stage": 1, "epochs": int(state["epoch"]), **_scalars(state.get("metrics"))},
    )
    _finish_skipped(cfg)
    log.info(
        "stage 1 done in %.0f s (%d epochs): %s", time.perf_counter() - began, state["epoch"], uri
    )
    return uri


def run_stage2(cfg: Config, stage1_uri: str, cache: dict[str, str], *, name: str = "stage2") -> str:
    """Stage 2 (gates only, L_gate with ``train.beta``) on the cached train split; returns
    ``{run}/checkpoints/{name}.pt`` (the stage-1 model with trained gates)."""
    import ray.data

    from frameexit.checkpoint import model_from_state, read_model_checkpoint, save_model_checkpoint
    from pipelines.loops import read_state, stage2_loop

    ensure_ray(cfg)
    paths = RunPaths(cfg)
    began = time.perf_counter()
    cache_uri = cache[cfg.data.train_split]
    fs, path = pyarrow_filesystem(cache_uri, _options(cfg, cache_uri))
    features = ray.data.read_parquet(path, filesystem=fs).select_columns(
        ["features", "step_losses"]
    )
    log.info(
        "stage 2: beta=%g, %d epochs on %s", cfg.train.beta, cfg.train.stage2.epochs, cache_uri
    )
    result = _fit(
        cfg,
        stage2_loop,
        name,
        {
            "cfg": config_to_dict(cfg),
            "stage1_uri": stage1_uri,
            "storage_options": _options(cfg, stage1_uri),
            "fault": _fault(2),
        },
        {"train": features},
    )
    state = read_state(result.checkpoint)
    weights, _, _ = read_model_checkpoint(stage1_uri, storage_options=_options(cfg, stage1_uri))
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
    )
    log.info("stage 2 done in %.0f s: %s", time.perf_counter() - began, uri)
    return uri


# --- feature cache --------------------------------------------------------------------


class FeatureExtractor:
    """Ray Data actor: decoded frames → z_1..z_T, per-step logits and losses (stage-1 model)."""

    def __init__(self, model_uri: str, storage_options: dict[str, Any], use_gpu: bool) -> None:
        import torch

        from frameexit.checkpoint import load_model_checkpoint

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model, self.cfg = load_model_checkpoint(
            model_uri, storage_options=storage_options or None, device=self.device
        )

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        from frameexit.losses import per_step_losses

        with torch.no_grad():
            frames = torch.from_numpy(np.array(batch["frames"])).to(self.device, torch.float32)
            target = torch.from_numpy(np.array(batch["target"])).to(self.device)
            out = self.model(frames)
            losses = per_step_losses(out.logits.float(), target, self.cfg.model.multi_label)
        target_np = np.asarray(batch["target"])
        if self.cfg.model.multi_label:
            label_ids = [np.flatnonzero(row).astype(np.int32) for row in target_np]
        else:
            label_ids = [np.asarray([t], dtype=np.int32) for t in target_np]
        return {
            "video": batch["video"],
            "row": batch["row"],
            "label_ids": _object_column(label_ids),
            "target": target_np,
            "num_frames": batch["num_frames"],
            "features": out.features.float().cpu().numpy(),
            "logits": out.logits.float().cpu().numpy(),
            "step_losses": losses.float().cpu().numpy(),
        }


def _object_column(items: list) -> Any:
    import numpy as np

    column = np.empty(len(items), dtype=object)
    column[:] = items
    return column


def build_feature_cache(
    cfg: Config, model_uri: str, splits: list[str] | tuple[str, ...], *, resume: bool = False
) -> dict[str, str]:
    """Run the stage-1 model once over every video of ``splits`` (Ray Data batch inference)
    and write ``{run}/features/{split}/*.parquet``; returns ``{split: uri}``.

    Per video: ``video, row, label_ids, target, num_frames, features [T, D]`` (pooled
    z_1..z_T), ``logits [T, K]``, ``step_losses [T]``. A split whose ``_SUCCESS`` marker
    exists is reused when ``resume``.
    """
    import ray.data

    ensure_ray(cfg)
    paths = RunPaths(cfg)
    out: dict[str, str] = {}
    for split in splits:
        uri = paths.features(split)
        marker = join_uri(uri, "_SUCCESS")
        if resume and exists(marker, storage_options=paths.options):
            log.info("feature cache %s: reusing %s", split, uri)
            out[split] = uri
            continue
        began = time.perf_counter()
        ds = video_dataset(cfg, split, train=False, skip_dir=paths.skipped_parts)
        ds = ds.map_batches(
            FeatureExtractor,
            fn_constructor_kwargs={
                "model_uri": model_uri,
                "storage_options": _options(cfg, model_uri),
                "use_gpu": cfg.train.use_gpu,
            },
            batch_size=cfg.data.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cfg.train.num_workers)),
            num_cpus=cfg.train.cpus_per_worker,
            num_gpus=1 if cfg.train.use_gpu else 0,
        )
        remove(uri, recursive=True, storage_options=paths.options)
        storage_fs, storage_path = pyarrow_filesystem(uri, paths.options)
        ds.write_parquet(storage_path, filesystem=storage_fs)
        # files, not rows: rows are counted by whoever reads the cache
        count = len(list_files(uri, suffixes=[".parquet"], storage_options=paths.options))
        record = {"split": split, "model": model_uri, "files": int(count)}
        write_text(marker, json.dumps(record), storage_options=paths.options)
        log.info("feature cache %s: %s (%.0f s)", split, uri, time.perf_counter() - began)
        out[split] = uri
    _finish_skipped(cfg)
    return out


# --- evaluation and the whole pipeline ------------------------------------------------


def run_pipeline(cfg: Config, *, resume: bool = False) -> dict[str, Any]:
    """Stage 1 → feature cache → stage 2 → evaluation. ``resume`` skips finished stages
    and continues an interrupted one from its last checkpoint; without it the run
    directory must not exist yet."""
    paths = RunPaths(cfg)
    if not resume and _non_empty(paths.root, paths.options):
        raise ConfigError(
            "train.name", f"run {paths.root} already exists; resume it or choose another name"
        )
    ensure_ray(cfg)
    write_config(cfg)
    began = time.perf_counter()
    stage1 = paths.model("stage1")
    if not (resume and exists(stage1, storage_options=paths.options)):
        stage1 = run_stage1(cfg)
    else:
        log.info("stage 1: reusing %s", stage1)
    splits = list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split]))
    cache = build_feature_cache(cfg, stage1, splits, resume=resume)
    stage2 = paths.model("stage2")
    if not (resume and exists(stage2, storage_options=paths.options)):
        stage2 = run_stage2(cfg, stage1, cache)
    else:
        log.info("stage 2: reusing %s", stage2)
    metrics = evaluate(cfg, stage2, cache)  # pipelines.evaluate
    skipped = _finish_skipped(cfg)
    metrics["skipped_videos"] = int(len(skipped))
    metrics["pipeline_seconds"] = time.perf_counter() - began
    metrics["run"] = paths.root
    return metrics


# --- small helpers --------------------------------------------------------------------


def _finish_skipped(cfg: Config):
    paths = RunPaths(cfg)
    table = collect_skipped(paths.skipped_parts, paths.skipped, paths.options)
    if len(table):
        log.warning("%d videos skipped (failed to decode): %s", len(table), paths.skipped)
    return table


def _options(cfg: Config, uri: str) -> dict[str, Any]:
    return options_for(uri, cfg.data.storage_options)


def _non_empty(uri: str, options: dict[str, Any]) -> bool:
    """Whether a run directory exists and holds anything."""
    fs, path = url_to_fs(uri, options)
    if not fs.exists(path):
        return False
    return bool(fs.ls(path)) if fs.isdir(path) else True


def _scalars(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {f"final_{k}": v for k, v in (metrics or {}).items() if isinstance(v, int | float | str)}
