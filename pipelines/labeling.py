"""Corpus labeling with early exit: inputs, the model actor, atomic parts, resume.

::

    --input: manifest (any format load_manifest reads) | prefix/directory (listed)
      │  driver: one input row per entry, with a stable ``input_id``;
      │  unparsable manifest rows become rows with status ``bad_manifest_row``
      │  resume: ids already in committed parts are dropped
      ▼
    Ray Data: from_items(blocks) ─► map_batches(VideoLabeler, pool of label.concurrency
      │  actors, label.cpus_per_actor / label.gpus_per_actor each, 2 batches in flight per
      │  actor so one decodes while the other waits on storage or runs the model)
      │  per batch of label.batch_size videos, on a pool of decode threads (decord and
      │  PyAV release the GIL):
      │    open every video once (one GET / local file) ─► N ─► policy(N, T) indices
      │    FrameExit.early_exit(frame_source, B): at step t decode *only* frame π_t of the
      │    videos still running, transform, Φ, Ψ, f_t, g_t; exited videos leave the batch
      │    (compaction) and are never read again; a video that fails at any step gets its
      │    error row (its slot is fed a blank frame and its answer dropped), the rest go on
      ▼
    driver: iter_batches ─► buffer ─► part-<hash of its input ids>.parquet, written to a
            temporary name and renamed (local) or PUT in one request (object stores)

Exactly once. Every input row has an ``input_id`` (the video URI; ``URI#k`` for the k-th
repeat of a URI; ``manifest-line-N`` for a bad manifest row). A part is visible only
when complete (atomic commit), and its name is a hash of the ids it holds, so committing
the same rows twice replaces the file with the same content instead of adding rows. A
rerun reads the ids of the committed parts and labels only the rest, so after any
interruption the output converges to one row per input. :func:`read_labels` reads the
parts (and drops a duplicate id should two writers ever have raced on one output).

Output directory (any fsspec URI)::

    part-<16 hex>.parquet   the rows (schema: ``OUTPUT_SCHEMA``)
    _labeling.json          what produced them (model, exit settings, input); a rerun with
                            different settings refuses to mix rows (use --overwrite)
    _config.yaml            the resolved config
    _summary.json           the last run's summary and totals over all parts

Readers of the directory (pandas, pyarrow, Ray Data) skip ``_``/``.`` files, so
``pd.read_parquet(output)`` gives exactly the rows.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from frameexit.config import Config, config_to_dict, load_config
from frameexit.errors import ConfigError, VideoDecodeError
from pipelines.common import absolute_uri as normalize_uri
from pipelines.common import filesystem as _fs
from pipelines.common import is_remote
from pipelines.common import join as join_uri
from pipelines.common import storage_options as options_for

log = logging.getLogger("frameexit.pipelines.label")

STATUS_OK = "ok"
STATUS_BAD_ROW = "bad_manifest_row"
#: ``ok``, every ``VideoDecodeError.kind``, and ``bad_manifest_row``.
STATUSES: tuple[str, ...] = (STATUS_OK, *VideoDecodeError.KINDS, STATUS_BAD_ROW)

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),  # position of the entry in the input
        pa.field("input_id", pa.string()),  # unique key of the entry (see module doc)
        pa.field("video", pa.string()),  # URI (null for an unparsable manifest row)
        pa.field("status", pa.string()),  # ok | a VideoDecodeError kind | bad_manifest_row
        pa.field("error", pa.string()),  # message (null when ok)
        pa.field("label", pa.string()),  # best label (null if none, e.g. multi-label below thr.)
        pa.field("labels", pa.list_(pa.string())),  # top-k, or all over the threshold
        pa.field("label_ids", pa.list_(pa.int32())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("exit_step", pa.int32()),  # 1-based step that answered (null on error)
        pa.field("frames_decoded", pa.int32()),  # frames actually decoded for this video
        pa.field("num_frames", pa.int32()),  # length of the video (or segment), if opened
        pa.field("gflops", pa.float64()),  # exit_step × per-step cost (0 on error)
    ]
)
INPUT_COLUMNS = ("row", "input_id", "video", "start", "end")
PART_PREFIX = "part-"
FINGERPRINT_NAME = "_labeling.json"
SUMMARY_NAME = "_summary.json"
CONFIG_NAME = "_config.yaml"
#: With a checkpoint the model comes from it; only these inference-time fields may change.
MODEL_INFERENCE_FIELDS = ("exit_threshold", "first_step_threshold", "policy")


# --------------------------------------------------------------------------- inputs


@dataclass
class LabelInputs:
    """What to label: ``videos`` (columns ``INPUT_COLUMNS``) and the rows that are already
    answered without decoding (``bad`` — unparsable manifest rows, ``OUTPUT_SCHEMA``)."""

    videos: pd.DataFrame
    bad: pa.Table
    kind: str  # "manifest" | "listing"
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.videos) + self.bad.num_rows


def _unique_ids(videos: Sequence[str]) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for video in videos:
        seen[video] += 1
        out.append(video if seen[video] == 1 else f"{video}#{seen[video]}")
    return out


def read_inputs(
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    suffixes: Sequence[str] | None = None,
    exclude_prefix: str | None = None,
) -> LabelInputs:
    """Turn ``--input`` into input rows.

    A directory/prefix is listed (every file, recursively, except names starting with
    ``.``, only ``suffixes`` if given, never anything under ``exclude_prefix`` — the output);
    anything else is a manifest for :func:`frameexit.manifests.load_manifest`, whose bad
    rows become ``bad_manifest_row`` output rows so that every input yields one row.
    """
    from frameexit.manifests import load_manifest

    options = dict(storage_options or {})
    fs, path = _fs(uri, options)
    if fs.isdir(path):
        from frameexit.storage import list_files

        files = list_files(uri, suffixes=suffixes, storage_options=options)
        files = [f for f in files if not f.rsplit("/", 1)[-1].startswith(".")]
        if exclude_prefix:
            files = [f for f in files if not normalize_uri(f).startswith(exclude_prefix + "/")]
        videos = pd.DataFrame(
            {
                "row": np.arange(len(files), dtype=np.int64),
                "input_id": _unique_ids(files),
                "video": files,
                "start": np.full(len(files), np.nan),
                "end": np.full(len(files), np.nan),
            }
        )
        return LabelInputs(videos, _empty_output(), "listing")

    loaded = load_manifest(uri, storage_options=options or None, save_class_map=False)
    table = loaded.table
    n = len(table)
    uris = table["video"].astype(str).tolist()
    videos = pd.DataFrame(
        {
            "row": np.arange(n, dtype=np.int64),
            "input_id": _unique_ids(uris),
            "video": uris,
            "start": _seconds(table, "start"),
            "end": _seconds(table, "end"),
        }
    )
    bad_rows = []
    for k, bad in enumerate(loaded.bad_rows.itertuples(index=False)):
        line = None if pd.isna(bad.line) else int(bad.line)
        where = f"line {line}" if line is not None else f"bad row {k + 1}"
        bad_rows.append(
            _row(
                row=n + k,
                input_id=f"manifest-line-{line}" if line is not None else f"manifest-bad-{k + 1}",
                video=None,
                status=STATUS_BAD_ROW,
                error=f"{uri}: {where}: {bad.reason}: {bad.raw}",
            )
        )
    return LabelInputs(videos, _rows_to_table(bad_rows), "manifest", list(loaded.class_names))


def _seconds(table: pd.DataFrame, column: str) -> np.ndarray:
    if column not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)


def _row(**values: Any) -> dict[str, Any]:
    out = {name: None for name in OUTPUT_SCHEMA.names}
    out.update(labels=[], label_ids=[], scores=[], frames_decoded=0, gflops=0.0)
    out.update(values)
    return out


def _rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def _empty_output() -> pa.Table:
    return OUTPUT_SCHEMA.empty_table()


# --------------------------------------------------------------------------- parts


def part_name(input_ids: Iterable[str]) -> str:
    """``part-<16 hex>.parquet`` from the sorted ids: the same rows, the same name."""
    digest = hashlib.sha256("\n".join(sorted(input_ids)).encode("utf-8")).hexdigest()
    return f"{PART_PREFIX}{digest[:16]}.parquet"


def list_parts(output: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """URIs of the committed parts under ``output`` (sorted)."""
    fs, path = _fs(output, options)
    if not fs.exists(path):
        return []
    found = fs.glob(f"{path.rstrip('/')}/{PART_PREFIX}*.parquet")
    return sorted(fs.unstrip_protocol(p) if is_remote(output) else p for p in found)


def write_part(output: str, table: pa.Table, options: Mapping[str, Any] | None = None) -> str:
    """Commit ``table`` (rows of ``OUTPUT_SCHEMA``) as one part, atomically; returns its URI."""
    from frameexit.storage import write_bytes

    table = table.cast(OUTPUT_SCHEMA).sort_by("row")
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    uri = join_uri(output, part_name(table.column("input_id").to_pylist()))
    write_bytes(uri, buffer.getvalue(), storage_options=options)
    return uri


def _read_part(uri: str, options: Mapping[str, Any] | None, columns: list[str] | None = None):
    fs, path = _fs(uri, options)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def committed_ids(output: str, options: Mapping[str, Any] | None = None) -> set[str]:
    """Input ids that already have a committed row under ``output``."""
    ids: set[str] = set()
    for uri in list_parts(output, options):
        ids.update(_read_part(uri, options, ["input_id"]).column("input_id").to_pylist())
    return ids


def read_labels(output: str, *, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """All committed rows under ``output`` in input order, one per ``input_id``."""
    tables = [_read_part(uri, storage_options) for uri in list_parts(output, storage_options)]
    table = pa.concat_tables(tables) if tables else _empty_output()
    frame = table.to_pandas()
    frame = frame.drop_duplicates("input_id", keep="first")
    return frame.sort_values("row", kind="stable").reset_index(drop=True)


def _clean_temporaries(output: str, options: Mapping[str, Any] | None) -> None:
    """Remove temporaries a killed local writer left (``.tmp-*``; object stores have none)."""
    if is_remote(output) or not os.path.isdir(output):
        return
    for name in os.listdir(output):
        if name.startswith(".tmp-"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(output, name))


def _clear_output(output: str, options: Mapping[str, Any] | None) -> None:
    fs, path = _fs(output, options)
    if not fs.exists(path):
        return
    names = [PART_PREFIX + "*.parquet", FINGERPRINT_NAME, SUMMARY_NAME, CONFIG_NAME]
    for pattern in names:
        for found in fs.glob(f"{path.rstrip('/')}/{pattern}"):
            fs.rm(found)


# --------------------------------------------------------------------------- the actor


@dataclass
class _Video:
    """One video of a batch while it is being labeled."""

    row: int
    input_id: str
    video: str
    start: float
    end: float
    reader: Any = None
    indices: list[int] = field(default_factory=list)
    num_frames: int | None = None
    frames_decoded: int = 0
    error: VideoDecodeError | None = None


def _as_decode_error(uri: str, error: BaseException) -> VideoDecodeError:
    if isinstance(error, VideoDecodeError):
        return error
    return VideoDecodeError(uri, "unreadable", f"{type(error).__name__}: {error}")


class VideoLabeler:
    """Ray Data actor: a FrameExit model that labels pandas batches of input rows.

    Built once per actor (model weights come through the object store, so every actor has
    the same model, checkpointed or random). ``__call__`` returns a ``pyarrow.Table`` of
    ``OUTPUT_SCHEMA`` with exactly one row per input row. Usable without Ray (tests).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        weights: Any,
        class_names: Sequence[str],
        *,
        step_gflops: float,
        decode_threads: int = 2,
        device: str = "cpu",
        torch_threads: int | None = None,
        backend: str | None = None,
    ) -> None:
        import torch

        from frameexit.backbones import backbone_spec
        from frameexit.config import config_from_dict
        from frameexit.model import build_model
        from frameexit.policy import get_policy

        if isinstance(weights, list):  # [ObjectRef] (a bare ref would not reach us as-is)
            import ray

            weights = ray.get(weights[0])
        self.cfg = config_from_dict(cfg)
        m = self.cfg.model
        if torch_threads:
            torch.set_num_threads(torch_threads)
        model = build_model(copy.deepcopy(m))
        model.load_state_dict(weights)
        self.model = model.to(device).eval()
        self.device = device
        self.class_names = list(class_names)
        self.policy = get_policy(m.policy)
        spec = backbone_spec(m.backbone)
        self.mean, self.std = spec.mean, spec.std
        self.step_gflops = float(step_gflops)
        self.pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="fe-decode")
        self.backend = backend or self.cfg.data.decode_backend
        s = m.image_size
        shape = (1, 3, m.clip_length, s, s) if m.clip_length > 1 else (1, 3, s, s)
        self.blank = torch.zeros(shape)

    # --- decoding ---------------------------------------------------------------------

    def _open(self, v: _Video) -> None:
        from frameexit.video import open_video

        d, m = self.cfg.data, self.cfg.model
        options = dict(d.storage_options) if is_remote(v.video) else None
        try:
            v.reader = open_video(
                v.video, storage_options=options, timeout_s=d.decode_timeout_s, backend=self.backend
            )
            first, n = 0, int(v.reader.num_frames)
            if math.isfinite(v.start) or math.isfinite(v.end):  # a [start, end) segment
                fps = float(v.reader.fps)
                first = min(n - 1, max(0, int(v.start * fps))) if math.isfinite(v.start) else 0
                last = n
                if math.isfinite(v.end):
                    last = min(n, max(first + 1, int(math.ceil(v.end * fps))))
                n = last - first
            if n < 1:
                raise VideoDecodeError(v.video, "empty", "the container holds no frames")
            v.num_frames = n
            v.indices = [first + i for i in self.policy(n, m.num_steps)]
        except Exception as error:  # noqa: BLE001 - every failure becomes this video's row
            v.error = _as_decode_error(v.video, error)
            self._close(v)

    def _frame(self, v: _Video, step: int):
        """Frame (or clip) ``step`` of ``v`` as a ``[1, 3, (k,) S, S]`` tensor; a blank if
        the video has failed (its row reports the error; the model's answer is dropped)."""
        from frameexit.transforms import frames_to_tensor

        if v.error is not None:
            return self.blank
        m = self.cfg.model
        index = v.indices[step]
        try:
            if m.clip_length > 1:
                raw = v.reader.get_clips([index], m.clip_length)
            else:
                raw = v.reader.get([index])
            v.frames_decoded += m.clip_length
            return frames_to_tensor(raw, image_size=m.image_size, mean=self.mean, std=self.std)
        except Exception as error:  # noqa: BLE001 - a failure at step t > 1 is this video's
            v.error = _as_decode_error(v.video, error)
            self._close(v)
            return self.blank

    @staticmethod
    def _close(v: _Video) -> None:
        if v.reader is not None:
            # closing a broken reader must not fail the batch
            with contextlib.suppress(Exception):
                v.reader.close()
            v.reader = None

    # --- labeling ---------------------------------------------------------------------

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        return self.label(batch)

    def label(self, batch: pd.DataFrame) -> pa.Table:
        """One output row per row of ``batch`` (columns ``INPUT_COLUMNS``)."""
        import torch

        videos = [
            _Video(int(r.row), str(r.input_id), str(r.video), float(r.start), float(r.end))
            for r in batch.itertuples(index=False)
        ]
        try:
            list(self.pool.map(self._open, videos))
            running = [v for v in videos if v.error is None]
            result = None
            if running:

                def frame_source(step: int, active: torch.Tensor) -> torch.Tensor:
                    chosen = [running[i] for i in active.tolist()]
                    frames = list(self.pool.map(lambda v: self._frame(v, step), chosen))
                    return torch.cat(frames)

                result = self.model.early_exit(
                    frame_source,
                    len(running),
                    threshold=self.cfg.model.exit_threshold,
                    exit=self.cfg.label.early_exit,
                )
        finally:
            for v in videos:
                self._close(v)
        answers = {}
        if result is not None:
            scores = result.scores.float().cpu()
            steps = result.exit_step.cpu().tolist()
            for i, v in enumerate(running):
                answers[id(v)] = (scores[i], int(steps[i]))
        return _rows_to_table([self._output(v, answers.get(id(v))) for v in videos])

    def _output(self, v: _Video, answer: tuple[Any, int] | None) -> dict[str, Any]:
        base = dict(
            row=v.row,
            input_id=v.input_id,
            video=v.video,
            frames_decoded=v.frames_decoded,
            num_frames=v.num_frames,
        )
        if v.error is not None or answer is None:
            error = v.error or VideoDecodeError(v.video, "unreadable", "no answer")
            return _row(**base, status=error.kind, error=str(error))
        scores, step = answer
        ids, values = select_labels(
            scores,
            multi_label=self.cfg.model.multi_label,
            top_k=self.cfg.label.top_k,
            threshold=self.cfg.label.multi_label_threshold,
        )
        names = [self._name(i) for i in ids]
        return _row(
            **base,
            status=STATUS_OK,
            label=names[0] if names else None,
            labels=names,
            label_ids=ids,
            scores=values,
            exit_step=step,
            gflops=step * self.step_gflops,
        )

    def _name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else f"class_{index}"


