"""The exactly-once part protocol: content-named parts, atomic commits, one winner per id.

* A part is ``part-<hash of its sorted input ids>.parquet``, written atomically (a reader
  sees it complete or not at all). Committing the same ids again replaces the file
  instead of adding rows, so a retried batch supersedes its earlier part in one step.
* An id may still have rows in two parts for a while (a retryable row and its retry; a
  crash between commit and compaction). The **winner** is the row with the most
  ``attempts``; among equals a final row beats a retryable one, then the later part in
  name order (deterministic). :func:`read_labels` always returns winners only.
* :func:`compact` rewrites, part by part, every part holding a loser or an id that is no
  longer an input: the kept rows are written first (a new content-named part), the old
  part is deleted after, so no current row is ever missing; after a completed run the
  directory holds exactly one row per current input and plain readers (pandas,
  pyarrow, Ray Data, which skip ``_``/``.`` files) see exactly those rows.

Names are matched by listing the directory, never by glob patterns, so output paths
with ``[``, ``*`` or ``?`` work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from frameexit.storage import (
    is_local,
    join_uri,
    read_parquet,
    remove,
    url_to_fs,
    write_parquet,
)
from frameexit.testing import hooks
from pipelines.labeling.schema import (
    CALIBRATION_NAME,
    CONFIG_NAME,
    FINGERPRINT_NAME,
    OUTPUT_SCHEMA,
    PART_PREFIX,
    STATUS_OK,
    SUMMARY_NAME,
)

STATE_COLUMNS = ["input_id", "status", "retryable", "attempts"]


def part_name(input_ids: Iterable[str]) -> str:
    """``part-<16 hex>.parquet`` from the sorted ids: the same rows, the same name."""
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(input_ids)).encode("utf-8")).hexdigest()
    return f"{PART_PREFIX}{digest[:16]}.parquet"


def _names(output: str, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, uri)`` of the files directly under ``output`` (listed, not globbed)."""
    fs, path = url_to_fs(output, options)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.get("type") != "file":
            continue
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        out.append((name, join_uri(output, name)))
    return sorted(out)


