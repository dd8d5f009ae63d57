"""``load_manifest``: read a manifest of any supported format into the canonical table.

The format is looked up in :data:`READERS` (format name → reader). A reader takes a
:class:`~frameexit.manifests.parsing.Source` and a list to append bad-row records to, and
returns the good rows; everything after that (duplicates, class map, label ids, the bad
rows frame) is the same for every format. Adding a format is one module with its reader
and one entry in ``READERS`` (plus one in ``DEFAULT_URI_PATTERNS`` if it builds video
URIs from ids, and aliases in ``_FORMAT_ALIASES`` if it has other names).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from frameexit.confinement import Confinement
from frameexit.errors import ConfigError, ManifestError
from frameexit.manifests.activitynet import ACTIVITYNET_PATTERN, read_activitynet
from frameexit.manifests.classmap import (
    assign_label_ids,
    class_map_uri_for,
    resolve_class_map,
    write_class_names,
)
from frameexit.manifests.hvu import read_hvu
from frameexit.manifests.kinetics import KINETICS_PATTERN, read_kinetics
from frameexit.manifests.parsing import (
    Source,
    bad_record,
    infer_split,
    normalize_split,
    read_manifest_bytes,
)
from frameexit.manifests.plain import read_csv, read_parquet
from frameexit.manifests.schema import BAD_ROW_COLUMNS, UNASSIGNED_SPLIT, Row, rows_to_frame
from frameexit.storage import absolute_uri, parent_uri

log = logging.getLogger(__package__)  # "frameexit.manifests", as before the package split

Reader = Callable[[Source, list[dict[str, Any]]], list[Row]]

READERS: dict[str, Reader] = {
    "activitynet": read_activitynet,
    "kinetics": read_kinetics,
    "hvu": read_hvu,
    "csv": read_csv,
    "parquet": read_parquet,
}
FORMATS: tuple[str, ...] = tuple(READERS)
DEFAULT_URI_PATTERNS: dict[str, str] = {
    "activitynet": ACTIVITYNET_PATTERN,
    "kinetics": KINETICS_PATTERN,
    "hvu": KINETICS_PATTERN,
}
# Other names of the formats (lower-case); a name of READERS is its own alias.
_FORMAT_ALIASES = {
    "activitynet-v1.3": "activitynet",
    "json": "activitynet",
    "mini-kinetics": "kinetics",
    "minikinetics": "kinetics",
    "kinetics400": "kinetics",
    "plain": "csv",
}


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
    duplicates: str = "report",
    storage_options: dict[str, Any] | None = None,
    allowed_prefixes: Sequence[str] | None = None,
    allow_http: bool = False,
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
        uri_pattern: overrides ``DEFAULT_URI_PATTERNS[fmt]`` (see the package docstring).
        split: split for rows whose file says none (HVU, or a CSV without ``split``);
            default: ``train``/``val``/``test`` from the file name, else ``unassigned``.
        save_class_map: write a newly built class map beside the manifest.
        strict: raise ``ManifestError`` on the first bad row instead of reporting it.
        duplicates: ``report`` — a row repeating an earlier one's video, segment and
            split is a bad row (training must not see a video twice); ``keep`` — kept as
            its own row (labeling: every entry gets one output row). Different segments
            of one video are never duplicates.
        storage_options: fsspec options (e.g. S3 endpoint and keys).
        allowed_prefixes: where rows may point (``data.allowed_prefixes``); empty or None
            = the default: the manifest's bucket (remote) or directory tree (local), the
            video root and the synthetic default corpus (``frameexit.confinement``). A
            row outside is a bad row with the reason; it is never opened.
        allow_http: ``data.allow_http``: accept plain ``http(s)://`` videos (link-local
            and cloud metadata hosts stay refused).

    Raises:
        ManifestError: the file is missing or cannot be parsed at all (names the URI).
    """
    confinement = _confinement(uri, video_root, allowed_prefixes, allow_http)
    payload = read_manifest_bytes(uri, storage_options)
    if not payload.strip():
        raise ManifestError(uri, "empty manifest")
    if fmt is None:
        fmt = detect_format(uri, payload[:4096])
    key = fmt.strip().lower()
    key = _FORMAT_ALIASES.get(key, key)
    if key not in READERS:
        raise ManifestError(uri, f"unknown manifest format {fmt!r} (one of {FORMATS})")
    fmt = key
    source = Source(
        uri=uri,
        payload=payload,
        root=absolute_uri(video_root) if video_root else parent_uri(uri),
        pattern=uri_pattern or DEFAULT_URI_PATTERNS.get(fmt, ""),
        default_split=normalize_split(split) if split else (infer_split(uri) or UNASSIGNED_SPLIT),
    )

    bad: list[dict[str, Any]] = []
    if duplicates not in ("report", "keep"):
        raise ValueError(f"duplicates must be 'report' or 'keep', got {duplicates!r}")
    parsed = READERS[fmt](source, bad)
    rows = _confine(parsed, confinement, bad)
    if duplicates == "report":
        rows = _drop_duplicates(rows, bad)
    # the class map of every parsed row, refused ones too: ids do not depend on where
    # rows may point (a class whose videos are all elsewhere keeps its id)
    names, map_uri, built = resolve_class_map(uri, parsed, class_names, storage_options)
    rows = assign_label_ids(rows, names, bad)
    if built and names and save_class_map:
        map_uri = class_map_uri_for(uri)
        try:
            write_class_names(names, map_uri, storage_options=storage_options)
        except (OSError, PermissionError) as error:
            log.warning("could not save class map beside %s: %s", uri, error)
            map_uri = None

    bad_rows = _bad_rows_frame(uri, bad, strict)
    return ManifestLoad(
        table=rows_to_frame(rows),
        bad_rows=bad_rows,
        class_names=names,
        uri=uri,
        fmt=fmt,
        class_map_uri=map_uri,
    )


