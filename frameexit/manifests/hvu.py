"""HVU CSV (``Tags,youtube_id,time_start,time_end``): Kinetics-style YouTube clips with a
``|``-separated multi-label ``Tags`` column.

Labels are the sorted, de-duplicated tags; a row without tags is a bad row. The file has
no split column: the split comes from ``split=`` or the file name (``HVU_Train_...``).
"""

from __future__ import annotations

from typing import Any

from frameexit.manifests.kinetics import read_clip_csv
from frameexit.manifests.parsing import BadRow, Source, split_tags
from frameexit.manifests.schema import Row


def read_hvu(source: Source, bad: list[dict[str, Any]]) -> list[Row]:
    """Rows of an HVU CSV."""

    def labels(record: dict[str, str]) -> list[str]:
        names = sorted(split_tags(record["tags"]))
        if not names:
            raise BadRow("empty label (no Tags)")
        return names

    required = ("tags", "youtube_id", "time_start", "time_end")
    return read_clip_csv(
        source, bad, required=required, label_column="tags", labels=labels, fmt="hvu",
        expected="Tags,youtube_id,time_start,time_end", foreign={"label": "kinetics"},
    )  # fmt: skip