def list_parts(output: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """URIs of the committed parts under ``output`` (sorted by name)."""
    return [
        uri
        for name, uri in _names(output, options)
        if name.startswith(PART_PREFIX) and name.endswith(".parquet")
    ]


def write_part(
    output: str,
    table: pa.Table,
    options: Mapping[str, Any] | None = None,
    schema: pa.Schema = OUTPUT_SCHEMA,
) -> str:
    """Commit ``table`` (rows of ``schema``) as one part, atomically; returns its URI."""
    table = as_written(table, schema)
    uri = join_uri(output, part_name(table.column("input_id").to_pylist()))
    write_parquet(uri, table, storage_options=options)
    return uri


def as_written(table: pa.Table, schema: pa.Schema = OUTPUT_SCHEMA) -> pa.Table:
    """A part's rows in the order :func:`write_part` stores them (by ``row``)."""
    return table.cast(schema).sort_by("row")


def read_part(
    uri: str,
    options: Mapping[str, Any] | None,
    columns: list[str] | None = None,
    schema: pa.Schema = OUTPUT_SCHEMA,
) -> pa.Table:
    """One part (only ``columns`` if given), in ``schema``'s types."""
    table = read_parquet(uri, columns=columns, storage_options=options)
    return table.cast(pa.schema([schema.field(n) for n in table.column_names]))


class Committed:
    """What an output holds — the run's one index of committed rows, read once: per row
    its id, status, attempts (and, for labeling outputs, the columns the summary counts)
    and place (``part`` index into ``parts``, ``position`` in the part), plus who wins.

    The run keeps it current instead of reading the output again: :meth:`add` for each
    part it commits, :meth:`remove` for each part compaction deletes. The winner mask is
    computed when asked, after the last change (a part rewritten under its own name
    replaces that part's rows)."""

    def __init__(self, parts: list[str], rows: pa.Table) -> None:
        self.parts: list[str | None] = list(parts)  # None: a part deleted since
        self._tables: list[pa.Table] = [rows] if rows.num_rows else []
        self._empty = rows.schema.empty_table()
        self._columns = [c for c in rows.column_names if c not in ("part", "position")]
        self._where = {uri: i for i, uri in enumerate(parts)}
        self._rows: pa.Table | None = rows
        self._winner: pa.Array | None = None

    @property
    def rows(self) -> pa.Table:
        """Every committed row (state columns + ``part``, ``position``)."""
        if self._rows is None:
            tables = self._tables or [self._empty]
            self._rows = pa.concat_tables(tables).combine_chunks()
            self._tables = [self._rows] if self._rows.num_rows else []
        return self._rows

    @property
    def winner(self) -> pa.Array:
        """True for each id's winning row (see the module doc for the rule)."""
        if self._winner is None:
            rows = self.rows
            names = [uri or "" for uri in self.parts]
            rank = np.empty(len(names), dtype=np.int64)  # name order, whatever the index
            rank[np.argsort(np.array(names, dtype=object), kind="stable")] = np.arange(len(names))
            ranked = rows.set_column(
                rows.schema.get_field_index("part"), "part",
                pa.array(rank[rows.column("part").to_numpy()] if rows.num_rows else [],
                         pa.int64()),
            )  # fmt: skip
            self._winner = _winner_mask(ranked)
        return self._winner

    @property
    def winners(self) -> pa.Table:
        """One row per committed id."""
        return self.rows.filter(self.winner)

    def ids(self) -> pa.Array:
        """Every id that has a committed row."""
        return self.winners.column("input_id").combine_chunks()

    def live_parts(self) -> list[tuple[int, str]]:
        """``(index, uri)`` of the parts that exist now."""
        return [(i, uri) for i, uri in enumerate(self.parts) if uri is not None]

    def add(self, uri: str, table: pa.Table) -> None:
        """Count a part just committed (its rows as written)."""
        if uri in self._where:
            self._drop(self._where[uri])
            index = self._where[uri]
            self.parts[index] = uri
        else:
            index = len(self.parts)
            self.parts.append(uri)
            self._where[uri] = index
        n = table.num_rows
        state = table.select(self._columns).cast(self._empty.schema.remove(
            self._empty.schema.get_field_index("position")).remove(
            self._empty.schema.get_field_index("part")))  # fmt: skip
        state = state.append_column("part", pa.array([index] * n, pa.int32()))
        state = state.append_column("position", pa.array(range(n), pa.int64()))
        self.rows  # noqa: B018 - settle pending changes first
        self._tables.append(state)
        self._rows = self._winner = None

    def remove(self, uri: str) -> None:
        """Forget a part compaction deleted."""
        index = self._where.pop(uri, None)
        if index is not None:
            self._drop(index)
            self.parts[index] = None

    def _drop(self, index: int) -> None:
        rows = self.rows
        self._rows = rows.filter(pc.not_equal(rows.column("part"), index))
        self._tables = [self._rows] if self._rows.num_rows else []
        self._winner = None


def _winner_mask(rows: pa.Table) -> pa.Array:
    """True for the winning row of each id: most attempts, then final over retryable,
    then the later part (``part`` ranks parts in name order) and position."""
    n = rows.num_rows
    if n == 0:
        return pa.array([], pa.bool_())
    order = pc.sort_indices(
        rows,
        sort_keys=[
            ("input_id", "ascending"),
            ("attempts", "descending"),
            ("retryable", "ascending"),
            ("part", "descending"),
            ("position", "descending"),
        ],
    ).to_numpy()
    ids = rows.column("input_id").take(order).to_numpy(zero_copy_only=False)
    first = np.ones(n, dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    mask = np.zeros(n, dtype=bool)
    mask[order[first]] = True
    return pa.array(mask)


#: what a labeling output's summary counts, read with the state (a few bytes per row)
TOTAL_COLUMNS = ["frames_decoded", "gflops", "exit_step"]
READ_THREADS = 16  # parts read at once (object stores: parallel GETs)


def read_committed(
    output: str,
    options: Mapping[str, Any] | None = None,
    schema: pa.Schema = OUTPUT_SCHEMA,
    *,
    totals: bool = False,
) -> Committed:
    """The index of every committed row under ``output``: one listing, then every part's
    small columns read once, :data:`READ_THREADS` at a time (with ``totals``, also the
    columns the summary counts, where ``schema`` has them)."""
    from concurrent.futures import ThreadPoolExecutor

    columns = list(STATE_COLUMNS)
    if totals:
        columns += [c for c in TOTAL_COLUMNS if c in schema.names]
    parts = list_parts(output, options)

    def one(item: tuple[int, str]) -> pa.Table:
        index, uri = item
        table = read_part(uri, options, columns, schema)
        n = table.num_rows
        table = table.append_column("part", pa.array([index] * n, pa.int32()))
        return table.append_column("position", pa.array(range(n), pa.int64()))

    if len(parts) >= 8:  # fewer: starting the threads costs more than they save
        with ThreadPoolExecutor(min(READ_THREADS, len(parts))) as pool:
            tables = list(pool.map(one, enumerate(parts)))
    else:
        tables = [one(item) for item in enumerate(parts)]
    if tables:
        rows = pa.concat_tables(tables).combine_chunks()
    else:
        rows = pa.table(
            {
                **{c: pa.array([], schema.field(c).type) for c in columns},
                "part": pa.array([], pa.int32()),
                "position": pa.array([], pa.int64()),
            }
        )
    return Committed(parts, rows)


def committed_ids(output: str, options: Mapping[str, Any] | None = None) -> set[str]:
    """Input ids that have a committed row under ``output``."""
    return set(read_committed(output, options).ids().to_pylist())


def compact(
    output: str,
    options: Mapping[str, Any] | None,
    current_ids: pa.Array | None,
    schema: pa.Schema = OUTPUT_SCHEMA,
    *,
    fence: Callable[[], None] | None = None,
    state: Committed | None = None,
) -> dict[str, int]:
    """Rewrite the parts that hold losers or (with ``current_ids``) ids that are not
    current inputs; returns counts of ``parts_rewritten``, ``rows_dropped`` and
    ``stale_rows`` (rows of entries no longer in the input). ``fence`` runs before every
    write and delete (the lease check: a writer that lost its lease stops there).
    ``state``: the run's index of the output (read here if not given); it is kept
    current, and only the parts holding a dropped row are read and rewritten."""
    fence = fence or (lambda: None)
    if state is None:
        state = read_committed(output, options, schema)
    keep = state.winner
    stale = 0
    if current_ids is not None and state.rows.num_rows:
        current = pc.is_in(state.rows.column("input_id"), value_set=current_ids)
        stale = int(pc.sum(pc.and_(keep, pc.invert(current))).as_py() or 0)
        keep = pc.and_(keep, current)
    dropped = pc.invert(keep)
    counts = {"parts_rewritten": 0, "rows_dropped": 0, "stale_rows": stale}
    if not state.rows.num_rows or not pc.any(dropped).as_py():
        return counts
    parts_hit = pc.unique(state.rows.column("part").filter(dropped)).to_pylist()
    # A rewrite is named after the ids it keeps, so it can take the name of another part
    # hit here (one holding only losing rows of the same ids): that file then already
    # holds winners, and is neither read with its old positions nor removed.
    written: set[str] = set()
    removed: list[str] = []
    added: list[tuple[str, pa.Table]] = []
    for index in sorted(parts_hit, key=lambda i: state.parts[i] or ""):
        uri = state.parts[index]
        assert uri is not None  # a deleted part has no rows left in the index
        in_part = pc.equal(state.rows.column("part"), index)
        if uri in written:
            counts["rows_dropped"] += int(pc.sum(pc.and_(in_part, pc.invert(keep))).as_py() or 0)
            counts["parts_rewritten"] += 1
            continue
        keep_positions = state.rows.column("position").filter(pc.and_(in_part, keep))
        table = read_part(uri, options, schema=schema)
        kept = table.take(keep_positions)
        counts["rows_dropped"] += table.num_rows - kept.num_rows
        new_uri = None
        if kept.num_rows:
            fence()
            new_uri = write_part(output, kept, options, schema)
            written.add(new_uri)
            added.append((new_uri, as_written(kept, schema)))
        if new_uri != uri and uri not in written:
            fence()
            remove(uri, storage_options=options)
            removed.append(uri)
        counts["parts_rewritten"] += 1
    for uri in removed:
        state.remove(uri)
    for uri, table in added:
        state.add(uri, table)
    return counts


def final_after(table: pa.Table, max_attempts: int | None) -> pa.Table:
    """``table`` with ``retryable`` false on rows that reached ``max_attempts`` (label.
    max_attempts): their error is the final answer, and no rerun labels them again."""
    if not max_attempts or not table.num_rows or "retryable" not in table.column_names:
        return table
    under = pc.less(table.column("attempts"), max_attempts)
    index = table.schema.get_field_index("retryable")
    return table.set_column(index, "retryable", pc.and_(table.column("retryable"), under))


def read_labels(
    output: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    schema: pa.Schema = OUTPUT_SCHEMA,
) -> pd.DataFrame:
    """The committed rows under ``output``, one per ``input_id`` (the winners), in input
    order (``row``)."""
    return (
        read_winners(output, storage_options=storage_options, schema=schema)
        .to_pandas()
        .sort_values(["row", "input_id"], kind="stable")
        .reset_index(drop=True)
    )


def read_winners(
    output: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    schema: pa.Schema = OUTPUT_SCHEMA,
    state: Committed | None = None,
) -> pa.Table:
    """The winning committed rows under ``output`` as one Arrow table (part order);
    ``state``: the run's index of the output, if it has one (else read here)."""
    if state is None:
        state = read_committed(output, storage_options, schema)
    tables = []
    for index, uri in state.live_parts():
        mine = pc.and_(pc.equal(state.rows.column("part"), index), state.winner)
        positions = state.rows.column("position").filter(mine)
        if len(positions):
            tables.append(read_part(uri, storage_options, schema=schema).take(positions))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def clean_temporaries(output: str, options: Mapping[str, Any] | None) -> None:
    """Remove temporaries a killed local writer left (``.tmp-*``; object stores have none).
    Called only by the lease holder, so no live writer's temporary is touched."""
    if not is_local(output):
        return
    for name, uri in _names(output, options):
        if name.startswith(".tmp-"):
            remove(uri)


def clear_output(output: str, options: Mapping[str, Any] | None) -> None:
    """Delete every part and record of a labeling output (``--overwrite``); the lease of
    the run doing it stays."""
    ours = (FINGERPRINT_NAME, SUMMARY_NAME, CONFIG_NAME, CALIBRATION_NAME)
    for name, uri in _names(output, options):
        if (name.startswith(PART_PREFIX) and name.endswith(".parquet")) or name in ours:
            remove(uri, storage_options=options)


class PartWriter:
    """Buffers output rows and commits them in parts of ``part_size`` rows; keeps running
    totals of what it committed (the driver holds no rows beyond one part)."""

    def __init__(
        self,
        output: str,
        options: Mapping[str, Any],
        part_size: int,
        schema: pa.Schema = OUTPUT_SCHEMA,
        *,
        fence: Callable[[], None] | None = None,
        max_attempts: int | None = None,
        index: Committed | None = None,
    ) -> None:
        self.output, self.options, self.part_size = output, options, part_size
        self.schema = schema
        self.fence = fence  # before every commit: the lease check
        self.max_attempts = max_attempts  # a retryable row at this many attempts is final
        self.index = index  # the run's index of the output: each commit is added to it
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts: list[str] = []
        self.totals = Totals()
        self._seen: list[pa.Array] = []  # ids of every row added (Arrow: compact)
        self.delay = float(hooks.value("label.part_delay_s") or 0)  # test hook

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            table = final_after(table, self.max_attempts)
            self.buffer.append(table)
            self.buffered += table.num_rows
            self._seen.append(table.column("input_id").combine_chunks())
        while self.buffered >= self.part_size:
            self._commit(self.part_size)

    def seen_ids(self) -> pa.Array:
        """The ids of every row added so far (committed, or buffered for the next part)."""
        return pa.concat_arrays(self._seen) if self._seen else pa.array([], pa.string())

    def flush(self) -> None:
        while self.buffered:
            self._commit(min(self.buffered, self.part_size))

    def _commit(self, n: int) -> None:
        table = pa.concat_tables(self.buffer).combine_chunks()
        part, rest = table.slice(0, n), table.slice(n)
        if self.fence is not None:
            self.fence()
        uri = write_part(self.output, part, self.options, self.schema)
        self.parts.append(uri)
        if self.index is not None:
            self.index.add(uri, as_written(part, self.schema))
        self.totals.add(part)
        self.buffer = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows
        if self.delay:  # test hook: widen the window in which a kill lands mid-run
            time.sleep(self.delay)


@dataclass
class Totals:
    """Running counts over output rows (constant memory): per status, and frames, GFLOPs
    and exit steps of the ``ok`` ones."""

    rows: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    frames_ok: int = 0
    frames_all: int = 0
    gflops_ok: float = 0.0
    exit_steps_ok: int = 0

    def add(self, table: pa.Table) -> None:
        """Count the rows of an ``OUTPUT_SCHEMA`` table."""
        if not table.num_rows:
            return
        self.rows += table.num_rows
        counts = pc.value_counts(table.column("status"))
        for item in counts.to_pylist():
            self.statuses[item["values"]] = self.statuses.get(item["values"], 0) + item["counts"]
        ok = pc.equal(table.column("status"), STATUS_OK)
        self.ok += int(pc.sum(ok).as_py() or 0)
        if "frames_decoded" not in table.column_names:  # not a labeling output (check)
            return
        self.frames_all += int(pc.sum(table.column("frames_decoded")).as_py() or 0)
        okt = table.filter(ok)
        self.frames_ok += int(pc.sum(okt.column("frames_decoded")).as_py() or 0)
        self.gflops_ok += float(pc.sum(okt.column("gflops")).as_py() or 0.0)
        self.exit_steps_ok += int(pc.sum(okt.column("exit_step")).as_py() or 0)

    def summary(self, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """Counts and means (per ``ok`` video), leaving out the statuses in ``exclude``."""
        skip = set(exclude)
        rows = self.rows - sum(self.statuses.get(s, 0) for s in skip)
        ok = self.ok
        return {
            "videos": int(rows),
            "ok": int(ok),
            "errors_by_kind": {
                k: int(v)
                for k, v in sorted(self.statuses.items())
                if k != STATUS_OK and k not in skip
            },
            "frames_decoded_per_video": self.frames_ok / ok if ok else 0.0,
            "frames_decoded_total": int(self.frames_all),
            "gflops_per_video": self.gflops_ok / ok if ok else 0.0,
            "mean_exit_step": self.exit_steps_ok / ok if ok else 0.0,
        }


def output_totals(
    output: str, options: Mapping[str, Any] | None = None, *, state: Committed | None = None
) -> Totals:
    """Totals over the winners under ``output``: from ``state`` (an index read with
    ``totals=True``) without reading anything, else read here."""
    if state is None or not all(c in state.rows.column_names for c in TOTAL_COLUMNS):
        state = read_committed(output, options, totals=True)
    totals = Totals()
    totals.add(state.winners)
    return totals