def _confinement(
    uri: str, video_root: str | None, allowed_prefixes: Sequence[str] | None, allow_http: bool
) -> Confinement:
    """The confinement of this manifest's rows (a bad allowed prefix names its field)."""
    if not isinstance(allow_http, bool):
        raise ConfigError("data.allow_http", f"must be true or false, got {allow_http!r}")
    try:
        return Confinement.for_manifest(
            uri, video_root=video_root, allowed_prefixes=allowed_prefixes, allow_http=allow_http
        )
    except ValueError as error:
        raise ConfigError("data.allowed_prefixes", str(error)) from None


def _confine(rows: list[Row], confinement: Confinement, bad: list[dict[str, Any]]) -> list[Row]:
    """The rows whose video may be opened; every other row becomes a bad row with the
    reason (before anything opens it, so no status can tell what exists out there)."""
    kept: list[Row] = []
    for row in rows:
        why = confinement.refusal(row.video)
        if why:
            bad.append(bad_record(row.line, why, row.raw))
        else:
            kept.append(row)
    return kept


def _drop_duplicates(rows: list[Row], bad: list[dict[str, Any]]) -> list[Row]:
    """Keep the first row of each (video, segment, split); the others are bad rows."""
    seen: dict[tuple[Any, ...], Row] = {}
    kept: list[Row] = []
    for row in rows:
        key = (row.video, _bound(row.start), _bound(row.end), row.split)
        if key in seen:
            first = seen[key].line
            where = f" (first at line {first})" if first is not None else ""
            segment = "" if key[1:3] == (None, None) else " segment"
            reason = f"duplicate video{segment} in split {row.split!r}{where}"
            bad.append(bad_record(row.line, reason, row.raw))
            continue
        seen[key] = row
        kept.append(row)
    return kept


def _bound(value: float | None) -> float | None:
    """A segment bound as a dictionary key (None for a missing or NaN bound)."""
    return None if value is None or value != value else float(value)


def _bad_rows_frame(uri: str, bad: list[dict[str, Any]], strict: bool) -> pd.DataFrame:
    """The bad rows sorted by line (unknown lines last); with ``strict`` the first one
    raises, otherwise they are logged once."""
    if not bad:
        return pd.DataFrame(
            {
                "line": pd.Series([], dtype="Int64"),
                "reason": pd.Series([], dtype=object),
                "raw": pd.Series([], dtype=object),
            }
        )
    frame = pd.DataFrame(bad, columns=list(BAD_ROW_COLUMNS))
    frame["line"] = frame["line"].astype("Int64")
    frame = frame.sort_values("line", kind="stable", na_position="last").reset_index(drop=True)
    first = frame.iloc[0]
    if strict:
        line = None if pd.isna(first["line"]) else int(first["line"])
        raise ManifestError(uri, str(first["reason"]), line=line)
    log.warning(
        "%s: %d bad row(s) reported in ManifestLoad.bad_rows (first: line %s: %s)",
        uri,
        len(frame),
        first["line"],
        first["reason"],
    )
    return frame
