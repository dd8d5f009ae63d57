"""Helpers every manifest reader shares: the reader's input, values, CSV records, splits,
bad-row records, YouTube clip fields and video-URI patterns.

A row parser raises :class:`BadRow` for a row it rejects; the reader turns it into a
bad-row record (:func:`bad_record`) and goes on. :class:`~frameexit.errors.ManifestError`
is only for a file that cannot be parsed at all.
"""

from __future__ import annotations

import csv
import io
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from frameexit.errors import ManifestError
from frameexit.storage import read_bytes

T = TypeVar("T")

SPLIT_ALIASES = {
    "training": "train",
    "train": "train",
    "validation": "val",
    "valid": "val",
    "validate": "val",
    "val": "val",
    "testing": "test",
    "test": "test",
}
RAW_LIMIT = 500  # characters of a bad row's raw text that are kept
# longest CSV field read (Python's csv default): a longer one fails its row, not the file
FIELD_LIMIT = 131_072


class BadRow(Exception):
    """Raised inside a row parser; becomes a bad row, never escapes the package."""


@dataclass(frozen=True)
class Source:
    """What a reader gets: the manifest's bytes and the settings resolved from its URI."""

    uri: str
    payload: bytes
    root: str  # folder video URIs are built under / relative paths are joined to
    pattern: str  # video URI pattern ("" for formats that name their videos)
    default_split: str  # split of rows whose file says none

    def text(self) -> str:
        """The payload decoded as UTF-8 (a BOM is dropped)."""
        try:
            return self.payload.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ManifestError(self.uri, f"not UTF-8 text ({error})") from error


def read_manifest_bytes(uri: str, storage_options: dict[str, Any] | None) -> bytes:
    """Read a manifest file; a missing or unreadable one is a ``ManifestError``."""
    try:
        return read_bytes(uri, storage_options=storage_options)
    except FileNotFoundError as error:
        raise ManifestError(uri, "manifest not found") from error
    except (OSError, ValueError) as error:
        raise ManifestError(uri, f"cannot read manifest ({error})") from error


# --------------------------------------------------------------------------- values


