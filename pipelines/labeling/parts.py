"""The exactly-once part protocol: content-named parts, atomic commits, reading back.

A part is ``part-<hash of its sorted input ids>.parquet``, written atomically, so a part
is visible only when complete and committing the same rows twice replaces the file with
the same content instead of adding rows. A rerun reads the ids of the committed parts and
labels only the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from frameexit.storage import is_remote, join_uri, url_to_fs, write_bytes
from pipelines.labeling.schema import (
    CONFIG_NAME,
    FINGERPRINT_NAME,
    OUTPUT_SCHEMA,
    PART_PREFIX,
    SUMMARY_NAME,
    empty_output,
)


def part_name(input_ids: Iterable[str]) -> str:
    """``part-<16 hex>.parquet`` from the sorted ids: the same rows, the same name."""
    digest = hashlib.sha256("\n".join(sorted(input_ids)).encode("utf-8")).hexdigest()
    return f"{PART_PREFIX}{digest[:16]}.parquet"


def list_parts(output: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """URIs of the committed parts under ``output`` (sorted)."""
    fs, path = url_to_fs(output, options)
    if not fs.exists(path):
        return []
    found = fs.glob(f"{path.rstrip('/')}/{PART_PREFIX}*.parquet")
    return sorted(fs.unstrip_protocol(p) if is_remote(output) else p for p in found)


def write_part(output: str, table: pa.Table, options: Mapping[str, Any] | None = None) -> str:
    """Commit ``table`` (rows of ``OUTPUT_SCHEMA``) as one part, atomically; returns its URI."""
    table = table.cast(OUTPUT_SCHEMA).sort_by("row")
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    uri = join_uri(output, part_name(table.column("input_id").to_pylist()))
    write_bytes(uri, buffer.getvalue(), storage_options=options)
    return uri


def read_part(uri: str, options: Mapping[str, Any] | None, columns: list[str] | None = None):
    fs, path = url_to_fs(uri, options)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def committed_ids(output: str, options: Mapping[str, Any] | None = None) -> set[str]:
    """Input ids that already have a committed row under ``output``."""
    ids: set[str] = set()
    for uri in list_parts(output, options):
        ids.update(read_part(uri, options, ["input_id"]).column("input_id").to_pylist())
    return ids


def read_labels(output: str, *, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """All committed rows under ``output`` in input order, one per ``input_id``."""
    tables = [read_part(uri, storage_options) for uri in list_parts(output, storage_options)]
    table = pa.concat_tables(tables) if tables else empty_output()
    frame = table.to_pandas()
    frame = frame.drop_duplicates("input_id", keep="first")
    return frame.sort_values("row", kind="stable").reset_index(drop=True)


def clean_temporaries(output: str, options: Mapping[str, Any] | None) -> None:
    """Remove temporaries a killed local writer left (``.tmp-*``; object stores have none)."""
    if is_remote(output) or not os.path.isdir(output):
        return
    for name in os.listdir(output):
        if name.startswith(".tmp-"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(output, name))


def clear_output(output: str, options: Mapping[str, Any] | None) -> None:
    fs, path = url_to_fs(output, options)
    if not fs.exists(path):
        return
    names = [PART_PREFIX + "*.parquet", FINGERPRINT_NAME, SUMMARY_NAME, CONFIG_NAME]
    for pattern in names:
        for found in fs.glob(f"{path.rstrip('/')}/{pattern}"):
            fs.rm(found)


class PartWriter:
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
