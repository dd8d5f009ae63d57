"""Class maps: a JSON list of class names whose positions are the label ids.

``load_manifest`` takes the map from ``class_names`` when given, else from
``classes.json`` beside the manifest when present, else builds it once from the sorted
label names of the good rows (and saves it there), so every split in a folder shares one
map. With a given or stored map, a label not in it is a bad row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from frameexit.errors import ManifestError
from frameexit.manifests.parsing import bad_record
from frameexit.manifests.schema import Row
from frameexit.storage import exists, join_uri, parent_uri, read_bytes, write_bytes

CLASS_MAP_NAME = "classes.json"


def class_map_uri_for(manifest_uri: str) -> str:
    """URI of the ``classes.json`` that sits beside ``manifest_uri``."""
    return join_uri(parent_uri(manifest_uri), CLASS_MAP_NAME)


def read_class_names(uri: str, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Read a class map: a JSON list of names, or an object with a ``class_names`` list."""
    try:
        data = json.loads(read_bytes(uri, storage_options=storage_options).decode("utf-8-sig"))
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
    write_bytes(uri, payload, storage_options=storage_options)


def resolve_class_map(
    uri: str,
    rows: list[Row],
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
    try:
        stored = exists(beside, storage_options=storage_options)
    except (OSError, ValueError):  # a map we cannot look at counts as none: build one
        stored = False
    if stored:
        return read_class_names(beside, storage_options=storage_options), beside, False
    return sorted({label for row in rows for label in row.labels}), None, True


def assign_label_ids(rows: list[Row], names: list[str], bad: list[dict[str, Any]]) -> list[Row]:
    """Give each row the ids of its labels (or, for id-only Parquet rows, the names of its
    ids); rows with a label or id outside the map go to ``bad``."""
    index = {name: i for i, name in enumerate(names)}
    kept: list[Row] = []
    for row in rows:
        if row.label_ids is not None:  # ids without names (Parquet): map ids → names
            wrong = [i for i in row.label_ids if not 0 <= i < len(names)]
            if wrong:
                bad.append(bad_record(row.line, f"label_ids {wrong} not in class map", row.raw))
                continue
            row.labels = [names[i] for i in row.label_ids]
        else:
            unknown = [label for label in row.labels if label not in index]
            if unknown:
                reason = f"label(s) {unknown} not in class map ({len(names)} classes)"
                bad.append(bad_record(row.line, reason, row.raw))
                continue
            row.label_ids = [index[label] for label in row.labels]
        kept.append(row)
    return kept
