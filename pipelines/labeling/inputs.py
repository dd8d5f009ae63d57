"""What to label: ``--input`` (a manifest or a directory/prefix) as input rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from frameexit.storage import absolute_uri, list_files, url_to_fs
from pipelines.labeling.schema import STATUS_BAD_ROW, empty_output, output_row, rows_to_table


@dataclass
class LabelInputs:
    """What to label: ``videos`` (columns ``INPUT_COLUMNS``) and the rows that are already
    answered without decoding (``bad`` — unparsable manifest rows, ``OUTPUT_SCHEMA``)."""

    videos: pd.DataFrame
    bad: pa.Table
    kind: str  # "manifest" | "listing"
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.videos) + self.bad.num_rows


def _unique_ids(videos: Sequence[str]) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for video in videos:
        seen[video] += 1
        out.append(video if seen[video] == 1 else f"{video}#{seen[video]}")
    return out


def read_inputs(
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    suffixes: Sequence[str] | None = None,
    exclude_prefix: str | None = None,
) -> LabelInputs:
    """Turn ``--input`` into input rows.

    A directory/prefix is listed (every file, recursively, except names starting with
    ``.``, only ``suffixes`` if given, never anything under ``exclude_prefix`` — the output);
    anything else is a manifest for :func:`frameexit.manifests.load_manifest`, whose bad
    rows become ``bad_manifest_row`` output rows so that every input yields one row.
    """
    from frameexit.manifests import load_manifest

    options = dict(storage_options or {})
    fs, path = url_to_fs(uri, options)
    if fs.isdir(path):
        files = list_files(uri, suffixes=suffixes, storage_options=options)
        files = [f for f in files if not f.rsplit("/", 1)[-1].startswith(".")]
        if exclude_prefix:
            files = [f for f in files if not absolute_uri(f).startswith(exclude_prefix + "/")]
        videos = pd.DataFrame(
            {
                "row": np.arange(len(files), dtype=np.int64),
                "input_id": _unique_ids(files),
                "video": files,
                "start": np.full(len(files), np.nan),
                "end": np.full(len(files), np.nan),
            }
        )
        return LabelInputs(videos, empty_output(), "listing")

    loaded = load_manifest(uri, storage_options=options or None, save_class_map=False)
    table = loaded.table
    n = len(table)
    uris = table["video"].astype(str).tolist()
    videos = pd.DataFrame(
        {
            "row": np.arange(n, dtype=np.int64),
            "input_id": _unique_ids(uris),
            "video": uris,
            "start": _seconds(table, "start"),
            "end": _seconds(table, "end"),
        }
    )
    bad_rows = []
    for k, bad in enumerate(loaded.bad_rows.itertuples(index=False)):
        line = None if pd.isna(bad.line) else int(bad.line)
        where = f"line {line}" if line is not None else f"bad row {k + 1}"
        bad_rows.append(
            output_row(
                row=n + k,
                input_id=f"manifest-line-{line}" if line is not None else f"manifest-bad-{k + 1}",
                video=None,
                status=STATUS_BAD_ROW,
                error=f"{uri}: {where}: {bad.reason}: {bad.raw}",
            )
        )
    return LabelInputs(videos, rows_to_table(bad_rows), "manifest", list(loaded.class_names))


def _seconds(table: pd.DataFrame, column: str) -> np.ndarray:
    if column not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
