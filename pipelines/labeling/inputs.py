"""What to label: ``--input`` (a manifest or a directory/prefix) as input rows.

Every entry of the input becomes one row with a stable ``input_id`` (see ``schema``):
a listed file, a manifest row (each ``[start, end)`` segment and each repeat is its own
entry), or an unparsable manifest row, answered at once as ``bad_manifest_row``. The
rows are Arrow tables (a few dozen bytes per entry), not Python objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from frameexit.storage import absolute_uri, list_files, url_to_fs
from pipelines.labeling.schema import (
    INPUT_SCHEMA,
    STATUS_BAD_ROW,
    bad_row_key,
    entry_key,
    input_ids,
    output_row,
    rows_to_table,
)


@dataclass
class LabelInputs:
    """What to label: ``videos`` (``INPUT_SCHEMA``) and the rows already answered without
    decoding (``bad`` — unparsable manifest rows, ``OUTPUT_SCHEMA``)."""

    videos: pa.Table
    bad: pa.Table
    kind: str  # "manifest" | "listing" | "video" (one file)
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.videos.num_rows + self.bad.num_rows

    @property
    def ids(self) -> pa.Array:
        """Every input id (videos, then bad rows)."""
        return pa.concat_arrays(
            [
                self.videos.column("input_id").combine_chunks(),
                self.bad.column("input_id").combine_chunks().cast(pa.string()),
            ]
        )


def _video_table(uris: list[str], start: np.ndarray, end: np.ndarray) -> pa.Table:
    keys = [entry_key(u, s, e) for u, s, e in zip(uris, start.tolist(), end.tolist(), strict=True)]
    n = len(uris)
    return pa.table(
        {
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "input_id": pa.array(input_ids(keys), pa.string()),
            "video": pa.array(uris, pa.string()),
            "start": pa.array(start, pa.float64()),
            "end": pa.array(end, pa.float64()),
            "attempts": pa.array(np.ones(n, dtype=np.int32)),
        },
        schema=INPUT_SCHEMA,
    )


def read_inputs(
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    suffixes: Sequence[str] | None = None,
    exclude_prefix: str | None = None,
    allowed_prefixes: Sequence[str] | None = None,
    allow_http: bool = False,
) -> LabelInputs:
    """Turn ``--input`` into input rows.

    A directory/prefix is listed (every file, recursively, except names starting with
    ``.``, only ``suffixes`` if given, never anything under ``exclude_prefix`` — the output);
    a single video file (:func:`is_video_file`: a video suffix, or a container's magic
    bytes) is a listing of that one file (missing, it is one ``missing`` row);
    anything else is a manifest for :func:`frameexit.manifests.load_manifest`, whose bad
    rows become ``bad_manifest_row`` output rows so that every input yields one row.
    Video URIs are normalised (``absolute_uri``), so one file has one identity.
    A manifest row pointing outside ``allowed_prefixes`` (``data.allowed_prefixes``;
    empty: the manifest's bucket or folder tree, see ``frameexit.confinement``), or to
    plain http(s) without ``allow_http``, is a ``bad_manifest_row`` with the reason and is
    never opened. A listing needs no such check: it holds only what is under the prefix.
    """
    from frameexit.manifests import load_manifest

    options = dict(storage_options or {})
    fs, path = url_to_fs(uri, options)
    if fs.isdir(path):
        files = list_files(uri, suffixes=suffixes, storage_options=options)
        files = [absolute_uri(f) for f in files if not f.rsplit("/", 1)[-1].startswith(".")]
        if exclude_prefix:
            files = [f for f in files if not f.startswith(exclude_prefix.rstrip("/") + "/")]
        nan = np.full(len(files), np.nan)
        return LabelInputs(_video_table(files, nan, nan), rows_to_table([]), "listing")
    if is_video_file(uri, storage_options=options):
        nan = np.full(1, np.nan)
        return LabelInputs(_video_table([absolute_uri(uri)], nan, nan), rows_to_table([]), "video")

    loaded = load_manifest(
        uri,
        storage_options=options or None,
        save_class_map=False,
        duplicates="keep",
        allowed_prefixes=allowed_prefixes,
        allow_http=allow_http,
    )
    table = loaded.table
    n = len(table)
    videos = _video_table(
        [absolute_uri(v) for v in table["video"].astype(str)],
        _seconds(table, "start"),
        _seconds(table, "end"),
    )
    raws = [str(bad.raw) for bad in loaded.bad_rows.itertuples(index=False)]
    ids = input_ids([bad_row_key(raw) for raw in raws])
    bad_rows = []
    for k, (bad, input_id) in enumerate(
        zip(loaded.bad_rows.itertuples(index=False), ids, strict=True)
    ):
        line = None if bad.line != bad.line or bad.line is None else int(bad.line)
        where = f"line {line}" if line is not None else f"bad row {k + 1}"
        bad_rows.append(
            output_row(
                row=n + k,
                input_id=input_id,
                video=None,
                status=STATUS_BAD_ROW,
                error=f"{uri}: {where}: {bad.reason}: {bad.raw}",
            )
        )
    return LabelInputs(videos, rows_to_table(bad_rows), "manifest", list(loaded.class_names))


def is_video_file(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``uri`` names one video rather than a manifest: a video file suffix
    (``.mp4``, ``.mkv``, ``.webm``, ``.avi``, ``.mov``, ...; then it need not exist), or the
    magic bytes of a video container (MP4/MOV, AVI, Matroska/WebM, MPEG-TS)."""
    from frameexit.manifests.prepare import VIDEO_SUFFIXES
    from frameexit.video.containers import sniff

    if uri.lower().rsplit("/", 1)[-1].endswith(VIDEO_SUFFIXES):
        return True
    fs, path = url_to_fs(uri, dict(storage_options or {}))
    try:
        with fs.open(path, "rb") as handle:
            head = handle.read(200)  # MPEG-TS: two sync bytes 188 apart
    except (OSError, ValueError):
        return False  # the manifest reader reports what is wrong with it

    def read_at(offset: int, size: int) -> bytes:
        return head[offset : offset + size]

    return sniff(read_at) is not None


def _seconds(table: Any, column: str) -> np.ndarray:
    import pandas as pd

    if column not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
