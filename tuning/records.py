"""The sweep's layout in its storage URI, and the small JSON records that make it resumable.

::

    {sweep}/                         sweep.storage (default {train.storage}/sweeps/{train.name})
      config.yaml                    resolved config of the sweep (grid in its ``sweep:``)
      stage1/{backbone}-T{T}/        one pipeline run dir per unit = (backbone, T): stage-1
                                     model, Ray Train dirs, features/{split}/ (the cache)
      stage2/{backbone}-T{T}-b{β}/   one run dir per β trial: stage-2 model, eval/,
                                     thresholds.parquet (post-hoc exit-threshold curve)
      records/stage1/{unit}.json     written when stage 1 + cache of a unit finished
      records/stage2/{trial}.json    written when a β trial finished (its metrics)
      records/events/*.json          one file per *execution* of a stage (start, end,
                                     seconds, status): "stage 1 ran once per T" is read here
      tune/stage1, tune/stage2       the two Tune experiments (restorable)
      points.parquet, pareto.parquet, pareto.png, pareto.front.json, summary.json
      summaries/{utc time}.json      the summary of every invocation (first run, resumes)

A finished unit of work is never recomputed: a trial whose completion record exists
reports the record instead of training. Records are whole-file writes (no appends), so
the layout works the same on a local disk and on S3.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from frameexit.storage import join_uri, list_files, open_uri, read_bytes, write_text


def unit_key(backbone: str, num_steps: int) -> str:
    """Name of one stage-1 unit: a distinct (backbone, T)."""
    return f"{backbone}-T{num_steps}"


def trial_key(unit: str, beta: float) -> str:
    """Name of one β trial; β keeps 6 significant digits (``tiny-T4-b1e-06``)."""
    return f"{unit}-b{beta:.6g}"


@dataclass
class SweepStore:
    """URIs and records of one sweep at ``root`` (``options``: fsspec storage options)."""

    root: str
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *parts: str) -> str:
        return join_uri(self.root, *parts)

    def stage1_record(self, unit: str) -> str:
        return self("records", "stage1", f"{unit}.json")

    def stage2_record(self, trial: str) -> str:
        return self("records", "stage2", f"{trial}.json")

    def read_json(self, uri: str) -> dict[str, Any] | None:
        """The JSON object at ``uri``, or None when there is none."""
        try:
            return json.loads(read_bytes(uri, storage_options=self.options))
        except FileNotFoundError:
            return None

    def write_json(self, uri: str, data: dict[str, Any]) -> None:
        """Write ``data`` as JSON, atomically (readers see the old record or the new one)."""
        write_text(uri, json.dumps(data, indent=1, default=str), storage_options=self.options)

    def event(self, stage: str, key: str, **fields: Any) -> Event:
        return Event(self, stage, key, **fields)

    def events(self) -> list[dict[str, Any]]:
        """Every execution event of the sweep (sorted by start time)."""
        try:
            uris = list_files(
                self("records", "events"),
                suffixes=[".json"],
                recursive=False,
                storage_options=self.options,
            )
        except FileNotFoundError:
            return []
        events = []
        for uri in uris:
            with open_uri(uri, "r", storage_options=self.options) as handle:
                events.append(json.load(handle))
        return sorted(events, key=lambda e: e.get("started", 0.0))


class Event:
    """One execution of a stage, recorded at its start and rewritten at its end.

    Use as a context manager around the work; an exception marks it ``error``. Extra
    timings go into ``event.data`` before the block ends.
    """

    def __init__(self, store: SweepStore, stage: str, key: str, **fields: Any) -> None:
        self.store = store
        self.uri = store("records", "events", f"{stage}-{key}-{uuid.uuid4().hex[:8]}.json")
        self.data: dict[str, Any] = {
            "stage": stage,
            "key": key,
            "status": "started",
            "started": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **fields,
        }

    def __enter__(self) -> Event:
        self.store.write_json(self.uri, self.data)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.data.update(
            status="done" if error is None else "error",
            finished=time.time(),
            seconds=time.perf_counter() - self._t0,
        )
        if error is not None:
            self.data["error"] = f"{type(error).__name__}: {error}"[:1000]
        self.store.write_json(self.uri, self.data)
