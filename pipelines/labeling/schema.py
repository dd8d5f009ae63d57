"""The labeling output: row schema, statuses, the stable identity of an input, file names.

Identity. An input entry is known by ``input_id`` = its normalised URI (local paths
absolute, ``file://`` stripped, so ``file:///x/a.mp4`` and ``/x/a.mp4`` are one video),
then a fragment of ours that is always present::

    /data/a.mp4#n=1                 the first entry of that file
    /data/a.mp4#n=2                 the second entry of the same file (a repeat)
    /data/a.mp4#t=12.5,30&n=1       the segment [12.5, 30) s of it
    bad:3f1c…#n=1                   an unparsable manifest row (hash of its text)

The fragment is the part after the last ``#`` and is entirely ours, so ids never collide
(``a.mp4``, ``a.mp4``, ``a.mp4#2`` give ``a.mp4#n=1``, ``a.mp4#n=2``, ``a.mp4#2#n=1``), and
an id never depends on where the entry stands in the input (no line numbers).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from frameexit.errors import VideoDecodeError

STATUS_OK = "ok"
STATUS_BAD_ROW = "bad_manifest_row"
#: ``ok``, every ``VideoDecodeError.kind``, and ``bad_manifest_row``.
STATUSES: tuple[str, ...] = (STATUS_OK, *VideoDecodeError.KINDS, STATUS_BAD_ROW)
#: Statuses a rerun labels again (``label.retry``): the storage or the moment failed.
RETRYABLE_STATUSES: tuple[str, ...] = VideoDecodeError.RETRYABLE

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),  # position of the entry in the input it was labeled from
        pa.field("input_id", pa.string()),  # stable identity of the entry (module doc)
        pa.field("video", pa.string()),  # URI (null for an unparsable manifest row)
        pa.field("start", pa.float64()),  # segment start, seconds (null: whole file)
        pa.field("end", pa.float64()),  # segment end, seconds (null: whole file)
        pa.field("status", pa.string()),  # ok | a VideoDecodeError kind | bad_manifest_row
        pa.field("retryable", pa.bool_()),  # a rerun labels this row again (label.retry)
        pa.field("error", pa.string()),  # message (null when ok)
        pa.field("warning", pa.string()),  # something odd that did not stop labeling
        pa.field("label", pa.string()),  # best label (null if none, e.g. multi-label below thr.)
        pa.field("labels", pa.list_(pa.string())),  # top-k, or all over the threshold
        pa.field("label_ids", pa.list_(pa.int32())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("exit_step", pa.int32()),  # 1-based step that answered (null on error)
        pa.field("frames_decoded", pa.int32()),  # frames actually decoded for this video
        pa.field("num_frames", pa.int32()),  # length of the video (or segment), if opened
        pa.field("gflops", pa.float64()),  # exit_step × per-step cost (0 on error)
        pa.field("attempts", pa.int32()),  # runs that tried this entry, this one included
        pa.field("run_id", pa.string()),  # the run that wrote the row
        # a row of the calibration sample (--calibrate N): labeled with all T steps
        pa.field("calibration", pa.bool_()),
        # calibration rows only: the exit score and f_t's label ids at every step
        pa.field("step_scores", pa.list_(pa.float32())),
        pa.field("step_labels", pa.list_(pa.list_(pa.int32()))),
    ]
)
INPUT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),
        pa.field("input_id", pa.string()),
        pa.field("video", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("attempts", pa.int32()),  # this run's attempt for the entry (1, 2, ...)
    ]
)
INPUT_COLUMNS = tuple(INPUT_SCHEMA.names)
PART_PREFIX = "part-"
FINGERPRINT_NAME = "_labeling.json"
SUMMARY_NAME = "_summary.json"
CONFIG_NAME = "_config.yaml"
CALIBRATION_NAME = "_calibration.json"
ID_SCHEME = "uri-fragment-v2"  # recorded in the fingerprint: ids of other schemes never mix
OUTPUT_VERSION = 3  # recorded in the fingerprint: v3 added the calibration columns


def _seconds(value: float) -> str:
    return repr(float(value)).removesuffix(".0") if math.isfinite(value) else ""


def entry_key(uri: str | None, start: float = math.nan, end: float = math.nan) -> str:
    """The identity of an entry before its repeat number: URI, then the opening of our
    fragment (``#``, or ``#t=start,end&`` for a segment)."""
    if math.isfinite(start) or math.isfinite(end):
        return f"{uri}#t={_seconds(start)},{_seconds(end)}&"
    return f"{uri}#"


def bad_row_key(raw: str) -> str:
    """The identity of an unparsable manifest row: a hash of its text (not its line)."""
    return "bad:" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:20] + "#"


def input_ids(keys: Sequence[str]) -> list[str]:
    """``key`` + ``n=k`` for the k-th occurrence of each key: distinct, position-free ids."""
    seen: dict[str, int] = {}
    out = []
    for key in keys:
        seen[key] = seen.get(key, 0) + 1
        out.append(f"{key}n={seen[key]}")
    return out


def output_row(**values: Any) -> dict[str, Any]:
    """One output row: every column of ``OUTPUT_SCHEMA``, empty lists and zero cost
    unless given; ``retryable`` follows from the status."""
    out = {name: None for name in OUTPUT_SCHEMA.names}
    out.update(
        labels=[], label_ids=[], scores=[], frames_decoded=0, gflops=0.0, attempts=1,
        calibration=False,
    )  # fmt: skip
    out.update(values)
    out["retryable"] = out["status"] in RETRYABLE_STATUSES
    return out


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Output rows as a table of ``OUTPUT_SCHEMA``."""
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def empty_output() -> pa.Table:
    """A table of ``OUTPUT_SCHEMA`` without rows."""
    return OUTPUT_SCHEMA.empty_table()