def select_labels(
    scores: Any, *, multi_label: bool, top_k: int, threshold: float
) -> tuple[list[int], list[float]]:
    """Label ids and scores, best first: top-k (single-label) or all ≥ threshold (multi)."""
    values = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-values, kind="stable")
    if multi_label:
        order = order[values[order] >= threshold]
    else:
        order = order[: min(top_k, len(order))]
    return [int(i) for i in order], [float(values[i]) for i in order]


# --------------------------------------------------------------------------- the job


@dataclass
class LabelJob:
    """Everything the driver resolved before labeling starts."""

    cfg: Config
    input: str
    output: str
    checkpoint: str | None
    weights: dict[str, Any]
    step_gflops: float
    class_names: list[str]
    fingerprint: dict[str, Any]


def resolve_config(
    checkpoint: str | None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Config, dict[str, Any] | None]:
    """The run's config and, with a checkpoint, its weights.

    Without a checkpoint: defaults ← ``config_file`` ← ``overrides`` (the model is random).
    With one: the model section is the checkpoint's; command-line overrides may change
    only ``model.exit_threshold``, ``model.first_step_threshold`` and ``model.policy``;
    everything else (label, data) comes from ``config_file`` and the overrides.
    """
    if checkpoint is None:
        return load_config(config_file, overrides), None
    from frameexit.checkpoint import read_model_checkpoint

    model_overrides = [o for o in overrides if o.lstrip("-").startswith("model.")]
    for text in model_overrides:
        key = text.lstrip("-").split("=", 1)[0]
        if key.split(".", 1)[1] not in MODEL_INFERENCE_FIELDS:
            raise ConfigError(
                key,
                "fixed by the checkpoint; only "
                + ", ".join(f"model.{f}" for f in MODEL_INFERENCE_FIELDS)
                + " may be overridden when labeling with --checkpoint",
            )
    cfg = load_config(config_file, [o for o in overrides if o not in model_overrides])
    options = options_for(cfg, checkpoint)
    state, ckpt_cfg, _ = read_model_checkpoint(checkpoint, storage_options=options or None)
    from frameexit.config import config_from_dict

    merged = config_to_dict(cfg)
    merged["model"] = config_to_dict(ckpt_cfg)["model"]
    merged["model"]["pretrained"] = None  # the checkpoint holds the weights
    # the training manifest, whose classes.json names the model's outputs
    merged["data"]["manifest"] = cfg.data.manifest or ckpt_cfg.data.manifest
    return config_from_dict(merged, model_overrides), state


