"""Ray Data ingestion: a manifest becomes a stream of decoded, transformed training examples.

::

    manifest (driver: URIs + labels only)
      │  from_pandas, one small block per `rows_per_block` videos
      │  (training: randomize_block_order, reseeded every epoch)
      ▼
    map_batches(DecodeVideos)           Ray Data tasks, `data.decode_concurrency` at once
      │  per video: open URI (local or s3://) ─► N ─► policy(N, T) indices ─► decord
      │  decodes only those T frames (or clips) ─► frames_to_tensor (resize, crop,
      │  normalise; training: random crop + flip) ─► float16 [T, 3, S, S]
      │  a video that fails is left out and logged to {run}/skipped/ (never fatal)
      ▼
    {"frames": [T,3,S,S] f16, "target": int64 | [K] f32, "video": str, "row": int64}
      │
      └─► Ray Train: get_dataset_shard("train").iter_torch_batches(...)   (stage 1)
      └─► map_batches(FeatureExtractor) ─► Parquet feature cache          (stage 2)

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
import secrets
import uuid
from typing import Any

import numpy as np
import pandas as pd

from frameexit.config import Config
from frameexit.errors import VideoDecodeError
from frameexit.sampling import open_window, read_steps, step_indices, video_input_shape
from frameexit.storage import join_uri, list_files, options_for, read_parquet, write_parquet

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
    loaded = load_manifest(cfg.data.manifest, storage_options=options)
    table = loaded.table
    if len(loaded.bad_rows):
        log.warning("%s: %d bad manifest rows ignored", cfg.data.manifest, len(loaded.bad_rows))
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
    ) -> None:
        from frameexit.backbones import backbone_spec
        from frameexit.policy import get_policy

        self.cfg = cfg
        self.split = split
        self.train = train and cfg.data.augment
        self.skip_dir = skip_dir
        self.policy = get_policy(cfg.model.policy)
        spec = backbone_spec(cfg.model.backbone)
        self.mean, self.std = spec.mean, spec.std

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        import torch

        from frameexit.transforms import frames_to_tensor

        m = self.cfg.model
        out: dict[str, list] = {
            "row": [],
            "video": [],
            "target": [],
            "frames": [],
            "num_frames": [],
        }
        failures = []
        generator = torch.Generator().manual_seed(secrets.randbits(62)) if self.train else None
        for row in batch.itertuples(index=False):
            try:
                raw, num_frames = self._decode(str(row.video), row.start, row.end)
            except (VideoDecodeError, OSError, RuntimeError, ValueError) as error:
                failures.append(_failure(str(row.video), self.split, error))
                continue
            frames = frames_to_tensor(
                raw,
                image_size=m.image_size,
                mean=self.mean,
                std=self.std,
                train=self.train,
                generator=generator,
            )
            out["row"].append(int(row.row))
            out["video"].append(str(row.video))
            out["target"].append(_target(row.label_ids, m.num_classes, m.multi_label))
            out["frames"].append(frames.numpy().astype(FRAME_DTYPE))
            out["num_frames"].append(num_frames)
        if failures:
            self._log_failures(failures)
        return _stack(out, self.cfg)

    def _decode(self, uri: str, start: float, end: float) -> tuple[np.ndarray, int]:
        """The policy's T frames (or clips) of the video, or of its [start, end) segment."""
        from frameexit.video import open_video

        d, m = self.cfg.data, self.cfg.model
        with open_video(
            uri,
            storage_options=options_for(uri, d.storage_options) or None,
            timeout_s=d.decode_timeout_s,
            backend=d.decode_backend,
        ) as reader:
            window = open_window(reader, uri, start, end)
            indices = step_indices(window, self.policy, m.num_steps)
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
    batch: pd.DataFrame, *, cfg: Config, split: str, train: bool, skip_dir: str | None
) -> dict[str, np.ndarray]:
    """Ray Data task body: :class:`DecodeVideos` on one block of manifest rows."""
    return DecodeVideos(cfg, split, train=train, skip_dir=skip_dir)(batch)


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
    """Ray Data execution options that bound the pipeline's object-store use."""
    from ray.data import ExecutionOptions, ExecutionResources

    return ExecutionOptions(
        resource_limits=ExecutionResources(object_store_memory=object_store_budget(cfg))
    )


def video_dataset(
    cfg: Config,
    split: str,
    *,
    train: bool,
    skip_dir: str | None = None,
    limit: int | None = None,
    decode_cpus: float = 1.0,
):
    """A lazy Ray Dataset of decoded examples of ``split`` (see the module docstring).

    ``train=True`` shuffles block order every epoch and applies augmentation (if
    ``data.augment``). ``skip_dir`` receives the list of videos that failed to decode.
    """
    import ray

    rows = load_split(cfg, split, limit=limit)
    if rows.empty:
        raise ValueError(f"{cfg.data.manifest}: split {split!r} has no videos")
    per_block = rows_per_block(cfg)
    blocks = [rows.iloc[i : i + per_block] for i in range(0, len(rows), per_block)]
    ds = ray.data.from_pandas(blocks)
    if train:
        from ray.data import RandomSeedConfig

        ds = ds.randomize_block_order(
            seed=RandomSeedConfig(seed=cfg.train.seed, reseed_after_execution=True)
        )
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"cfg": cfg, "split": split, "train": train, "skip_dir": skip_dir},
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
