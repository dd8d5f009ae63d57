"""Ray Data ingestion: a manifest becomes a stream of decoded, transformed training examples.

::

    manifest (driver: URIs + labels only)
      │  from_pandas, one small block per `rows_per_block` videos
      │  (training: every epoch a row-level permutation seeded by (train.seed, epoch),
      │  then cut into blocks — any manifest order, class-sorted included)
      ▼
    map_batches(DecodeVideos)           Ray Data tasks, `data.decode_concurrency` at once
      │  per video: open URI (local or s3://) ─► N ─► policy(N, T) indices (random
      │  policies: a per-video, per-epoch seed) ─► decode only those T frames (or clips)
      │  ─► frames_to_tensor (resize, crop, normalise; training: random crop + flip from
      │  the same seed) ─► float16 [T, 3, S, S]
      │  a video that fails is left out and logged to {run}/skipped/ (never fatal)
      ▼
    {"frames": [T,3,S,S] f16, "target": int64 | [K] f32, "video": str, "row": int64}
      │
      └─► Ray Train: get_dataset_shard("train").iter_torch_batches(...)   (stage 1)
      └─► map_batches(FeatureExtractor) ─► Parquet feature cache  (stage 2, pipelines.features)

Streaming, bounded memory: nothing but the manifest is ever materialised. Object-store
use is bounded by (1) ``ingest_options``: ``resource_limits.object_store_memory`` =
:func:`object_store_budget` — Ray Data stops launching decode tasks while their queued
output exceeds it (backpressure) — plus (2) at most ``decode_concurrency`` running tasks
of one block each (``rows_per_block`` videos × T × 3 × S² × 2 bytes), plus (3) each
consumer's prefetch (``prefetch_batches=1`` batch). At 112 px, T = 10 one video is
0.75 MB, so the default bound is a few hundred MB whatever the corpus size.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import numpy as np
import pandas as pd

from frameexit.config import Config
from frameexit.errors import VideoDecodeError
from frameexit.sampling import open_window, read_steps, step_indices, video_input_shape
from frameexit.storage import join_uri, list_files, options_for, read_parquet, write_parquet
from pipelines.common import shared, unshared

log = logging.getLogger("frameexit.pipelines.data")

FRAME_DTYPE = np.float16  # normalised pixels; halves object-store traffic vs float32
MIN_BUDGET = 256 * 1024**2


# --- manifest -------------------------------------------------------------------------


def load_split(cfg: Config, split: str, *, limit: int | None = None) -> pd.DataFrame:
    """The manifest rows of ``split``: ``row, video, label_ids, num_frames, start, end``
    (driver side). Only metadata lives here (a few hundred bytes per video), never frames.
    """
    from frameexit.manifests import load_manifest

    options = options_for(cfg.data.manifest, cfg.data.storage_options) or None
    loaded = load_manifest(
        cfg.data.manifest, storage_options=options, allowed_prefixes=cfg.data.allowed_prefixes,
        allow_http=cfg.data.allow_http,
    )  # fmt: skip
    check_classes(cfg, loaded)
    table = loaded.table
    if len(loaded.bad_rows):
        log.warning("%s: %d bad manifest rows ignored", cfg.data.manifest, len(loaded.bad_rows))
    if "status" in table.columns:  # a `frameexit check` output: never meet what it refused
        unusable = table["status"].astype(str) != "ok"
        if unusable.any():
            log.info("%s: %d videos the check found unusable left out", cfg.data.manifest,
                     int(unusable.sum()))  # fmt: skip
        table = table[~unusable]
    rows = table.index[table["split"] == split]
    frame = pd.DataFrame(
        {
            "row": np.asarray(rows, dtype=np.int64),
            "video": table.loc[rows, "video"].astype(str).to_numpy(),
            "label_ids": [list(map(int, ids)) for ids in table.loc[rows, "label_ids"]],
            "num_frames": _num_frames(table.loc[rows]),
            "start": _seconds(table.loc[rows], "start"),
            "end": _seconds(table.loc[rows], "end"),
        }
    )
    if limit is not None:
        frame = frame.iloc[:limit]
    return frame.reset_index(drop=True)


def check_classes(cfg: Config, loaded: Any) -> None:
    """Refuse a ``model.num_classes`` that does not fit the manifest ``loaded`` (a
    ``ManifestLoad``) on the driver, before any worker starts: every label id and every
    class of the class map must be below it. Otherwise single-label training fails in
    every worker (``Target 399 is out of bounds``, retried, exit 3) and multi-label
    training silently drops the ids ≥ K from its targets. A class map smaller than the
    model (a class without videos, a map built from a subset's rows) is allowed."""
    from frameexit.errors import ConfigError

    declared = cfg.model.num_classes
    named = len(loaded.class_names)
    ids = [int(i) for labels in loaded.table.get("label_ids", ()) for i in labels]
    top = max(ids, default=-1)
    if named > declared or top >= declared:
        have = f"{named} classes (ids 0..{named - 1}" if named else "no class map (ids"
        raise ConfigError(
            "model.num_classes",
            f"is {declared}, but the manifest {cfg.data.manifest} has {have}, max label id "
            f"{top}); set model.num_classes={max(named, top + 1)}",
        )


def _seconds(rows: pd.DataFrame, column: str) -> np.ndarray:
    """Segment bound in seconds, NaN where the whole file is used."""
    if column not in rows:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64)