def resolve_class_names(
    cfg: Config,
    num_classes: int,
    *,
    classes_uri: str | None = None,
    checkpoint_manifest: str | None = None,
    input_names: Sequence[str] = (),
) -> list[str]:
    """Class names for the model's K outputs: ``--classes``, else the class map beside the
    manifest the model was trained on, else the input manifest's, else ``class_<i>``."""
    from frameexit.manifests import class_map_uri_for, read_class_names

    candidates: list[Callable[[], list[str]]] = []
    if classes_uri:
        candidates.append(
            lambda: read_class_names(classes_uri, storage_options=options_for(cfg, classes_uri))
        )
    if checkpoint_manifest:
        beside = class_map_uri_for(checkpoint_manifest)
        candidates.append(
            lambda: read_class_names(beside, storage_options=options_for(cfg, beside))
        )
    if input_names:
        candidates.append(lambda: list(input_names))
    for make in candidates:
        try:
            names = make()
        except Exception as error:  # noqa: BLE001 - fall through to the next source
            if make is candidates[0] and classes_uri:
                raise
            log.debug("class names not taken from a candidate: %s", error)
            continue
        if len(names) == num_classes:
            return names
        if classes_uri and make is candidates[0]:
            raise ConfigError(
                "--classes", f"{classes_uri} has {len(names)} names, the model {num_classes}"
            )
    return [f"class_{i}" for i in range(num_classes)]


