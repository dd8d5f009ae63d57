"""Dataset manifests: ActivityNet JSON, Kinetics / HVU CSV, plain CSV/Parquet → one schema.

Every reader produces the same table (the canonical form, stored as Parquet)::

    video       string            URI of the video file (any fsspec URI)
    labels      list<string>      class names; [] for an unlabeled row (labeling input)
    label_ids   list<int32>       indices into the class map, same order as ``labels``
    split       string            train | val | test | ... (see ``normalize_split``)
    start, end  double, nullable  segment of the file to use, seconds; null = whole file
    duration    double, nullable  seconds (of the segment when start/end are set)
    num_frames  int32, nullable   where known
    ...extras   any other columns (``difficulty``, ``youtube_id``, ``segments`` ...)

Loading::

    file ──parse──► rows ──validate──► duplicates? ──class map──► label_ids ──► ManifestLoad
                      │                    │              │
                      └────────────────────┴──────────────┴──► bad_rows (line, reason, raw)

Bad rows (missing fields, unparsable times, empty label, a label unknown to a given
class map, a duplicate video in the same split, ...) are reported with their line and
reason and never stop the rest; a file that cannot be parsed at all raises
``ManifestError`` naming its URI. ``line`` is the 1-based text line for CSV (header =
line 1), the line of the video's key for JSON, and the 1-based row number for Parquet.

Class map: a list of class names whose positions are the label ids. It is taken from
``class_names`` when given, else from ``classes.json`` beside the manifest when present,
else built once from the sorted label names of the good rows and saved there as
``classes.json`` — so loading ``train.csv`` first and then ``val.csv`` from the same folder
gives val the train map. With a given or stored map, a label not in it is a bad row.

Video URIs for the datasets that name videos by id are built from a pattern (Python
``str.format``) and ``video_root`` (default: the manifest's folder):

- ActivityNet v1.3: ``{root}/v_{id}.mp4`` (fields: ``root``, ``id``, ``subset``, ``split``).
- Kinetics / Mini-Kinetics and HVU:
  ``{root}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (fields: ``root``,
  ``youtube_id``, ``time_start``, ``time_end``, ``label`` (first label), ``split``).
  Such files are pre-trimmed clips, so ``start``/``end`` stay null and the YouTube
  times are kept in the ``time_start``/``time_end`` columns. A pattern that does not use
  ``time_start`` (e.g. ``{root}/{youtube_id}.mp4``, full videos) sets ``start``/``end``
  to the clip's times instead.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import posixpath
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from frameexit.errors import ManifestError
from frameexit.storage import exists, write_bytes

__all__ = [
    "BAD_ROW_COLUMNS",
    "CLASS_MAP_NAME",
    "CORE_COLUMNS",
    "DEFAULT_URI_PATTERNS",
    "FORMATS",
    "MANIFEST_SCHEMA",
    "ManifestLoad",
    "class_map_uri_for",
    "detect_format",
    "load_manifest",
    "normalize_split",
    "read_class_names",
    "read_manifest_parquet",
    "to_arrow",
    "write_class_names",
    "write_manifest",
]

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("activitynet", "kinetics", "hvu", "csv", "parquet")
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
CLASS_MAP_NAME = "classes.json"
KINETICS_PATTERN = "{root}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
DEFAULT_URI_PATTERNS: dict[str, str] = {
    "activitynet": "{root}/v_{id}.mp4",
    "kinetics": KINETICS_PATTERN,
    "hvu": KINETICS_PATTERN,
}
UNASSIGNED_SPLIT = "unassigned"

_FORMAT_ALIASES = {
    "activitynet": "activitynet",
    "activitynet-v1.3": "activitynet",
    "json": "activitynet",
    "kinetics": "kinetics",
    "mini-kinetics": "kinetics",
    "minikinetics": "kinetics",
    "kinetics400": "kinetics",
    "hvu": "hvu",
    "csv": "csv",
    "plain": "csv",
    "parquet": "parquet",
}
_SPLIT_ALIASES = {
    "training": "train",
    "train": "train",
    "validation": "val",
    "valid": "val",
    "validate": "val",
    "val": "val",
    "testing": "test",
    "test": "test",
}
_RAW_LIMIT = 500


@dataclass
class ManifestLoad:
    """Result of ``load_manifest``: the good rows, the bad ones, and the class map."""

    table: pd.DataFrame
    bad_rows: pd.DataFrame
    class_names: list[str]
    uri: str = ""
    fmt: str = ""
    class_map_uri: str | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes in the class map."""
        return len(self.class_names)


