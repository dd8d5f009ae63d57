"""Plain manifests: a CSV or Parquet file whose columns are (a subset of) the canonical ones.

Only ``video`` is required. Labels come from ``labels`` (``a|b`` in CSV, a list in
Parquet) or a single ``label``; a file with ``label_ids`` but no names gets its names from
the class map. Relative ``video`` paths are joined to the video root; every other column
is kept as an extra. Parquet rows are numbered from 1 (there are no text lines).
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from frameexit.confinement import Refused, join_under
from frameexit.manifests.parsing import (
    BadRow,
    Source,
    bad_record,
    csv_rows,
    is_missing,
    normalize_split,
    parse_float,
    parse_int,
    split_tags,
)
from frameexit.manifests.schema import CORE_COLUMNS, Row, read_parquet_table

_NOT_EXTRAS = CORE_COLUMNS + ("label",)


def read_csv(source: Source, bad: list[dict[str, Any]]) -> list[Row]:
    """Rows of a plain CSV manifest."""

    def parse(record: dict[str, str], original: dict[str, str], line: int, raw: str) -> Row:
        extras = {k: v for k, v in original.items() if k.lower() not in _NOT_EXTRAS}
        if "label_ids" in record:  # CSV ids come as "3|7"; names win when both are present
            record = dict(record)
            record["label_ids"] = split_tags(record["label_ids"])
        return _plain_row(record, extras, line, raw, source)

    return csv_rows(source.uri, source.text(), ("video",), parse, bad)


def read_parquet(source: Source, bad: list[dict[str, Any]]) -> list[Row]:
    """Rows of a Parquet manifest (the canonical form or any table with ``video``)."""
    table = read_parquet_table(source.uri, source.payload)
    rows: list[Row] = []
    for number, record in enumerate(table.to_pylist(), start=1):
        raw = json.dumps(record, default=str)
        extras = {k: v for k, v in record.items() if k not in _NOT_EXTRAS}
        try:
            rows.append(_plain_row(record, extras, number, raw, source))
        except BadRow as error:
            bad.append(bad_record(number, str(error), raw))
    return rows


def _plain_row(
    record: dict[str, Any], extras: dict[str, Any], line: int, raw: str, source: Source
) -> Row:
    """One row from a record keyed by canonical column names (CSV or Parquet)."""
    video = record.get("video")
    if is_missing(video):
        raise BadRow("missing video")
    labels = split_tags(record.get("labels"))
    if not labels and not is_missing(record.get("label")):
        labels = [str(record["label"]).strip()]
    label_ids = None
    if "labels" not in record and "label" not in record and "label_ids" in record:
        ids = record["label_ids"]
        ids = [] if ids is None else list(ids)
        try:
            label_ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise BadRow(f"unparsable label_ids {ids!r}") from None
    split_value = record.get("split")
    split = source.default_split if is_missing(split_value) else normalize_split(str(split_value))
    start = parse_float(record.get("start"), "start")
    end = parse_float(record.get("end"), "end")
    if (start is None) != (end is None):
        raise BadRow("start and end must be given together")
    if start is not None and end is not None and end <= start:
        raise BadRow(f"end {end:g} <= start {start:g}")
    duration = parse_float(record.get("duration"), "duration")
    if duration is None and start is not None and end is not None:
        duration = end - start
    num_frames = parse_int(record.get("num_frames"), "num_frames")
    return Row(
        line=line,
        raw=raw,
        video=_resolve_video(str(video).strip(), source.root),
        labels=labels,
        split=split,
        start=start,
        end=end,
        duration=duration,
        num_frames=num_frames,
        label_ids=label_ids,
        extras=extras,
    )


def _resolve_video(value: str, root: str) -> str:
    """A relative path is joined under ``root`` (never above it: ``..`` that climbs out
    is a ``BadRow``); an absolute path or URI is kept (the loader's confinement judges it)."""
    if "://" in value or posixpath.isabs(value) or os.path.isabs(value):
        return value
    try:
        return join_under(root, value)
    except Refused as error:
        raise BadRow(str(error)) from None