def prepare_job(
    input_uri: str,
    output_uri: str,
    *,
    checkpoint: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    classes_uri: str | None = None,
) -> tuple[LabelJob, LabelInputs]:
    """Resolve config and model (driver side) and read the inputs."""
    import torch

    from frameexit.flops import step_gflops
    from frameexit.model import build_model

    cfg, state = resolve_config(checkpoint, config_file, overrides)
    input_uri, output_uri = normalize_uri(input_uri), normalize_uri(output_uri)
    checkpoint = normalize_uri(checkpoint) if checkpoint else None
    model_cfg = copy.deepcopy(cfg.model)
    if state is None:
        log.warning(
            "no --checkpoint: labeling with a RANDOMLY INITIALISED %s model (seed "
            "train.seed=%d); the labels mean nothing",
            cfg.model.backbone,
            cfg.train.seed,
        )
        torch.manual_seed(cfg.train.seed)
        model = build_model(model_cfg)
    else:
        model_cfg.pretrained = None
        model = build_model(model_cfg)
        model.load_state_dict(state)
    model.eval()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    gflops = step_gflops(model, cfg.model.image_size).total
    inputs = read_inputs(
        input_uri,
        storage_options=options_for(cfg, input_uri),
        exclude_prefix=output_uri,
    )
    names = resolve_class_names(
        cfg,
        cfg.model.num_classes,
        classes_uri=classes_uri,
        checkpoint_manifest=cfg.data.manifest if checkpoint and cfg.data.manifest else None,
        input_names=inputs.class_names,
    )
    weights_digest = hashlib.sha256()
    for key in sorted(weights):
        weights_digest.update(key.encode())
        weights_digest.update(weights[key].numpy().tobytes())
    fingerprint = {
        "input": input_uri,
        "checkpoint": checkpoint,
        "weights_sha256": weights_digest.hexdigest()[:32],
        "model": config_to_dict(cfg)["model"],
        "early_exit": cfg.label.early_exit,
        "exit_threshold": cfg.model.exit_threshold,
        "top_k": cfg.label.top_k,
        "multi_label_threshold": cfg.label.multi_label_threshold,
        "class_names": names,
    }
    job = LabelJob(cfg, input_uri, output_uri, checkpoint, weights, gflops, names, fingerprint)
    return job, inputs


