"""The labeling output's row schema, statuses and file names."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from frameexit.errors import VideoDecodeError

STATUS_OK = "ok"
STATUS_BAD_ROW = "bad_manifest_row"
#: ``ok``, every ``VideoDecodeError.kind``, and ``bad_manifest_row``.
STATUSES: tuple[str, ...] = (STATUS_OK, *VideoDecodeError.KINDS, STATUS_BAD_ROW)

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),  # position of the entry in the input
        pa.field("input_id", pa.string()),  # unique key of the entry (see the package doc)
        pa.field("video", pa.string()),  # URI (null for an unparsable manifest row)
        pa.field("status", pa.string()),  # ok | a VideoDecodeError kind | bad_manifest_row
        pa.field("error", pa.string()),  # message (null when ok)
        pa.field("label", pa.string()),  # best label (null if none, e.g. multi-label below thr.)
        pa.field("labels", pa.list_(pa.string())),  # top-k, or all over the threshold
        pa.field("label_ids", pa.list_(pa.int32())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("exit_step", pa.int32()),  # 1-based step that answered (null on error)
        pa.field("frames_decoded", pa.int32()),  # frames actually decoded for this video
        pa.field("num_frames", pa.int32()),  # length of the video (or segment), if opened
        pa.field("gflops", pa.float64()),  # exit_step × per-step cost (0 on error)
    ]
)
INPUT_COLUMNS = ("row", "input_id", "video", "start", "end")
PART_PREFIX = "part-"
FINGERPRINT_NAME = "_labeling.json"
SUMMARY_NAME = "_summary.json"
CONFIG_NAME = "_config.yaml"


def output_row(**values: Any) -> dict[str, Any]:
    """One output row: every column of ``OUTPUT_SCHEMA``, empty lists and zero cost
    unless given."""
    out = {name: None for name in OUTPUT_SCHEMA.names}
    out.update(labels=[], label_ids=[], scores=[], frames_decoded=0, gflops=0.0)
    out.update(values)
    return out


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Output rows as a table of ``OUTPUT_SCHEMA``."""
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def empty_output() -> pa.Table:
    """A table of ``OUTPUT_SCHEMA`` without rows."""
    return OUTPUT_SCHEMA.empty_table()