def is_missing(value: Any) -> bool:
    """None, NA, NaN and blank strings all mean "not given"."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def parse_float(value: Any, name: str, *, required: bool = False) -> float | None:
    """A finite number >= 0, or None when missing (a ``BadRow`` when ``required``)."""
    if is_missing(value):
        if required:
            raise BadRow(f"missing {name}")
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise BadRow(f"unparsable {name} {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise BadRow(f"invalid {name} {value!r} (must be a finite number >= 0)")
    return number


def parse_int(value: Any, name: str) -> int | None:
    """Like :func:`parse_float`, but the number must be integral."""
    number = parse_float(value, name)
    if number is None:
        return None
    if not number.is_integer():
        raise BadRow(f"invalid {name} {value!r} (must be an integer)")
    return int(number)


def parse_segment(
    segment: Any, number: int, classes: Mapping[str, int]
) -> tuple[str, float, float]:
    """``(label, start, end)`` of a ``{"label", "start", "end"}`` segment; a ``BadRow``
    when a bound is missing, negative, not finite or not after the start, or the label is
    not in ``classes``."""
    if not isinstance(segment, Mapping):
        raise BadRow(f"segment {number} is not an object: {segment!r}")
    label = segment.get("label")
    if not isinstance(label, str) or not label.strip():
        raise BadRow(f"segment {number}: missing label")
    label = label.strip()
    if label not in classes:
        raise BadRow(f"segment {number}: label {label!r} is not in the class map")
    start = parse_float(segment.get("start"), f"segment {number} start", required=True)
    end = parse_float(segment.get("end"), f"segment {number} end", required=True)
    assert start is not None and end is not None
    if end <= start:
        raise BadRow(f"segment {number}: end {end:g} <= start {start:g}")
    return label, start, end


def split_tags(value: Any) -> list[str]:
    """Names from ``a|b|c`` or a list: stripped, blanks and repeats dropped, order kept."""
    if is_missing(value):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [str(v) for v in value if not is_missing(v)]
    else:
        parts = str(value).split("|")
    out: list[str] = []
    for part in parts:
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


# --------------------------------------------------------------------------- splits


def normalize_split(value: str) -> str:
    """Map dataset split names to ``train``/``val``/``test`` (``training`` → ``train`` ...).

    Unknown names are kept (lower-cased, stripped)."""
    key = value.strip().lower()
    return SPLIT_ALIASES.get(key, key)


def infer_split(uri: str) -> str | None:
    """The split a file name spells (``kinetics400_val.csv`` → ``val``), if any."""
    stem = uri.rsplit("/", 1)[-1].lower()
    tokens = re.split(r"[^a-z]+", stem)
    for token in tokens:
        if token in SPLIT_ALIASES:
            return SPLIT_ALIASES[token]
    return None


# --------------------------------------------------------------------------- bad rows


def bad_record(line: int | None, reason: str, raw: str) -> dict[str, Any]:
    """One row of ``ManifestLoad.bad_rows`` (``raw`` cut to ``RAW_LIMIT`` characters)."""
    if len(raw) > RAW_LIMIT:
        raw = raw[: RAW_LIMIT - 3] + "..."
    return {"line": line, "reason": reason, "raw": raw}


# --------------------------------------------------------------------------- CSV


def csv_records(
    uri: str, text: str
) -> tuple[list[str], Iterable[tuple[int, list[str] | None, str]]]:
    """Header (stripped) and ``(first line number, fields, raw text)`` per non-blank record.

    Handles BOM (already stripped by decoding), ``\\r\\n`` newlines and quoted fields. A
    record with a field over :data:`FIELD_LIMIT` characters comes with ``fields`` None:
    the csv module stops at its own limit (so such a field is never held whole), and
    reading goes on at the record's end as the CSV grammar finds it."""
    lines = io.StringIO(text, newline="").readlines()
    feed = _Lines(lines)
    reader = csv.reader(feed)
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(uri, "empty file (no CSV header)") from None
    except csv.Error as error:
        raise ManifestError(uri, f"unparsable CSV header ({error})", line=1) from error
    header = [h.strip() for h in header]
    if not any(header):
        raise ManifestError(uri, "empty CSV header", line=1)

    def records() -> Iterable[tuple[int, list[str] | None, str]]:
        while True:
            start = feed.position
            try:
                fields: list[str] | None = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                if "field limit" not in str(error):
                    raise ManifestError(uri, f"unparsable CSV ({error})", line=start + 1) from error
                feed.position = _record_end(lines, start) + 1
                fields = None
            if fields is not None and any(len(f) > FIELD_LIMIT for f in fields):
                fields = None  # the csv module's limit was raised elsewhere in the process
            if fields is not None and (not fields or all(not f.strip() for f in fields)):
                continue
            raw = _raw_text(lines, start, feed.position)
            yield start + 1, None if fields is None else [f.strip() for f in fields], raw

    return header, records()