def check_fingerprint(job: LabelJob, options: Mapping[str, Any], *, overwrite: bool) -> None:
    """Refuse to add rows to an output made with other settings (or clear it: overwrite)."""
    from frameexit.storage import exists, read_bytes, write_bytes

    if overwrite:
        _clear_output(job.output, options)
    uri = join_uri(job.output, FINGERPRINT_NAME)
    if exists(uri, storage_options=options):
        recorded = json.loads(read_bytes(uri, storage_options=options))
        differ = sorted(k for k in job.fingerprint if recorded.get(k) != job.fingerprint[k])
        if differ:
            raise ConfigError(
                "--output",
                f"{job.output} holds labels made with other settings ({', '.join(differ)} "
                "differ); rerun with the same settings, another --output, or --overwrite",
            )
    elif list_parts(job.output, options):
        raise ConfigError("--output", f"{job.output} has parts but no {FINGERPRINT_NAME}")
    else:
        payload = json.dumps(job.fingerprint, indent=1, sort_keys=True).encode()
        write_bytes(uri, payload, storage_options=options)
        import yaml

        text = yaml.safe_dump(config_to_dict(job.cfg), sort_keys=False).encode()
        write_bytes(join_uri(job.output, CONFIG_NAME), text, storage_options=options)


def ensure_ray(cfg: Config) -> None:
    """Connect to the running cluster (``RAY_ADDRESS``, ``ray job submit``) or start a local
    one with room for the actor pool plus the driver's small Ray Data tasks."""
    from pipelines.common import ensure_ray as connect

    connect(
        cfg,
        object_store_mb=512,
        cpus_needed=cfg.label.concurrency * cfg.label.cpus_per_actor,
    )


