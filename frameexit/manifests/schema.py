"""The canonical manifest: its columns, the row every reader produces, and its Parquet form.

Readers build :class:`Row` objects; :func:`rows_to_frame` turns them into the DataFrame
``load_manifest`` returns, :func:`to_arrow` / :func:`write_manifest` store such a frame
with :data:`MANIFEST_SCHEMA`, and :func:`read_manifest_parquet` gives it back unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from frameexit.errors import ManifestError
from frameexit.manifests.parsing import is_missing, read_manifest_bytes
from frameexit.storage import write_bytes

CORE_COLUMNS: tuple[str, ...] = (
    "video",
    "labels",
    "label_ids",
    "split",
    "start",
    "end",
    "duration",
    "num_frames",
)
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("label_ids", pa.list_(pa.int32())),
        pa.field("split", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("duration", pa.float64()),
        pa.field("num_frames", pa.int32()),
    ]
)
BAD_ROW_COLUMNS: tuple[str, ...] = ("line", "reason", "raw")
UNASSIGNED_SPLIT = "unassigned"


@dataclass
class Row:
    """One good manifest row on its way to the canonical table."""

    line: int | None
    raw: str
    video: str
    labels: list[str]
    split: str
    start: float | None = None
    end: float | None = None
    duration: float | None = None
    num_frames: int | None = None
    label_ids: list[int] | None = None  # only when a Parquet input has ids but no names
    extras: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- DataFrame


def rows_to_frame(rows: list[Row]) -> pd.DataFrame:
    """Build the canonical DataFrame; scalar columns get the dtypes pandas infers (so they
    match what ``read_manifest_parquet`` gives back), list columns hold Python lists."""

    def floats(values: Iterable[float | None]) -> pd.Series:
        return pd.Series([np.nan if v is None else v for v in values], dtype="float64")

    def lists(values: Iterable[list[Any]]) -> pd.Series:
        return pd.Series([list(v) for v in values], dtype=object)

    frame = pd.DataFrame(
        {
            "video": pd.Series([r.video for r in rows], dtype=_string_dtype()),
            "labels": lists(r.labels for r in rows),
            "label_ids": lists(r.label_ids or [] for r in rows),
            "split": pd.Series([r.split for r in rows], dtype=_string_dtype()),
            "start": floats(r.start for r in rows),
            "end": floats(r.end for r in rows),
            "duration": floats(r.duration for r in rows),
            "num_frames": pd.array([r.num_frames for r in rows], dtype="Int32"),
        }
    )
    extra_names: list[str] = []
    for row in rows:
        for name in row.extras:
            if name not in extra_names and name not in CORE_COLUMNS:
                extra_names.append(name)
    for name in extra_names:
        values = [row.extras.get(name) for row in rows]
        if any(isinstance(v, (list, dict, tuple)) for v in values):
            frame[name] = pd.Series(values, dtype=object)
        else:
            frame[name] = pd.Series(values) if values else pd.Series([], dtype=object)
    return frame


def _string_dtype() -> Any:
    """The dtype pandas gives strings read from Arrow (``str`` on pandas 3, else object)."""
    return pd.Series(["x"]).dtype


# --------------------------------------------------------------------------- Arrow / Parquet


def to_arrow(frame: pd.DataFrame, *, uri: str = "<frame>") -> pa.Table:
    """Coerce a manifest DataFrame to the canonical Arrow schema (extras inferred).

    ``video`` is required; ``labels``/``label_ids`` default to empty lists (both or
    neither), ``split`` to ``unassigned``, the rest to null."""
    if "video" not in frame.columns:
        raise ManifestError(uri, f"manifest has no 'video' column (columns: {list(frame.columns)})")
    n = len(frame)
    videos = frame["video"].tolist()
    for number, video in enumerate(videos, start=1):
        if is_missing(video):
            raise ManifestError(uri, "empty video URI", line=number)

    def lists(name: str, cast: type) -> list[list[Any]]:
        if name not in frame.columns:
            return [[] for _ in range(n)]
        return [[] if v is None else [cast(x) for x in v] for v in frame[name].tolist()]

    labels = lists("labels", str)
    label_ids = lists("label_ids", int)
    for number, (names, ids) in enumerate(zip(labels, label_ids, strict=True), start=1):
        if len(names) != len(ids):
            raise ManifestError(uri, f"labels {names} and label_ids {ids} differ in length", number)

    def column(name: str) -> list[Any]:
        if name not in frame.columns:
            return [None] * n
        return [None if is_missing(v) else v for v in frame[name].tolist()]

    splits = [UNASSIGNED_SPLIT if v is None else str(v) for v in column("split")]
    arrays = [
        pa.array([str(v) for v in videos], pa.string()),
        pa.array(labels, pa.list_(pa.string())),
        pa.array(label_ids, pa.list_(pa.int32())),
        pa.array(splits, pa.string()),
        pa.array([None if v is None else float(v) for v in column("start")], pa.float64()),
        pa.array([None if v is None else float(v) for v in column("end")], pa.float64()),
        pa.array([None if v is None else float(v) for v in column("duration")], pa.float64()),
        pa.array([None if v is None else int(v) for v in column("num_frames")], pa.int32()),
    ]
    fields = list(MANIFEST_SCHEMA)
    for name in frame.columns:
        if name in CORE_COLUMNS:
            continue
        series = frame[name]
        try:
            if series.dtype == object:
                array = pa.array([_plain(v) for v in series.tolist()], from_pandas=True)
            else:
                array = pa.Array.from_pandas(series)
        except (pa.ArrowException, TypeError, ValueError) as error:
            raise ManifestError(uri, f"column {name!r} cannot be stored ({error})") from error
        arrays.append(array)
        fields.append(pa.field(str(name), array.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _plain(value: Any) -> Any:
    """numpy containers/scalars → Python objects so Arrow infers nested types."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_parquet_table(uri: str, payload: bytes) -> pa.Table:
    """Parse Parquet bytes that must hold a ``video`` column (else ``ManifestError``)."""
    try:
        table = pq.read_table(io.BytesIO(payload))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ManifestError(uri, f"unreadable Parquet ({error})") from error
    if "video" not in table.column_names:
        raise ManifestError(uri, f"missing column 'video' (columns: {table.column_names})")
    return table


