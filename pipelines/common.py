"""What every Ray entry point shares: the run layout, logging, connecting to Ray.

Run layout under ``{train.storage}/{train.name}/`` (any fsspec URI, see docs/API.md)::

    config.yaml               resolved config of the run
    checkpoints/stage1.pt     final models (frameexit.checkpoint format)
    checkpoints/stage2.pt
    ray/stage1/, ray/stage2/  Ray Train's run directories (per-epoch checkpoints)
    features/{split}/         stage-2 feature cache (Parquet), `_SUCCESS` when complete
    eval/                     metrics.json, Parquet tables, PNG plots
    skipped/                  one small Parquet per decode task that skipped videos
    skipped_videos.parquet    all of them, merged (video, split, kind, reason, count)

Credentials: ``data.storage_options`` (s3fs keyword arguments, e.g.
``{"client_kwargs": {"endpoint_url": ...}, "key": ..., "secret": ...}``) apply to every
``s3://`` URI of the run — videos, manifest and run storage; without them the standard
AWS sources (environment, ``~/.aws``, instance role) are used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from frameexit.config import Config
from frameexit.storage import absolute_uri, join_uri, options_for

log = logging.getLogger("frameexit.pipelines")

# Environment every Ray process of ours gets: no usage stats, fail fast on a Ray Data stall
# (RAY_NOTES.md: a starved pipeline otherwise waits 30 min), no V2 migration warnings.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "300",
}


def setup_logging() -> None:
    """INFO logs of this package on stderr (entry points call it once)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("frameexit").setLevel(logging.INFO)


class RunPaths:
    """URIs of one run (see the module docstring)."""

    def __init__(self, cfg: Config) -> None:
        self.root = join_uri(absolute_uri(cfg.train.storage), cfg.train.name)
        self.options = options_for(self.root, cfg.data.storage_options)

    def __call__(self, *parts: str) -> str:
        return join_uri(self.root, *parts)

    @property
    def config(self) -> str:
        return self("config.yaml")

    def model(self, name: str) -> str:
        return self("checkpoints", f"{name}.pt")

    def features(self, split: str) -> str:
        return self("features", split)

    @property
    def ray(self) -> str:
        return self("ray")

    @property
    def eval(self) -> str:
        return self("eval")

    @property
    def skipped_parts(self) -> str:
        return self("skipped")

    @property
    def skipped(self) -> str:
        return self("skipped_videos.parquet")


# --- Ray ------------------------------------------------------------------------------


def ensure_ray(
    cfg: Config | None = None,
    *,
    object_store_mb: int | None = None,
    cpus_needed: float | None = None,
) -> None:
    """Connect to Ray: the running cluster (``RAY_ADDRESS``, e.g. under ``ray job submit``)
    or, when there is none, a local instance sized for ``cfg``.

    Locally we declare at least ``cpus_needed`` (default: training's
    ``num_workers × cpus_per_worker + decode_concurrency``) logical CPUs plus one: on a
    2-core machine two Train workers would otherwise leave nothing for the Ray Data
    decode tasks and the run would hang (RAY_NOTES.md).
    """
    import ray

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": dict(RAY_ENV)}, log_to_driver=True)
        return
    need = 2.0 if cpus_needed is None else cpus_needed
    if cfg is not None and cpus_needed is None:
        need = cfg.train.num_workers * cfg.train.cpus_per_worker + cfg.data.decode_concurrency
    num_cpus = max(os.cpu_count() or 1, int(need + 0.999) + 1)
    kwargs: dict[str, Any] = {}
    if object_store_mb:
        kwargs["object_store_memory"] = object_store_mb * 1024**2
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": dict(RAY_ENV)},
        log_to_driver=True,
        **kwargs,
    )