def decode_threads_for(cfg: Config) -> int:
    """Decode threads per actor: two per CPU it holds (decord and PyAV release the GIL,
    and a thread waiting on storage leaves its core to another)."""
    return max(2, 2 * math.ceil(cfg.label.cpus_per_actor))


def rows_per_block(num_videos: int, cfg: Config) -> int:
    """Input rows per Ray Data block: a multiple of the batch size, small enough that the
    pool always has work (≥ 8 blocks per actor) and results stream back steadily."""
    b = cfg.label.batch_size
    target = math.ceil(num_videos / max(1, 8 * cfg.label.concurrency))
    per = max(b, min(cfg.label.part_size, target))
    return int(math.ceil(per / b) * b)


def label_dataset(
    job: LabelJob,
    todo: pd.DataFrame,
    *,
    decode_threads: int | None = None,
    calls_per_actor: int = 2,
):
    """The lazy Ray Dataset of output rows for the input rows ``todo``.

    Each actor runs ``calls_per_actor`` batches at once (threads): while one batch waits
    for storage or runs the model, the other decodes, so the actor's CPUs stay busy.
    """
    import ray
    from ray.data import ActorPoolStrategy

    cfg = job.cfg
    per = rows_per_block(len(todo), cfg)
    # from_items builds the blocks in the driver (from_pandas runs a remote metadata task
    # per block); records keep NaN segment bounds as floats.
    ds = ray.data.from_items(
        todo.to_dict("records"), override_num_blocks=max(1, math.ceil(len(todo) / per))
    )
    gpus = cfg.label.gpus_per_actor
    resources: dict[str, Any] = {"num_cpus": cfg.label.cpus_per_actor}
    if gpus > 0:
        resources["num_gpus"] = gpus
    return ds.map_batches(
        VideoLabeler,
        fn_constructor_args=(config_to_dict(cfg), [ray.put(job.weights)], job.class_names),
        fn_constructor_kwargs={
            "step_gflops": job.step_gflops,
            "decode_threads": decode_threads or decode_threads_for(cfg),
            "device": "cuda" if gpus > 0 else "cpu",
            "torch_threads": max(1, int(cfg.label.cpus_per_actor)),
        },
        batch_size=cfg.label.batch_size,
        batch_format="pandas",
        compute=ActorPoolStrategy(
            size=cfg.label.concurrency,
            max_concurrent_calls_per_actor=calls_per_actor,
            enable_true_multi_threading=calls_per_actor > 1,
        ),
        **resources,
    )