def write_manifest(
    frame: pd.DataFrame, uri: str, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a manifest in the canonical Parquet form to ``uri`` (atomically)."""
    table = to_arrow(frame, uri=uri)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes(uri, buffer.getvalue(), storage_options=storage_options)


def read_manifest_parquet(
    uri: str, *, storage_options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a canonical Parquet manifest back into the DataFrame ``load_manifest`` gives.

    Lists are Python lists, ``num_frames`` is nullable ``Int32``, missing optional core
    columns are filled with defaults."""
    table = read_parquet_table(uri, read_manifest_bytes(uri, storage_options))
    frame = table.to_pandas()
    for name in frame.columns:  # nested Arrow values come back as numpy arrays
        if pa.types.is_list(table.schema.field(name).type) or pa.types.is_struct(
            table.schema.field(name).type
        ):
            frame[name] = pd.Series(table.column(name).to_pylist(), dtype=object)
    n = len(frame)
    for name in ("labels", "label_ids"):
        if name not in frame.columns:
            frame[name] = pd.Series([[] for _ in range(n)], dtype=object)
        else:
            frame[name] = pd.Series(
                [[] if v is None else list(v) for v in frame[name]], dtype=object
            )
    if "split" not in frame.columns:
        frame["split"] = UNASSIGNED_SPLIT
    for name in ("start", "end", "duration"):
        frame[name] = frame[name].astype("float64") if name in frame.columns else np.nan
    frame["num_frames"] = (
        frame["num_frames"].astype("Int32")
        if "num_frames" in frame.columns
        else pd.array([None] * n, dtype="Int32")
    )
    ordered = list(CORE_COLUMNS) + [c for c in frame.columns if c not in CORE_COLUMNS]
    return frame[ordered]
