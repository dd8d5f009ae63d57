"""ActivityNet v1.3 JSON: ``{"database": {video_id: {"subset", "annotations", ...}}}``.

One row per video: labels are the sorted names of its annotated segments, which are
kept in the ``segments`` column; ``url`` is kept when given. Test-subset videos may have
no annotations. A video id given twice keeps its first entry; the repeat is a bad row.
A row's line is the line of its ``"video_id": {`` key.
"""

from __future__ import annotations

import json
import re
from typing import Any

from frameexit.errors import ManifestError
from frameexit.manifests.parsing import (
    BadRow,
    Source,
    bad_record,
    format_uri,
    normalize_split,
    parse_float,
)
from frameexit.manifests.schema import Row

ACTIVITYNET_PATTERN = "{root}/v_{id}.mp4"


def read_activitynet(source: Source, bad: list[dict[str, Any]]) -> list[Row]:
    """Rows of an ActivityNet JSON file."""
    uri, text = source.uri, source.text()
    repeated: list[tuple[str, Any]] = []

    def keep_first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                repeated.append((key, value))
            else:
                out[key] = value
        return out

    expected = 'JSON {"database": {video_id: {"subset", "annotations", ...}}}'
    try:
        data = json.loads(text, object_pairs_hook=keep_first)
    except json.JSONDecodeError as error:
        first = text.lstrip()[:80].splitlines()[0] if text.strip() else ""
        raise ManifestError(
            uri,
            f"does not fit format 'activitynet': expected {expected}, found {first!r}, "
            f"which is not JSON ({error.msg})",
            line=error.lineno,
        ) from error
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        found = f"keys {sorted(data)[:8]}" if isinstance(data, dict) else type(data).__name__
        raise ManifestError(
            uri, f"does not fit format 'activitynet': expected {expected}, found {found}"
        )
    database = data["database"]
    key_lines = _json_key_lines(text)
    rows: list[Row] = []
    for vid, entry in database.items():
        line = key_lines.get(vid, [None])[0]
        raw = json.dumps({vid: entry}, ensure_ascii=False)
        try:
            rows.append(_activitynet_row(str(vid), entry, line, raw, source))
        except BadRow as error:
            bad.append(bad_record(line, str(error), raw))
    seen: dict[str, int] = {}
    for vid, entry in repeated:  # a video id given twice: the first entry is kept
        if vid not in database or not isinstance(entry, dict) or "subset" not in entry:
            continue
        seen[vid] = seen.get(vid, 0) + 1
        lines = key_lines.get(vid, [])
        line = lines[seen[vid]] if seen[vid] < len(lines) else None
        first = f" (first at line {lines[0]})" if lines else ""
        raw = json.dumps({vid: entry}, ensure_ascii=False)
        bad.append(bad_record(line, f"duplicate video id {vid!r}{first}", raw))
    return rows


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


def _activitynet_row(vid: str, entry: Any, line: int | None, raw: str, source: Source) -> Row:
    """One video's row; a malformed entry is a ``BadRow``."""
    if not vid.strip():
        raise BadRow("empty video id")
    if not isinstance(entry, dict):
        raise BadRow("video entry is not an object")
    subset = entry.get("subset")
    if not isinstance(subset, str) or not subset.strip():
        raise BadRow("missing subset")
    split = normalize_split(subset)
    annotations = entry.get("annotations")
    if annotations is None:
        if split != "test":
            raise BadRow("missing annotations")
        annotations = []
    if not isinstance(annotations, list):
        raise BadRow("annotations is not a list")
    segments: list[dict[str, Any]] = []
    for number, annotation in enumerate(annotations, start=1):
        if not isinstance(annotation, dict):
            raise BadRow(f"annotation {number} is not an object")
        label = annotation.get("label")
        if not isinstance(label, str) or not label.strip():
            raise BadRow(f"annotation {number}: empty label")
        segment = annotation.get("segment")
        if not isinstance(segment, (list, tuple)) or len(segment) != 2:
            raise BadRow(f"annotation {number}: unparsable segment {segment!r}")
        s0 = parse_float(segment[0], f"annotation {number} segment start", required=True)
        s1 = parse_float(segment[1], f"annotation {number} segment end", required=True)
        assert s0 is not None and s1 is not None
        if s1 <= s0:
            raise BadRow(f"annotation {number}: segment end {s1:g} <= start {s0:g}")
        segments.append({"label": label.strip(), "start": s0, "end": s1})
    if not segments and split != "test":
        raise BadRow(f"no annotations in subset {subset!r}")
    duration = parse_float(entry.get("duration"), "duration")
    fields = {"root": source.root, "id": vid, "subset": subset, "split": split}
    video = format_uri(source.pattern, fields)
    extras: dict[str, Any] = {"segments": segments}
    if isinstance(entry.get("url"), str):
        extras["url"] = entry["url"]
    return Row(
        line=line,
        raw=raw,
        video=video,
        labels=sorted({s["label"] for s in segments}),
        split=split,
        duration=duration,
        extras=extras,
    )