class _PartWriter:
    """Buffers output rows and commits them in parts of ``part_size`` rows."""

    def __init__(self, output: str, options: Mapping[str, Any], part_size: int) -> None:
        self.output, self.options, self.part_size = output, options, part_size
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts: list[str] = []
        self.delay = float(os.environ.get("FRAMEEXIT_LABEL_PART_DELAY_S", "0") or 0)

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buffer.append(table)
            self.buffered += table.num_rows
        while self.buffered >= self.part_size:
            self._commit(self.part_size)

    def flush(self) -> None:
        while self.buffered:
            self._commit(min(self.buffered, self.part_size))

    def _commit(self, n: int) -> None:
        table = pa.concat_tables(self.buffer).combine_chunks()
        part, rest = table.slice(0, n), table.slice(n)
        self.parts.append(write_part(self.output, part, self.options))
        self.buffer = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows
        if self.delay:  # test hook: widen the window in which a kill lands mid-run
            time.sleep(self.delay)


def summarize(rows: pd.DataFrame) -> dict[str, Any]:
    """Counts and means over output rows: per status, frames and GFLOPs per ok video."""
    ok = rows[rows["status"] == STATUS_OK]
    statuses = Counter(rows["status"].tolist())
    return {
        "videos": int(len(rows)),
        "ok": int(len(ok)),
        "errors_by_kind": {k: int(v) for k, v in sorted(statuses.items()) if k != STATUS_OK},
        "frames_decoded_per_video": float(ok["frames_decoded"].mean()) if len(ok) else 0.0,
        "frames_decoded_total": int(rows["frames_decoded"].sum()),
        "gflops_per_video": float(ok["gflops"].mean()) if len(ok) else 0.0,
        "mean_exit_step": float(ok["exit_step"].mean()) if len(ok) else 0.0,
    }