def _num_frames(rows: pd.DataFrame) -> np.ndarray:
    if "num_frames" not in rows:
        return np.full(len(rows), -1, dtype=np.int64)
    values = pd.to_numeric(rows["num_frames"], errors="coerce").fillna(-1)
    return values.to_numpy(dtype=np.int64)


# --- decoding (runs inside Ray Data tasks) --------------------------------------------


class DecodeVideos:
    """Map a pandas batch of manifest rows to decoded examples (a plain callable; Ray Data
    runs it in tasks, and tests can call it directly)."""

    def __init__(
        self,
        cfg: Config,
        split: str,
        *,
        train: bool,
        skip_dir: str | None = None,
        views: int = 1,
    ) -> None:
        from frameexit.backbones import backbone_spec
        from frameexit.policy import get_policy

        self.cfg = cfg
        self.views = int(views)
        self.split = split
        self.train = train and cfg.data.augment
        self.skip_dir = skip_dir
        self.policy = get_policy(cfg.model.policy)
        spec = backbone_spec(cfg.model.backbone)
        self.mean, self.std = spec.mean, spec.std

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        import torch

        from frameexit.policy import video_seed
        from frameexit.transforms import frames_to_tensor

        m = self.cfg.model
        out: dict[str, list] = {
            "row": [],
            "video": [],
            "target": [],
            "frames": [],
            "num_frames": [],
            "view": [],
        }
        failures = []
        for row in batch.itertuples(index=False):
            # one seed per video and epoch: random policies and augmentation are
            # reproducible from train.seed, and differ from epoch to epoch
            epoch = getattr(row, "epoch", None)
            epoch = None if epoch is None or epoch < 0 else int(epoch)
            seed = video_seed(self.cfg.train.seed, f"{row.row}:{row.video}", epoch)
            known = int(row.num_frames) if getattr(row, "num_frames", -1) > 0 else None
            try:
                raw, num_frames = self._decode(str(row.video), row.start, row.end, seed, known)
            except (VideoDecodeError, OSError, RuntimeError, ValueError) as error:
                failures.append(_failure(str(row.video), self.split, error))
                continue
            for view in range(self.views):  # one row per spatial view (evaluation)
                frames = frames_to_tensor(
                    raw,
                    image_size=m.image_size,
                    mean=self.mean,
                    std=self.std,
                    train=self.train,
                    generator=torch.Generator().manual_seed(seed) if self.train else None,
                    view=(view, self.views),
                )
                out["row"].append(int(row.row))
                out["video"].append(str(row.video))
                out["target"].append(_target(row.label_ids, m.num_classes, m.multi_label))
                out["frames"].append(frames.numpy().astype(FRAME_DTYPE))
                out["num_frames"].append(num_frames)
                out["view"].append(view)
        if failures:
            self._log_failures(failures)
        return _stack(out, self.cfg)

    def _decode(
        self, uri: str, start: float, end: float, seed: int, known: int | None = None
    ) -> tuple[np.ndarray, int]:
        """The policy's T frames (or clips) of the video, or of its [start, end) segment
        (``known``: the frame count a checked manifest measured)."""
        from frameexit.video import open_video

        m, d = self.cfg.model, self.cfg.data
        with open_video(uri, d.decode, storage_options=d.storage_options) as reader:
            window = open_window(reader, uri, start, end, known_frames=known)
            indices = step_indices(window, self.policy, m.num_steps, seed=seed)
            return read_steps(reader, indices, m.clip_length), window.num_frames

    def _log_failures(self, failures: list[dict[str, str]]) -> None:
        for item in failures:
            log.warning("skipping %s: %s: %s", item["video"], item["kind"], item["reason"])
        if self.skip_dir is None:
            return
        uri = join_uri(self.skip_dir, f"{uuid.uuid4().hex}.parquet")
        options = options_for(uri, self.cfg.data.storage_options)
        write_parquet(uri, pd.DataFrame(failures), storage_options=options)


