"""What every Ray entry point shares: the run layout, URIs, filesystems, connecting to Ray.

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

import fsspec

from frameexit.config import Config

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


# --- URIs -----------------------------------------------------------------------------


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    return "://" in uri and not uri.startswith("file://")


def absolute_uri(uri: str) -> str:
    """Local paths become absolute (Ray workers may run in another directory)."""
    if is_remote(uri):
        return uri.rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (works for local paths and ``s3://``)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def storage_options(cfg: Config, uri: str) -> dict[str, Any]:
    """fsspec options for ``uri``: ``data.storage_options`` for remote URIs, none locally."""
    return dict(cfg.data.storage_options) if is_remote(uri) else {}


def filesystem(
    uri: str, options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fsspec filesystem, path)`` of a URI."""
    return fsspec.core.url_to_fs(uri, **(options or {}))


def exists(uri: str, options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.exists(path)


def pyarrow_filesystem(uri: str, options: dict[str, Any] | None = None):
    """``(pyarrow filesystem or None, path)`` for Ray Train storage and Ray Data I/O.

    Local paths need none (``None``, absolute path). Remote URIs are served by their
    fsspec filesystem wrapped for pyarrow, so exactly the credentials and endpoint that
    ``storage_options`` give fsspec are used by Ray too (and the object pickles to workers).
    """
    if not is_remote(uri):
        return None, absolute_uri(uri)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(uri, options)
    return PyFileSystem(FSSpecHandler(fs)), path


class RunPaths:
    """URIs of one run (see the module docstring)."""

    def __init__(self, cfg: Config) -> None:
        self.root = join(absolute_uri(cfg.train.storage), cfg.train.name)
        self.options = storage_options(cfg, self.root)

    def __call__(self, *parts: str) -> str:
        return join(self.root, *parts)

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
