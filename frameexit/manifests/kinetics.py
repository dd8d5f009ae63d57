"""Kinetics / Mini-Kinetics CSV (``label,youtube_id,time_start,time_end,split``), and the
YouTube-clip row logic HVU shares with it.

Videos are built from ``KINETICS_PATTERN`` (see the package docstring): clip files are
pre-trimmed, so ``start``/``end`` stay null and the YouTube times are kept in the
``time_start``/``time_end`` columns, unless the pattern does not use ``time_start``
(full videos), in which case ``start``/``end`` are the clip's times. ``label`` is optional
(Kinetics test lists have none); other unknown columns are kept as extras.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from frameexit.errors import ManifestError
from frameexit.manifests.parsing import (
    BadRow,
    Source,
    as_int_if_integral,
    csv_records,
    csv_rows,
    format_uri,
    normalize_split,
    pattern_fields,
    youtube_fields,
)
from frameexit.manifests.schema import Row

KINETICS_PATTERN = "{root}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"


def read_kinetics(source: Source, bad: list[dict[str, Any]]) -> list[Row]:
    """Rows of a Kinetics-400 / Mini-Kinetics CSV."""

    def labels(record: dict[str, str]) -> list[str]:
        if "label" not in record:
            return []
        label = record["label"].strip()
        if not label:
            raise BadRow("empty label")
        return [label]

    required = ("youtube_id", "time_start", "time_end")
    return read_clip_csv(
        source, bad, required=required, label_column="label", labels=labels, fmt="kinetics",
        expected="label,youtube_id,time_start,time_end[,split]", foreign={"tags": "hvu"},
    )  # fmt: skip


def read_clip_csv(
    source: Source,
    bad: list[dict[str, Any]],
    *,
    required: Sequence[str],
    label_column: str,
    labels: Callable[[dict[str, str]], list[str]],
    fmt: str,
    expected: str,
    foreign: Mapping[str, str],
) -> list[Row]:
    """Rows of a CSV of YouTube clips (``youtube_id``, ``time_start``, ``time_end``, an
    optional ``split``); ``labels(record)`` reads the labels from ``label_column``.
    A header that does not fit format ``fmt`` (a ``required`` column missing, or a
    ``foreign`` column that marks another format) fails the file, naming the expected
    (``expected``) and found columns: read as the wrong format, every row would parse
    with no label."""
    check_header(source, fmt, required, expected, foreign)
    known = {label_column, "youtube_id", "time_start", "time_end", "split"}

    def parse(record: dict[str, str], original: dict[str, str], line: int, raw: str) -> Row:
        names = labels(record)
        youtube_id, t0, t1 = youtube_fields(record)
        split = normalize_split(record["split"]) if record.get("split") else source.default_split
        extras = {k: v for k, v in original.items() if k.lower() not in known}
        fields = {
            "root": source.root,
            "youtube_id": youtube_id,
            "time_start": as_int_if_integral(t0),
            "time_end": as_int_if_integral(t1),
            "label": names[0] if names else "",
            "split": split,
        }
        video = format_uri(source.pattern, fields)
        trimmed = "time_start" in pattern_fields(source.pattern)
        return Row(
            line=line,
            raw=raw,
            video=video,
            labels=names,
            split=split,
            start=None if trimmed else t0,
            end=None if trimmed else t1,
            duration=t1 - t0,
            extras={"youtube_id": youtube_id, "time_start": t0, "time_end": t1, **extras},
        )

    return csv_rows(source.uri, source.text(), required, parse, bad)


def check_header(
    source: Source,
    fmt: str,
    required: Sequence[str],
    expected: str,
    foreign: Mapping[str, str],
) -> None:
    """Refuse a CSV whose header is not format ``fmt``'s (see :func:`read_clip_csv`)."""
    header, _ = csv_records(source.uri, source.text())
    lower = {column.lower() for column in header}
    missing = [name for name in required if name not in lower]
    other = sorted({foreign[c] for c in lower if c in foreign})
    if not missing and not other:
        return
    why = f"missing column(s) {missing}" if missing else ""
    if other:
        marks = [c for c in header if c.lower() in foreign]
        why += ("; " if why else "") + f"{marks} mark(s) a {' / '.join(other)} file"
    hint = f" (--format {other[0]})" if other else ""
    raise ManifestError(
        source.uri,
        f"the header does not fit format {fmt!r}: expected columns {expected}, found "
        f"{','.join(header)} — {why}{hint}",
        line=1,
    )