def decode_batch(
    batch: pd.DataFrame,
    *,
    cfg: Config,
    split: str,
    train: bool,
    skip_dir: str | None,
    views: int = 1,
) -> dict[str, np.ndarray]:
    """Ray Data task body: :class:`DecodeVideos` on one block of manifest rows (``cfg`` may
    come as :func:`pipelines.common.shared`)."""
    return DecodeVideos(unshared(cfg), split, train=train, skip_dir=skip_dir, views=views)(batch)


def _failure(video: str, split: str, error: Exception) -> dict[str, str]:
    if isinstance(error, VideoDecodeError):
        kind, reason = error.kind, error.reason
    else:
        kind, reason = "unreadable", f"{type(error).__name__}: {error}"
    return {"video": video, "split": split, "kind": kind, "reason": reason}


def _target(label_ids: Any, num_classes: int, multi_label: bool) -> Any:
    ids = [int(i) for i in label_ids]
    if multi_label:
        hot = np.zeros(num_classes, dtype=np.float32)
        hot[[i for i in ids if 0 <= i < num_classes]] = 1.0
        return hot
    if not ids:
        raise ValueError("single-label video without a label")
    return ids[0]


def example_shape(cfg: Config) -> tuple[int, ...]:
    """Shape of one video's ``frames``: ``[T, 3, S, S]`` or ``[T, 3, k, S, S]`` for clips."""
    m = cfg.model
    return video_input_shape(m.image_size, m.clip_length, m.num_steps)


def _stack(out: dict[str, list], cfg: Config) -> dict[str, np.ndarray]:
    m = cfg.model
    n = len(out["row"])
    frames = np.stack(out["frames"]) if n else np.zeros((0, *example_shape(cfg)), dtype=FRAME_DTYPE)
    if m.multi_label:
        target = np.stack(out["target"]) if n else np.zeros((0, m.num_classes), np.float32)
    else:
        target = np.asarray(out["target"], dtype=np.int64)
    return {
        "row": np.asarray(out["row"], dtype=np.int64),
        "video": np.asarray(out["video"], dtype=object),
        "target": target,
        "frames": frames,
        "num_frames": np.asarray(out["num_frames"], dtype=np.int64),
        "view": np.asarray(out["view"], dtype=np.int64),
    }


# --- the dataset ----------------------------------------------------------------------


def rows_per_block(cfg: Config) -> int:
    """Videos per decode task: small enough to stream, large enough to amortise a task."""
    return max(1, min(cfg.data.batch_size, 8))


def example_bytes(cfg: Config) -> int:
    return int(np.prod(example_shape(cfg))) * np.dtype(FRAME_DTYPE).itemsize


def object_store_budget(cfg: Config) -> int:
    """Object-store bytes the ingest pipeline may hold: 8 blocks per decode slot, >= 256 MB."""
    block = rows_per_block(cfg) * example_bytes(cfg)
    return max(MIN_BUDGET, 8 * cfg.data.decode_concurrency * block)


def ingest_options(cfg: Config):
    """Ray Data execution options: bounded object-store use, and blocks delivered in the
    permuted order (so each DDP worker gets the same batches in every run with the same
    ``train.seed``: training is reproducible, whatever the task completion order)."""
    from ray.data import ExecutionOptions, ExecutionResources

    return ExecutionOptions(
        resource_limits=ExecutionResources(object_store_memory=object_store_budget(cfg)),
        preserve_order=True,
    )


class EpochClock:
    """Ray actor (``num_cpus=0``): the epoch the training loop is in. Train workers set it
    before they iterate an epoch; the permutation task of that epoch's execution reads
    it, so row order, random policies and augmentation are functions of (train.seed,
    epoch) — the same after a resume as in an uninterrupted run."""

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get(self) -> int:
        return self.epoch


def start_epoch_clock(name: str) -> Any:
    """The named :class:`EpochClock` of one run (created, or found if it exists)."""
    import ray

    return (
        ray.remote(num_cpus=0, max_restarts=-1)(EpochClock)
        .options(name=name, get_if_exists=True)
        .remote()
    )