@dataclass
class _Row:
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


class _BadRow(Exception):
    """Raised inside a row parser; becomes a bad row, never escapes this module."""


# --------------------------------------------------------------------------- helpers


def normalize_split(value: str) -> str:
    """Map dataset split names to ``train``/``val``/``test`` (``training`` → ``train`` ...).

    Unknown names are kept (lower-cased, stripped)."""
    key = value.strip().lower()
    return _SPLIT_ALIASES.get(key, key)


def class_map_uri_for(manifest_uri: str) -> str:
    """URI of the ``classes.json`` that sits beside ``manifest_uri``."""
    return _join(_parent(manifest_uri), CLASS_MAP_NAME)


def read_class_names(uri: str, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Read a class map: a JSON list of names, or an object with a ``class_names`` list."""
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
            data = json.loads(handle.read().decode("utf-8-sig"))
    except FileNotFoundError as error:
        raise ManifestError(uri, "class map not found") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(uri, f"class map is not valid JSON ({error})") from error
    names = data.get("class_names") if isinstance(data, dict) else data
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ManifestError(uri, "class map must be a JSON list of non-empty strings")
    if len(set(names)) != len(names):
        raise ManifestError(uri, "class map has duplicate names")
    return list(names)


def write_class_names(
    names: Sequence[str], uri: str, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a class map as a JSON list of names (position = label id), atomically."""
    payload = (json.dumps(list(names), indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    _atomic_write(uri, payload, storage_options)


def detect_format(uri: str, head: bytes) -> str:
    """Guess the manifest format from the URI's extension, then from the first bytes."""
    name = uri.lower().rsplit("/", 1)[-1]
    if head.startswith(b"PAR1") or name.endswith((".parquet", ".pq")):
        return "parquet"
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    if name.endswith(".json") or text.startswith("{"):
        return "activitynet"
    header_line = text.splitlines()[0] if text else ""
    try:
        header = next(csv.reader([header_line]))
    except StopIteration:
        header = []
    columns = {c.strip().lower() for c in header}
    if "tags" in columns and "youtube_id" in columns:
        return "hvu"
    if "youtube_id" in columns:
        return "kinetics"
    if "video" in columns:
        return "csv"
    raise ManifestError(
        uri,
        "cannot detect the manifest format (expected .json, .parquet, or a CSV header with "
        f"'video', 'youtube_id' or 'Tags'; got header {header!r}); pass fmt=",
    )


def _protocol(uri: str) -> str:
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else "file"


def _is_local(uri: str) -> bool:
    return _protocol(uri) in ("file", "local")


def _strip_file(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _parent(uri: str) -> str:
    if _is_local(uri):
        return os.path.dirname(os.path.abspath(_strip_file(uri)))
    return uri.rstrip("/").rsplit("/", 1)[0]


def _join(root: str, name: str) -> str:
    if _is_local(root):
        return os.path.join(_strip_file(root), name)
    return root.rstrip("/") + "/" + name.lstrip("/")


def _normalize_root(root: str) -> str:
    if _is_local(root):
        return os.path.abspath(_strip_file(root)).rstrip("/") or "/"
    return root.rstrip("/")


def _resolve_video(value: str, root: str) -> str:
    """A relative local path is joined to ``root``; an absolute path or URI is kept."""
    if "://" in value or posixpath.isabs(value) or os.path.isabs(value):
        return value
    return _join(root, value)


def _atomic_write(uri: str, payload: bytes, storage_options: dict[str, Any] | None) -> None:
    """Readers never see a partial file (``frameexit.storage.write_bytes``)."""
    write_bytes(uri, payload, storage_options=storage_options)


def _read_bytes(uri: str, storage_options: dict[str, Any] | None) -> bytes:
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
            return handle.read()
    except FileNotFoundError as error:
        raise ManifestError(uri, "manifest not found") from error
    except (OSError, ValueError) as error:
        raise ManifestError(uri, f"cannot read manifest ({error})") from error


def _exists(uri: str, storage_options: dict[str, Any] | None) -> bool:
    try:
        return exists(uri, storage_options=storage_options)
    except (OSError, ValueError):
        return False


def _text(uri: str, payload: bytes) -> str:
    try:
        return payload.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(uri, f"not UTF-8 text ({error})") from error


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _parse_float(value: Any, name: str, *, required: bool = False) -> float | None:
    if _is_missing(value):
        if required:
            raise _BadRow(f"missing {name}")
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise _BadRow(f"unparsable {name} {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise _BadRow(f"invalid {name} {value!r} (must be a finite number >= 0)")
    return number


def _parse_int(value: Any, name: str) -> int | None:
    number = _parse_float(value, name)
    if number is None:
        return None
    if not number.is_integer():
        raise _BadRow(f"invalid {name} {value!r} (must be an integer)")
    return int(number)


def _as_int_if_integral(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _pattern_fields(pattern: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(pattern) if name}


def _format_uri(pattern: str, fields: dict[str, Any]) -> str:
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError) as error:
        raise _BadRow(f"uri pattern {pattern!r} needs unknown field {error}") from None
    except (ValueError, TypeError) as error:
        raise _BadRow(f"cannot build video uri with {pattern!r}: {error}") from None


def _split_tags(value: Any) -> list[str]:
    if _is_missing(value):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [str(v) for v in value if not _is_missing(v)]
    else:
        parts = str(value).split("|")
    out: list[str] = []
    for part in parts:
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


def _infer_split(uri: str) -> str | None:
    stem = uri.rsplit("/", 1)[-1].lower()
    tokens = re.split(r"[^a-z]+", stem)
    for token in tokens:
        if token in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[token]
    return None


def _truncate(raw: str) -> str:
    return raw if len(raw) <= _RAW_LIMIT else raw[: _RAW_LIMIT - 3] + "..."


# --------------------------------------------------------------------------- CSV readers


def _csv_records(uri: str, text: str) -> tuple[list[str], Iterable[tuple[int, list[str], str]]]:
    """Header (stripped) and ``(first line number, fields, raw text)`` per non-blank record.

    Handles BOM (already stripped by decoding), ``\\r\\n`` newlines and quoted fields."""
    lines = text.splitlines()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(uri, "empty file (no CSV header)") from None
    except csv.Error as error:
        raise ManifestError(uri, f"unparsable CSV header ({error})", line=1) from error
    header = [h.strip() for h in header]
    if not any(header):
        raise ManifestError(uri, "empty CSV header", line=1)

    def records() -> Iterable[tuple[int, list[str], str]]:
        previous = reader.line_num
        while True:
            start = previous + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise ManifestError(uri, f"unparsable CSV ({error})", line=start) from error
            previous = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            raw = "\n".join(lines[start - 1 : previous]) if lines else ",".join(fields)
            yield start, [f.strip() for f in fields], raw

    return header, records()


def _csv_rows(
    uri: str,
    text: str,
    required: Sequence[str],
    parse: Any,
    bad: list[dict[str, Any]],
) -> list[_Row]:
    header, records = _csv_records(uri, text)
    lower = [h.lower() for h in header]
    missing = [name for name in required if name.lower() not in lower]
    if missing:
        raise ManifestError(uri, f"missing column(s) {missing} in header {header}", line=1)
    rows: list[_Row] = []
    for line, fields, raw in records:
        if len(fields) != len(header):
            bad.append(_bad(line, f"expected {len(header)} fields, got {len(fields)}", raw))
            continue
        record = dict(zip(lower, fields, strict=True))
        original = dict(zip(header, fields, strict=True))
        try:
            rows.append(parse(record, original, line, raw))
        except _BadRow as error:
            bad.append(_bad(line, str(error), raw))
    return rows


def _bad(line: int | None, reason: str, raw: str) -> dict[str, Any]:
    return {"line": line, "reason": reason, "raw": _truncate(raw)}


def _youtube_fields(record: dict[str, str]) -> tuple[str, float, float]:
    youtube_id = record.get("youtube_id", "").strip()
    if not youtube_id:
        raise _BadRow("missing youtube_id")
    t0 = _parse_float(record.get("time_start"), "time_start", required=True)
    t1 = _parse_float(record.get("time_end"), "time_end", required=True)
    assert t0 is not None and t1 is not None
    if t1 <= t0:
        raise _BadRow(f"time_end {t1:g} <= time_start {t0:g}")
    return youtube_id, t0, t1


def _clip_row(
    *,
    line: int,
    raw: str,
    labels: list[str],
    split: str,
    youtube_id: str,
    t0: float,
    t1: float,
    root: str,
    pattern: str,
    extras: dict[str, Any],
) -> _Row:
    fields = {
        "root": root,
        "youtube_id": youtube_id,
        "time_start": _as_int_if_integral(t0),
        "time_end": _as_int_if_integral(t1),
        "label": labels[0] if labels else "",
        "split": split,
    }
    video = _format_uri(pattern, fields)
    trimmed = "time_start" in _pattern_fields(pattern)
    return _Row(
        line=line,
        raw=raw,
        video=video,
        labels=labels,
        split=split,
        start=None if trimmed else t0,
        end=None if trimmed else t1,
        duration=t1 - t0,
        extras={"youtube_id": youtube_id, "time_start": t0, "time_end": t1, **extras},
    )


def _parse_kinetics(
    uri: str, text: str, root: str, pattern: str, default_split: str, bad: list[dict[str, Any]]
) -> list[_Row]:
    header, _ = _csv_records(uri, text)
    has_label = "label" in [h.lower() for h in header]
    known = {"label", "youtube_id", "time_start", "time_end", "split"}

    def parse(record: dict[str, str], original: dict[str, str], line: int, raw: str) -> _Row:
        labels: list[str] = []
        if has_label:
            label = record["label"].strip()
            if not label:
                raise _BadRow("empty label")
            labels = [label]
        youtube_id, t0, t1 = _youtube_fields(record)
        split = normalize_split(record["split"]) if record.get("split") else default_split
        extras = {k: v for k, v in original.items() if k.lower() not in known}
        return _clip_row(
            line=line, raw=raw, labels=labels, split=split, youtube_id=youtube_id,
            t0=t0, t1=t1, root=root, pattern=pattern, extras=extras,
        )  # fmt: skip

    return _csv_rows(uri, text, ("youtube_id", "time_start", "time_end"), parse, bad)


def _parse_hvu(
    uri: str, text: str, root: str, pattern: str, default_split: str, bad: list[dict[str, Any]]
) -> list[_Row]:
    known = {"tags", "youtube_id", "time_start", "time_end", "split"}

    def parse(record: dict[str, str], original: dict[str, str], line: int, raw: str) -> _Row:
        labels = sorted(_split_tags(record["tags"]))
        if not labels:
            raise _BadRow("empty label (no Tags)")
        youtube_id, t0, t1 = _youtube_fields(record)
        split = normalize_split(record["split"]) if record.get("split") else default_split
        extras = {k: v for k, v in original.items() if k.lower() not in known}
        return _clip_row(
            line=line, raw=raw, labels=labels, split=split, youtube_id=youtube_id,
            t0=t0, t1=t1, root=root, pattern=pattern, extras=extras,
        )  # fmt: skip

    return _csv_rows(uri, text, ("tags", "youtube_id", "time_start", "time_end"), parse, bad)


def _plain_row(
    record: dict[str, Any],
    extras: dict[str, Any],
    line: int,
    raw: str,
    root: str,
    default_split: str,
) -> _Row:
    video = record.get("video")
    if _is_missing(video):
        raise _BadRow("missing video")
    labels = _split_tags(record.get("labels"))
    if not labels and not _is_missing(record.get("label")):
        labels = [str(record["label"]).strip()]
    label_ids = None
    if "labels" not in record and "label" not in record and "label_ids" in record:
        ids = record["label_ids"]
        ids = [] if ids is None else list(ids)
        try:
            label_ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise _BadRow(f"unparsable label_ids {ids!r}") from None
    split_value = record.get("split")
    split = default_split if _is_missing(split_value) else normalize_split(str(split_value))
    start = _parse_float(record.get("start"), "start")
    end = _parse_float(record.get("end"), "end")
    if (start is None) != (end is None):
        raise _BadRow("start and end must be given together")
    if start is not None and end is not None and end <= start:
        raise _BadRow(f"end {end:g} <= start {start:g}")
    duration = _parse_float(record.get("duration"), "duration")
    if duration is None and start is not None and end is not None:
        duration = end - start
    num_frames = _parse_int(record.get("num_frames"), "num_frames")
    return _Row(
        line=line,
        raw=raw,
        video=_resolve_video(str(video).strip(), root),
        labels=labels,
        split=split,
        start=start,
        end=end,
        duration=duration,
        num_frames=num_frames,
        label_ids=label_ids,
        extras=extras,
    )


def _parse_plain_csv(
    uri: str, text: str, root: str, default_split: str, bad: list[dict[str, Any]]
) -> list[_Row]:
    def parse(record: dict[str, str], original: dict[str, str], line: int, raw: str) -> _Row:
        extras = {k: v for k, v in original.items() if k.lower() not in CORE_COLUMNS + ("label",)}
        if "label_ids" in record:  # CSV ids come as "3|7"; names win when both are present
            record = dict(record)
            record["label_ids"] = _split_tags(record["label_ids"])
        return _plain_row(record, extras, line, raw, root, default_split)

    return _csv_rows(uri, text, ("video",), parse, bad)


def _parse_parquet(
    uri: str, payload: bytes, root: str, default_split: str, bad: list[dict[str, Any]]
) -> list[_Row]:
    try:
        table = pq.read_table(io.BytesIO(payload))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ManifestError(uri, f"unreadable Parquet ({error})") from error
    if "video" not in table.column_names:
        raise ManifestError(uri, f"missing column 'video' (columns: {table.column_names})")
    rows: list[_Row] = []
    for number, record in enumerate(table.to_pylist(), start=1):
        raw = json.dumps(record, default=str)
        extras = {k: v for k, v in record.items() if k not in CORE_COLUMNS + ("label",)}
        try:
            rows.append(_plain_row(record, extras, number, raw, root, default_split))
        except _BadRow as error:
            bad.append(_bad(number, str(error), raw))
    return rows


# --------------------------------------------------------------------------- ActivityNet


def _json_key_lines(text: str) -> dict[str, list[int]]:
    """Line numbers of every ``"key": {`` occurrence of each key (one pass)."""
    lines: dict[str, list[int]] = {}
    line = 1
    position = 0
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*:\s*\{', text):
        line += text.count("\n", position, match.start())
        position = match.start()
        lines.setdefault(match.group(1), []).append(line)
    return lines


def _parse_activitynet(
    uri: str, text: str, root: str, pattern: str, bad: list[dict[str, Any]]
) -> list[_Row]:
    repeated: list[tuple[str, Any]] = []

    def keep_first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                repeated.append((key, value))
            else:
                out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=keep_first)
    except json.JSONDecodeError as error:
        raise ManifestError(uri, f"invalid JSON ({error.msg})", line=error.lineno) from error
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise ManifestError(uri, "not an ActivityNet file (no 'database' object)")
    database = data["database"]
    key_lines = _json_key_lines(text)
    rows: list[_Row] = []
    for vid, entry in database.items():
        line = key_lines.get(vid, [None])[0]
        raw = json.dumps({vid: entry}, ensure_ascii=False)
        try:
            rows.append(_activitynet_row(str(vid), entry, line, raw, root, pattern))
        except _BadRow as error:
            bad.append(_bad(line, str(error), raw))
    seen: dict[str, int] = {}
    for vid, entry in repeated:  # a video id given twice: the first entry is kept
        if vid not in database or not isinstance(entry, dict) or "subset" not in entry:
            continue
        seen[vid] = seen.get(vid, 0) + 1
        lines = key_lines.get(vid, [])
        line = lines[seen[vid]] if seen[vid] < len(lines) else None
        first = f" (first at line {lines[0]})" if lines else ""
        raw = json.dumps({vid: entry}, ensure_ascii=False)
        bad.append(_bad(line, f"duplicate video id {vid!r}{first}", raw))
    return rows


def _activitynet_row(
    vid: str, entry: Any, line: int | None, raw: str, root: str, pattern: str
) -> _Row:
    if not vid.strip():
        raise _BadRow("empty video id")
    if not isinstance(entry, dict):
        raise _BadRow("video entry is not an object")
    subset = entry.get("subset")
    if not isinstance(subset, str) or not subset.strip():
        raise _BadRow("missing subset")
    split = normalize_split(subset)
    annotations = entry.get("annotations")
    if annotations is None:
        if split != "test":
            raise _BadRow("missing annotations")
        annotations = []
    if not isinstance(annotations, list):
        raise _BadRow("annotations is not a list")
    segments: list[dict[str, Any]] = []
    for number, annotation in enumerate(annotations, start=1):
        if not isinstance(annotation, dict):
            raise _BadRow(f"annotation {number} is not an object")
        label = annotation.get("label")
        if not isinstance(label, str) or not label.strip():
            raise _BadRow(f"annotation {number}: empty label")
        segment = annotation.get("segment")
        if not isinstance(segment, (list, tuple)) or len(segment) != 2:
            raise _BadRow(f"annotation {number}: unparsable segment {segment!r}")
        s0 = _parse_float(segment[0], f"annotation {number} segment start", required=True)
        s1 = _parse_float(segment[1], f"annotation {number} segment end", required=True)
        assert s0 is not None and s1 is not None
        if s1 <= s0:
            raise _BadRow(f"annotation {number}: segment end {s1:g} <= start {s0:g}")
        segments.append({"label": label.strip(), "start": s0, "end": s1})
    if not segments and split != "test":
        raise _BadRow(f"no annotations in subset {subset!r}")
    duration = _parse_float(entry.get("duration"), "duration")
    video = _format_uri(pattern, {"root": root, "id": vid, "subset": subset, "split": split})
    extras: dict[str, Any] = {"segments": segments}
    if isinstance(entry.get("url"), str):
        extras["url"] = entry["url"]
    return _Row(
        line=line,
        raw=raw,
        video=video,
        labels=sorted({s["label"] for s in segments}),
        split=split,
        duration=duration,
        extras=extras,
    )


# --------------------------------------------------------------------------- load


def load_manifest(
    uri: str,
    *,
    fmt: str | None = None,
    video_root: str | None = None,
    class_names: Sequence[str] | str | None = None,
    uri_pattern: str | None = None,
    split: str | None = None,
    save_class_map: bool = True,
    strict: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ManifestLoad:
    """Read any supported manifest into the canonical table.

    Args:
        uri: manifest file (any fsspec URI).
        fmt: ``activitynet | kinetics | hvu | csv | parquet``; None = detect from the
            extension, then the content (JSON, Parquet magic, CSV header).
        video_root: folder the video URIs are built under (default: the manifest's folder).
            Also the base of relative ``video`` paths in plain CSV/Parquet.
        class_names: the class map (list, or URI of a ``classes.json``); None = reuse
            ``classes.json`` beside the manifest, else build it (sorted) and save it there.
        uri_pattern: overrides ``DEFAULT_URI_PATTERNS[fmt]`` (see the module docstring).
        split: split for rows whose file says none (HVU, or a CSV without ``split``);
            default: ``train``/``val``/``test`` from the file name, else ``unassigned``.
        save_class_map: write a newly built class map beside the manifest.
        strict: raise ``ManifestError`` on the first bad row instead of reporting it.
        storage_options: fsspec options (e.g. S3 endpoint and keys).

    Raises:
        ManifestError: the file is missing or cannot be parsed at all (names the URI).
    """
    payload = _read_bytes(uri, storage_options)
    if not payload.strip():
        raise ManifestError(uri, "empty manifest")
    if fmt is None:
        fmt = detect_format(uri, payload[:4096])
    key = fmt.strip().lower()
    if key not in _FORMAT_ALIASES:
        raise ManifestError(uri, f"unknown manifest format {fmt!r} (one of {FORMATS})")
    fmt = _FORMAT_ALIASES[key]
    root = _normalize_root(video_root) if video_root else _parent(uri)
    default_split = normalize_split(split) if split else (_infer_split(uri) or UNASSIGNED_SPLIT)
    pattern = uri_pattern or DEFAULT_URI_PATTERNS.get(fmt, "")

    bad: list[dict[str, Any]] = []
    if fmt == "parquet":
        rows = _parse_parquet(uri, payload, root, default_split, bad)
    else:
        text = _text(uri, payload)
        if fmt == "activitynet":
            rows = _parse_activitynet(uri, text, root, pattern, bad)
        elif fmt == "kinetics":
            rows = _parse_kinetics(uri, text, root, pattern, default_split, bad)
        elif fmt == "hvu":
            rows = _parse_hvu(uri, text, root, pattern, default_split, bad)
        else:
            rows = _parse_plain_csv(uri, text, root, default_split, bad)

    rows = _drop_duplicates(rows, bad)
    names, map_uri, built = _resolve_class_map(uri, rows, class_names, storage_options)
    rows = _assign_label_ids(rows, names, bad)
    if built and names and save_class_map:
        map_uri = class_map_uri_for(uri)
        try:
            write_class_names(names, map_uri, storage_options=storage_options)
        except (OSError, PermissionError) as error:
            log.warning("could not save class map beside %s: %s", uri, error)
            map_uri = None

    bad_rows = pd.DataFrame(bad, columns=list(BAD_ROW_COLUMNS))
    if not bad_rows.empty:
        bad_rows["line"] = bad_rows["line"].astype("Int64")
        bad_rows = bad_rows.sort_values("line", kind="stable", na_position="last")
        bad_rows = bad_rows.reset_index(drop=True)
        first = bad_rows.iloc[0]
        if strict:
            line = None if pd.isna(first["line"]) else int(first["line"])
            raise ManifestError(uri, str(first["reason"]), line=line)
        log.warning(
            "%s: %d bad row(s) reported in ManifestLoad.bad_rows (first: line %s: %s)",
            uri,
            len(bad_rows),
            first["line"],
            first["reason"],
        )
    else:
        bad_rows = _empty_bad_rows()
    return ManifestLoad(
        table=_rows_to_frame(rows),
        bad_rows=bad_rows,
        class_names=names,
        uri=uri,
        fmt=fmt,
        class_map_uri=map_uri,
    )


def _empty_bad_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line": pd.Series([], dtype="Int64"),
            "reason": pd.Series([], dtype=object),
            "raw": pd.Series([], dtype=object),
        }
    )


def _drop_duplicates(rows: list[_Row], bad: list[dict[str, Any]]) -> list[_Row]:
    seen: dict[tuple[str, str], _Row] = {}
    kept: list[_Row] = []
    for row in rows:
        key = (row.video, row.split)
        if key in seen:
            first = seen[key].line
            where = f" (first at line {first})" if first is not None else ""
            bad.append(_bad(row.line, f"duplicate video in split {row.split!r}{where}", row.raw))
            continue
        seen[key] = row
        kept.append(row)
    return kept


def _resolve_class_map(
    uri: str,
    rows: list[_Row],
    class_names: Sequence[str] | str | None,
    storage_options: dict[str, Any] | None,
) -> tuple[list[str], str | None, bool]:
    """(class names, URI of the file they came from if any, whether they were built here)."""
    if isinstance(class_names, str):
        return read_class_names(class_names, storage_options=storage_options), class_names, False
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names):
            raise ManifestError(uri, "class_names has duplicate names")
        return names, None, False
    beside = class_map_uri_for(uri)
    if _exists(beside, storage_options):
        return read_class_names(beside, storage_options=storage_options), beside, False
    return sorted({label for row in rows for label in row.labels}), None, True


def _assign_label_ids(rows: list[_Row], names: list[str], bad: list[dict[str, Any]]) -> list[_Row]:
    index = {name: i for i, name in enumerate(names)}
    kept: list[_Row] = []
    for row in rows:
        if row.label_ids is not None:  # ids without names (Parquet): map ids → names
            wrong = [i for i in row.label_ids if not 0 <= i < len(names)]
            if wrong:
                bad.append(_bad(row.line, f"label_ids {wrong} not in class map", row.raw))
                continue
            row.labels = [names[i] for i in row.label_ids]
        else:
            unknown = [label for label in row.labels if label not in index]
            if unknown:
                reason = f"label(s) {unknown} not in class map ({len(names)} classes)"
                bad.append(_bad(row.line, reason, row.raw))
                continue
            row.label_ids = [index[label] for label in row.labels]
        kept.append(row)
    return kept


def _rows_to_frame(rows: list[_Row]) -> pd.DataFrame:
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


# --------------------------------------------------------------------------- Parquet form


def to_arrow(frame: pd.DataFrame, *, uri: str = "<frame>") -> pa.Table:
    """Coerce a manifest DataFrame to the canonical Arrow schema (extras inferred).

    ``video`` is required; ``labels``/``label_ids`` default to empty lists (both or
    neither), ``split`` to ``unassigned``, the rest to null."""
    if "video" not in frame.columns:
        raise ManifestError(uri, f"manifest has no 'video' column (columns: {list(frame.columns)})")
    n = len(frame)
    videos = frame["video"].tolist()
    for number, video in enumerate(videos, start=1):
        if _is_missing(video):
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
        return [None if _is_missing(v) else v for v in frame[name].tolist()]

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


def write_manifest(
    frame: pd.DataFrame, uri: str, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a manifest in the canonical Parquet form to ``uri`` (atomically)."""
    table = to_arrow(frame, uri=uri)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    _atomic_write(uri, buffer.getvalue(), storage_options)


def read_manifest_parquet(
    uri: str, *, storage_options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a canonical Parquet manifest back into the DataFrame ``load_manifest`` gives.

    Lists are Python lists, ``num_frames`` is nullable ``Int32``, missing optional core
    columns are filled with defaults."""
    payload = _read_bytes(uri, storage_options)
    try:
        table = pq.read_table(io.BytesIO(payload))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ManifestError(uri, f"unreadable Parquet ({error})") from error
    if "video" not in table.column_names:
        raise ManifestError(uri, f"missing column 'video' (columns: {table.column_names})")
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