def run_labeling(
    input_uri: str,
    output_uri: str,
    *,
    checkpoint: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    classes_uri: str | None = None,
    overwrite: bool = False,
    decode_threads: int | None = None,
    calls_per_actor: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Label every input video once into ``output_uri`` (resumable); returns the summary."""
    began = time.perf_counter()
    job, inputs = prepare_job(
        input_uri,
        output_uri,
        checkpoint=checkpoint,
        config_file=config_file,
        overrides=overrides,
        classes_uri=classes_uri,
    )
    cfg, output = job.cfg, job.output
    options = options_for(cfg, output)
    check_fingerprint(job, options, overwrite=overwrite)
    _clean_temporaries(output, options)
    done = committed_ids(output, options)
    todo = inputs.videos[~inputs.videos["input_id"].isin(done)].reset_index(drop=True)
    bad_ids = inputs.bad.column("input_id").to_pylist()
    bad_todo = inputs.bad.filter(pa.array([i not in done for i in bad_ids], pa.bool_()))
    log.info(
        "%s: %d inputs (%d unparsable manifest rows), %d already labeled, %d to label",
        job.input,
        len(inputs),
        inputs.bad.num_rows,
        len(done & set(inputs.videos["input_id"]).union(bad_ids)),
        len(todo) + bad_todo.num_rows,
    )
    writer = _PartWriter(output, options, cfg.label.part_size)
    writer.add(bad_todo)
    writer.flush()
    produced: list[pa.Table] = [bad_todo]
    label_began = time.perf_counter()
    first_result, first_rows, first_frames = None, 0, 0
    if len(todo):
        ensure_ray(cfg)
        ds = label_dataset(
            job,
            todo[list(INPUT_COLUMNS)],
            decode_threads=decode_threads,
            calls_per_actor=calls_per_actor,
        )
        bar = _progress(len(todo), progress)
        status: Counter[str] = Counter()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if first_result is None:
                    first_result, first_rows = time.perf_counter(), batch.num_rows
                    first_frames = int(pa.compute.sum(batch.column("frames_decoded")).as_py() or 0)
                writer.add(batch)
                produced.append(batch)
                status.update(batch.column("status").to_pylist())
                bar.update(batch.num_rows)
                bar.set_postfix(
                    ok=status[STATUS_OK], errors=sum(status.values()) - status[STATUS_OK]
                )
            writer.flush()
        finally:
            bar.close()
    finished = time.perf_counter()
    seconds = finished - label_began
    this_run = pa.concat_tables(produced).to_pandas() if produced else _empty_output().to_pandas()
    videos_this_run = this_run[this_run["status"] != STATUS_BAD_ROW]
    run = summarize(videos_this_run)
    frames_total = int(videos_this_run["frames_decoded"].sum())
    steady = (finished - first_result) if first_result and len(todo) > first_rows else 0.0
    run.update(
        seconds=seconds,
        videos_per_second=len(videos_this_run) / seconds if seconds > 0 else 0.0,
        frames_decoded_per_second=float(videos_this_run["frames_decoded"].sum()) / seconds
        if seconds > 0
        else 0.0,
        # startup (actors starting, models loading) vs the steady rate after the first result
        startup_seconds=(first_result - label_began) if first_result else seconds,
        steady_videos_per_second=(len(todo) - first_rows) / steady if steady else 0.0,
        steady_frames_decoded_per_second=(frames_total - first_frames) / steady if steady else 0.0,
        parts_written=len(writer.parts),
        bad_manifest_rows=int(bad_todo.num_rows),
    )
    labels = read_labels(output, storage_options=options)
    expected = set(inputs.videos["input_id"]).union(bad_ids)
    missing = sorted(expected - set(labels["input_id"]))
    summary = {
        "input": job.input,
        "output": output,
        "checkpoint": job.checkpoint,
        "early_exit": cfg.label.early_exit,
        "exit_threshold": cfg.model.exit_threshold,
        "num_steps": cfg.model.num_steps,
        "step_gflops": job.step_gflops,
        "run": run,
        "total": summarize(labels),
        "inputs": len(inputs),
        "missing": len(missing),
        "complete": not missing,
        "wall_seconds": time.perf_counter() - began,
    }
    from frameexit.storage import write_bytes

    write_bytes(
        join_uri(output, SUMMARY_NAME),
        json.dumps(summary, indent=1).encode(),
        storage_options=options,
    )
    if missing:
        log.error("%d inputs have no row (first: %s)", len(missing), missing[:3])
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="labeling", disable=not enabled, mininterval=1.0)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable end-of-run report."""
    run, total = summary["run"], summary["total"]
    mode = (
        "all T frames"
        if not summary["early_exit"]
        else f"early exit (threshold {summary['exit_threshold']:g})"
    )
    lines = [
        f"labeled {run['videos']} videos in {run['seconds']:.1f} s: "
        f"{run['videos_per_second']:.2f} videos/s, {run['frames_decoded_per_second']:.1f} frames/s "
        f"[{mode}, T={summary['num_steps']}]",
        f"  frames decoded per video {run['frames_decoded_per_video']:.2f}, "
        f"GFLOPs per video {run['gflops_per_video']:.4g} "
        f"({summary['step_gflops']:.4g} per step), mean exit step {run['mean_exit_step']:.2f}",
        "  errors by kind: "
        + (", ".join(f"{k} {v}" for k, v in run["errors_by_kind"].items()) or "none"),
        f"output {summary['output']}: {total['videos']} rows for {summary['inputs']} inputs "
        f"({total['ok']} ok"
        + "".join(f", {k} {v}" for k, v in total["errors_by_kind"].items())
        + ")"
        + ("" if summary["complete"] else f"; {summary['missing']} MISSING"),
    ]
    return "\n".join(lines)