def set_epoch(name: str | None, epoch: int) -> None:
    """Tell the run's epoch clock (if any) that ``epoch`` starts now."""
    if name:
        import ray

        ray.get(ray.get_actor(name).set.remote(epoch))


def permute_rows(batch: pd.DataFrame, *, seed: int, clock: str | None) -> pd.DataFrame:
    """All manifest rows of a split in the order of this epoch (a permutation seeded by
    ``(seed, epoch)`` of the rows sorted by video, whatever the manifest's order), with an
    ``epoch`` column for per-video seeds downstream."""
    epoch = 0
    if clock:
        import ray

        epoch = int(ray.get(ray.get_actor(clock).get.remote()))
    # canonical order first (by video and segment), so the epoch's order depends on the
    # set of videos and (seed, epoch) only: a class-sorted manifest trains on exactly the
    # batches a shuffled one does
    canonical = batch.sort_values(["video", "start", "end"], kind="stable", na_position="first")
    order = np.random.default_rng([int(seed), epoch]).permutation(len(canonical))
    return canonical.iloc[order].assign(epoch=np.int64(epoch)).reset_index(drop=True)


def video_dataset(
    cfg: Config,
    split: str,
    *,
    train: bool,
    skip_dir: str | None = None,
    limit: int | None = None,
    decode_cpus: float = 1.0,
    clock: str | None = None,
    views: int = 1,
):
    """A lazy Ray Dataset of decoded examples of ``split`` (see the module docstring).

    ``train=True``: every epoch the rows are permuted (row level, whatever the manifest's
    order: Kinetics CSVs are sorted by class) before they are cut into decode blocks,
    with the epoch read from the run's :class:`EpochClock` ``clock`` (epoch 0 without
    one), and augmentation applies (if ``data.augment``). Without: ``views = V`` gives V
    rows per video, one per spatial crop (column ``view``; see ``frames_to_tensor``).
    ``skip_dir`` receives the list of videos that failed to decode.
    """
    import ray

    rows = load_split(cfg, split, limit=limit)
    if rows.empty:
        raise ValueError(f"{cfg.data.manifest}: split {split!r} has no videos")
    per_block = rows_per_block(cfg)
    num_blocks = max(1, math.ceil(len(rows) / per_block))
    if train:
        # the manifest is small (a few hundred bytes a video): one task permutes it all,
        # then it is cut into decode blocks so decoding runs in parallel
        ds = ray.data.from_pandas([rows]).map_batches(
            permute_rows,
            fn_kwargs={"seed": cfg.train.seed, "clock": clock},
            batch_size=None,
            batch_format="pandas",
            num_cpus=0.1,
        )
        ds = ds.repartition(num_blocks)
    else:
        blocks = [rows.iloc[i : i + per_block] for i in range(0, len(rows), per_block)]
        ds = ray.data.from_pandas(blocks)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "cfg": shared(cfg),
            "split": split,
            "train": train,
            "skip_dir": skip_dir,
            "views": int(views),
        },
        batch_size=per_block,
        batch_format="pandas",
        num_cpus=decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=cfg.data.decode_concurrency),
    )
    ds.context.execution_options = ingest_options(cfg)
    return ds


def training_columns(ds):
    """Only the tensor columns a training loop needs (strings break iter_torch_batches)."""
    return ds.select_columns(["frames", "target"])


# --- skipped videos -------------------------------------------------------------------


def collect_skipped(
    skip_dir: str, out_uri: str, options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Merge the per-task skip logs under ``skip_dir`` into ``out_uri`` (one row per video:
    ``video, split, kind, reason, count`` where ``count`` = how often it was attempted)."""
    try:
        parts = list_files(
            skip_dir, suffixes=[".parquet"], recursive=False, storage_options=options
        )
    except FileNotFoundError:
        parts = []
    frames = [read_parquet(p, storage_options=options).to_pandas() for p in parts]
    columns = ["video", "split", "kind", "reason"]
    if frames:
        merged = pd.concat(frames, ignore_index=True)
        table = (
            merged.groupby(["video", "split"], sort=True)
            .agg(kind=("kind", "last"), reason=("reason", "last"), count=("kind", "size"))
            .reset_index()
        )
    else:
        table = pd.DataFrame({c: pd.Series(dtype=str) for c in columns}).assign(
            count=pd.Series(dtype=np.int64)
        )
    write_parquet(out_uri, table, storage_options=options)
    return table