class _Lines:
    """The lines the csv reader reads, with the position of the next one (settable, so a
    record the reader gave up on can be skipped to its end)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.position = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.position >= len(self.lines):
            raise StopIteration
        self.position += 1
        return self.lines[self.position - 1]


_UNQUOTED_END = re.compile(r"[,\r\n]")


def _record_end(lines: list[str], start: int) -> int:
    """Index of the last line of the CSV record starting at line index ``start`` (the
    default dialect's grammar: a quote opens a field only at its start, ``""`` is a
    quote inside one, a newline ends the record outside quotes)."""
    state = "start"  # start of a field | unquoted field | inside quotes
    for index in range(start, len(lines)):
        line, pos = lines[index], 0
        while pos < len(line):
            if state == "quoted":
                close = line.find('"', pos)
                if close < 0:
                    break
                if line.startswith('"', close + 1):
                    pos = close + 2
                    continue
                state, pos = "field", close + 1
            elif state == "start" and line[pos] == '"':
                state, pos = "quoted", pos + 1
            else:
                end = _UNQUOTED_END.search(line, pos)
                if end is None:
                    state, pos = "field", len(line)
                elif end.group() == ",":
                    state, pos = "start", end.end()
                else:
                    return index
        if state != "quoted" and index == len(lines) - 1:
            return index
    return len(lines) - 1


def _raw_text(lines: list[str], start: int, stop: int) -> str:
    """The text of lines ``[start, stop)`` without their line ends, at most a little over
    ``RAW_LIMIT`` characters (an oversized record is not copied whole)."""
    out: list[str] = []
    size = 0
    for line in lines[start:stop]:
        out.append(line.rstrip("\r\n")[: RAW_LIMIT + 1])
        size += len(out[-1])
        if size > RAW_LIMIT:
            break
    return "\n".join(out)


def csv_rows(
    uri: str,
    text: str,
    required: Sequence[str],
    parse: Callable[[dict[str, str], dict[str, str], int, str], T],
    bad: list[dict[str, Any]],
) -> list[T]:
    """Parse every CSV record with ``parse(record, original, line, raw)``.

    ``record`` is keyed by the lower-cased header, ``original`` by the header as written.
    A missing ``required`` column fails the file; a record with the wrong number of fields
    or one ``parse`` rejects goes to ``bad``."""
    header, records = csv_records(uri, text)
    lower = [h.lower() for h in header]
    missing = [name for name in required if name.lower() not in lower]
    if missing:
        raise ManifestError(uri, f"missing column(s) {missing} in header {header}", line=1)
    rows: list[T] = []
    for line, fields, raw in records:
        if fields is None:
            bad.append(bad_record(line, f"field too long (over {FIELD_LIMIT} characters)", raw))
            continue
        if len(fields) != len(header):
            bad.append(bad_record(line, f"expected {len(header)} fields, got {len(fields)}", raw))
            continue
        record = dict(zip(lower, fields, strict=True))
        original = dict(zip(header, fields, strict=True))
        try:
            rows.append(parse(record, original, line, raw))
        except BadRow as error:
            bad.append(bad_record(line, str(error), raw))
    return rows


# --------------------------------------------------------------------------- YouTube clips


def youtube_fields(record: dict[str, str]) -> tuple[str, float, float]:
    """``(youtube_id, time_start, time_end)`` of a Kinetics-style record."""
    youtube_id = record.get("youtube_id", "").strip()
    if not youtube_id:
        raise BadRow("missing youtube_id")
    t0 = parse_float(record.get("time_start"), "time_start", required=True)
    t1 = parse_float(record.get("time_end"), "time_end", required=True)
    assert t0 is not None and t1 is not None
    if t1 <= t0:
        raise BadRow(f"time_end {t1:g} <= time_start {t0:g}")
    return youtube_id, t0, t1


# --------------------------------------------------------------------------- URI patterns


def as_int_if_integral(value: float) -> int | float:
    """``10.0`` → ``10`` so that ``{time_start:06d}`` works; ``10.5`` stays a float."""
    return int(value) if float(value).is_integer() else value


def pattern_fields(pattern: str) -> set[str]:
    """The field names a ``str.format`` pattern uses."""
    return {name for _, name, _, _ in string.Formatter().parse(pattern) if name}


def format_uri(pattern: str, fields: dict[str, Any]) -> str:
    """Build a video URI from ``pattern``; a pattern that does not fit, or a manifest
    value with a ``..`` path segment (an id that would climb out of the video root), is a
    ``BadRow``."""
    for name in pattern_fields(pattern) - {"root"}:
        value = fields.get(name)
        if isinstance(value, str) and ".." in re.split(r"[/\\]", value):
            raise BadRow(f"{name} {value!r} climbs out of the video root (a '..' segment)")
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError) as error:
        raise BadRow(f"uri pattern {pattern!r} needs unknown field {error}") from None
    except (ValueError, TypeError) as error:
        raise BadRow(f"cannot build video uri with {pattern!r}: {error}") from None
