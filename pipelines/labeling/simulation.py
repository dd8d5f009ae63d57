"""Randomized schedules of the part protocol: writers, compactions, crashes and takeovers.

Each actor is a labeling run in miniature on the real protocol code: it plans against what
is committed (:func:`pipelines.labeling.run.plan`), commits rows through a
:class:`~pipelines.labeling.parts.PartWriter` in parts, and compacts
(:func:`~pipelines.labeling.parts.compact`) — or, for a compaction-only actor, only
compacts. Every write and delete of a part passes the writer's ``fence``; here the fence
is where a seeded scheduler parks the actor and decides what happens next:

* **step**: the lease holder performs its pending write or delete and runs on to its next
  one (reads happen in between, as in a real run);
* **crash**: the holder dies before its pending write (every point of commit and
  compaction is a candidate); its lease expires and the next actor takes over;
* **takeover**: the holder stalls, its lease expires and the next actor takes over while
  the stalled one is still alive; when it wakes, its fence finds the lease gone
  (:class:`~frameexit.errors.LeaseLost`) and it stops before writing.

The fence and the write it guards are one step (the lease's timing margin makes them so
in a real run: a holder stops writing a quarter lease before anyone may take over).

After every step the scheduler reads the committed state and checks that **no committed
winner is lost**: an id's first final row stays its winner (same run, same attempts),
a retryable id's attempts never go down, and an id disappears only when the actor that
stepped compacts it away as no longer in its input. At the end a clean run labels the
final input and the output must hold **exactly one visible row per current input** (all
rows of all part files, as a plain Parquet reader sees them).
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from frameexit.errors import LeaseLost
from pipelines.labeling import parts
from pipelines.labeling.inputs import LabelInputs
from pipelines.labeling.parts import (
    PartWriter,
    _winner_mask,
    compact,
    list_parts,
    read_committed,
)
from pipelines.labeling.run import plan
from pipelines.labeling.schema import INPUT_SCHEMA, OUTPUT_SCHEMA

UNIVERSE = [f"v{i}" for i in range(10)]
CHECKED = ["input_id", "run_id", "attempts", "retryable"]


class ProtocolViolation(AssertionError):
    """An invariant of the part protocol failed under one schedule (seed and trace)."""


_current = threading.local()


@contextlib.contextmanager
def watch_writes() -> Iterator[None]:
    """Route every write and delete of ``pipelines.labeling.parts`` through the running
    simulation's check that a lease check came right before it."""
    saved = parts.write_parquet, parts.remove

    def write(uri: str, *args: Any, **kwargs: Any) -> None:
        sim = getattr(getattr(_current, "actor", None), "sim", None)
        if sim is not None:
            rows = args[0] if args else kwargs.get("frame")
            shown = ", ".join(
                f"{i}@{a}{'r' if r else ''}"
                for i, a, r in zip(*(rows.column(c).to_pylist() for c in
                                     ("input_id", "attempts", "retryable")), strict=True)
            )  # fmt: skip
            sim._mutating(f"write {uri.rsplit('/', 1)[-1][5:13]} [{shown}]")
        saved[0](uri, *args, **kwargs)

    def remove(uri: str, *args: Any, **kwargs: Any) -> None:
        sim = getattr(getattr(_current, "actor", None), "sim", None)
        if sim is not None:
            sim._mutating(f"delete {uri.rsplit('/', 1)[-1][5:13]}")
        saved[1](uri, *args, **kwargs)

    parts.write_parquet, parts.remove = write, remove
    try:
        yield
    finally:
        parts.write_parquet, parts.remove = saved


class _Crash(BaseException):
    """Kills an actor at its fence (not an ``Exception``: nothing may catch it)."""


def _inputs(ids: list[str]) -> LabelInputs:
    n = len(ids)
    videos = pa.table(
        {
            "row": pa.array(range(n), pa.int64()),
            "input_id": pa.array(ids, pa.string()),
            "video": pa.array([f"file:///{i}.mp4" for i in ids], pa.string()),
            "start": pa.array([None] * n, pa.float64()),
            "end": pa.array([None] * n, pa.float64()),
            "attempts": pa.array([1] * n, pa.int32()),
        },  # fmt: skip
        schema=INPUT_SCHEMA,
    )
    return LabelInputs(videos, OUTPUT_SCHEMA.empty_table(), "manifest")


def _same_index(kept: Any, fresh: list[dict[str, Any]]) -> None:
    """The index a run kept current names the same winners, in the same files and
    places, as the part files say (``fresh``: :meth:`Simulation._winners`)."""
    have = sorted((r["input_id"], r["attempts"], r["retryable"], kept.parts[r["part"]],
                   r["position"]) for r in kept.winners.to_pylist())  # fmt: skip
    want = sorted((r["input_id"], r["attempts"], r["retryable"], r["uri"], r["position"])
                  for r in fresh)  # fmt: skip
    if have != want:
        raise AssertionError(f"the kept index disagrees with the part files: {have} vs {want}")


def _rows(todo: pa.Table, run: str, rng: random.Random) -> pa.Table:
    """Output rows for ``todo``: ``ok`` or a retryable ``timeout``, chosen by ``rng``."""
    rows = []
    for r in todo.to_pylist():
        ok = rng.random() < 0.6
        rows.append({
            "row": r["row"], "input_id": r["input_id"], "video": r["video"], "start": None,
            "end": None, "status": "ok" if ok else "timeout", "retryable": not ok,
            "attempts": r["attempts"], "run_id": run, "calibration": False,
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


@dataclass
class Actor:
    """One run: ``inputs`` (its manifest), ``append``, ``compact_only``, ``part_size``."""

    name: str
    inputs: list[str]
    append: bool = False
    compact_only: bool = False
    part_size: int = 2
    seed: int = 0
    # scheduler side
    go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    parked: threading.Event = field(default_factory=threading.Event)
    verdict: str = "step"  # what the fence does when released: step | crash
    done: bool = False
    fenced: bool = False  # a lease check passed and no write followed it yet
    outcome: str = ""
    sim: Any = None
    thread: threading.Thread | None = None


class Simulation:
    """One seeded schedule over a fresh output directory (see the module doc)."""

    def __init__(self, seed: int, root: str, *, max_attempts: int = 3) -> None:
        self.seed, self.root, self.max_attempts = seed, root, max_attempts
        self.rng = random.Random(seed)
        self.holder: Actor | None = None
        self.stalled: list[Actor] = []
        self.trace: list[str] = []
        self.final: dict[str, tuple[str, int]] = {}  # id -> (run, attempts) of its final row
        self.attempts: dict[str, int] = {}
        self._parts: dict[bytes, pa.Table] = {}
        self.counts = {"steps": 0, "crashes": 0, "takeovers": 0, "fenced": 0, "checks": 0}

    # ------------------------------------------------------------------ actors
    def _fence(self, actor: Actor) -> Callable[[], None]:
        def fence() -> None:
            actor.parked.set()
            actor.go.acquire()
            if actor.verdict == "crash":
                raise _Crash
            if self.holder is not actor:
                raise LeaseLost(f"{actor.name} lost its lease")
            actor.fenced = True

        return fence

    def _mutating(self, what: str) -> None:
        """Called by every write and delete of the part protocol (see
        :func:`watch_writes`): it must come right after a lease check of its actor."""
        actor = getattr(_current, "actor", None)
        if actor is None or actor.sim is not self:
            return
        if not actor.fenced:
            self._fail(f"{actor.name} wrote without a lease check first ({what})")
        actor.fenced = False
        self.trace.append(f"{actor.name}: {what}")

    def _body(self, actor: Actor) -> None:
        _current.actor = actor
        actor.sim = self
        rng = random.Random(actor.seed)
        fence = self._fence(actor)
        try:
            inputs = _inputs(actor.inputs)
            # as a labeling run: one read of the output, kept current by commits and
            # compaction, checked against a fresh read at the end
            committed = read_committed(self.root, totals=True)
            if not actor.compact_only:
                todo, _, _ = plan(inputs, committed, retry=True, max_attempts=self.max_attempts)
                writer = PartWriter(
                    self.root, {}, actor.part_size, fence=fence,
                    max_attempts=self.max_attempts, index=committed,
                )  # fmt: skip
                order = list(range(todo.num_rows))
                rng.shuffle(order)
                for start in range(0, len(order), actor.part_size):
                    writer.add(_rows(todo.take(order[start : start + actor.part_size]),
                                     actor.name, rng))  # fmt: skip
                writer.flush()
            compact(self.root, {}, None if actor.append else inputs.ids, fence=fence,
                    state=committed)  # fmt: skip
            _same_index(committed, self._winners())
            actor.outcome = "finished"
        except _Crash:
            actor.outcome = "crashed"
        except LeaseLost:
            actor.outcome = "fenced"
        except BaseException as error:  # noqa: BLE001 - reported as a violation
            actor.outcome = f"error: {type(error).__name__}: {error}"
        finally:
            actor.done = True
            actor.parked.set()

    def _start(self, actor: Actor) -> None:
        self.holder = actor
        self.trace.append(f"{actor.name} takes the lease ({len(actor.inputs)} inputs"
                          f"{', append' if actor.append else ''}"
                          f"{', compaction only' if actor.compact_only else ''})")  # fmt: skip
        actor.thread = threading.Thread(target=self._body, args=(actor,), daemon=True)
        actor.thread.start()
        self._settle(actor)

    def _settle(self, actor: Actor) -> None:
        """Wait until ``actor`` is parked at its next fence or done, then check."""
        actor.parked.wait()
        actor.parked.clear()
        if actor.done:
            actor.thread.join()
            if actor.outcome.startswith("error"):
                self._fail(f"{actor.name} failed: {actor.outcome}")
            if self.holder is actor:
                self.holder = None
            self.trace.append(f"{actor.name} {actor.outcome}")
        self._check(actor)

    def _release(self, actor: Actor, verdict: str) -> None:
        actor.verdict = verdict
        actor.go.release()
        self._settle(actor)

    # ------------------------------------------------------------------ invariants
    def _winners(self) -> list[dict[str, Any]]:
        """The committed winners, by the protocol's own rule (``_winner_mask``) over every
        part file; a part's bytes are parsed once."""
        tables = []
        for index, uri in enumerate(list_parts(self.root)):
            with open(uri, "rb") as handle:
                data = handle.read()
            table = self._parts.get(data)
            if table is None:
                table = pq.read_table(pa.BufferReader(data), columns=CHECKED)
                self._parts[data] = table
            n = table.num_rows
            tables.append(table.append_column("part", pa.array([index] * n, pa.int32()))
                          .append_column("position", pa.array(range(n), pa.int64()))
                          .append_column("uri", pa.array([uri] * n, pa.string())))  # fmt: skip
        if not tables:
            return []
        rows = pa.concat_tables(tables)
        return rows.filter(_winner_mask(rows)).to_pylist()

    def _fail(self, message: str) -> None:
        raise ProtocolViolation(f"seed {self.seed}: {message}\n  " + "\n  ".join(self.trace[-30:]))

    def _check(self, stepped: Actor) -> None:
        self.counts["checks"] += 1
        winners = self._winners()
        rows = {w["input_id"]: w for w in winners}
        # a compaction of an actor whose input lacks an id drops that id's rows, one part
        # at a time: meanwhile an older row of it may show; nothing is owed to it any more
        stale = set() if stepped.append else (set(self.attempts) - set(stepped.inputs))
        for input_id in stale:
            self.final.pop(input_id, None)
            self.attempts.pop(input_id, None)
        for input_id, (run, attempts) in self.final.items():
            row = rows.get(input_id)
            if row is None:
                self._fail(f"the final row of {input_id} (run {run}) was lost")
            if (row["run_id"], row["attempts"], row["retryable"]) != (run, attempts, False):
                self._fail(
                    f"the final row of {input_id} (run {run}, attempt {attempts}) lost to "
                    f"run {row['run_id']} attempt {row['attempts']} retryable {row['retryable']}"
                )
        for input_id, before in self.attempts.items():
            row = rows.get(input_id)
            if row is None:
                self._fail(f"the committed row of {input_id} (attempt {before}) was lost")
            if row["attempts"] < before:
                self._fail(f"{input_id} went back from attempt {before} to {row['attempts']}")
        for input_id, row in rows.items():
            self.attempts[input_id] = row["attempts"]
            if not row["retryable"] and input_id not in self.final:
                self.final[input_id] = (row["run_id"], row["attempts"])

    # ------------------------------------------------------------------ schedule
    def actors(self) -> list[Actor]:
        """Two to four runs over an input that may change between them, one maybe a
        compaction only; part sizes 1–3."""
        rng = self.rng
        out = []
        inputs = rng.sample(UNIVERSE, rng.randint(3, len(UNIVERSE)))
        for k in range(rng.randint(2, 4)):
            if k and rng.random() < 0.4:  # the manifest was edited between runs
                keep = [i for i in inputs if rng.random() < 0.8]
                inputs = keep + [i for i in UNIVERSE if i not in keep and rng.random() < 0.3]
            out.append(Actor(
                name=f"r{k}", inputs=list(inputs), append=rng.random() < 0.2,
                compact_only=k > 0 and rng.random() < 0.25, part_size=rng.randint(1, 3),
                seed=rng.randrange(2**31),
            ))  # fmt: skip
        return out

    def run(self) -> dict[str, Any]:
        """Play the schedule, then a clean final run; raise ``ProtocolViolation`` on any
        broken invariant. Returns the counts."""
        pending = self.actors()
        last = pending[-1]
        while pending or self.holder is not None or self.stalled:
            if self.holder is None and pending:
                self._start(pending.pop(0))
                continue
            if self.holder is None or (self.stalled and self.rng.random() < 0.2):
                stalled = self.stalled.pop(self.rng.randrange(len(self.stalled)))
                self.trace.append(f"{stalled.name} wakes")
                self._release(stalled, "step")
                self.counts["fenced"] += stalled.outcome == "fenced"
                if not stalled.done:
                    self._fail(f"{stalled.name} wrote after losing its lease")
                continue
            actor = self.holder
            roll = self.rng.random()
            if roll < 0.06:
                self.trace.append(f"{actor.name} crashes")
                self.counts["crashes"] += 1
                self._release(actor, "crash")
            elif roll < 0.12 and pending:
                self.trace.append(f"{actor.name} stalls; its lease expires")
                self.counts["takeovers"] += 1
                self.stalled.append(actor)
                self.holder = None
            else:
                self.counts["steps"] += 1
                self._release(actor, "step")
        # the clean final run: exactly one visible row per current input
        final = Actor(name="final", inputs=list(last.inputs), seed=self.rng.randrange(2**31))
        self._start(final)
        while not final.done:
            self._release(final, "step")
        seen: dict[str, int] = {}
        for uri in list_parts(self.root):
            for input_id in pq.read_table(uri, columns=["input_id"]).column(0).to_pylist():
                seen[input_id] = seen.get(input_id, 0) + 1
        current = set(final.inputs)
        extra = sorted(i for i in seen if i not in current)
        twice = sorted(i for i, n in seen.items() if n != 1)
        missing = sorted(current - set(seen))
        if extra or twice or missing:
            self._fail(f"after the final run: rows of non-inputs {extra}, ids with several "
                       f"rows {twice}, inputs without a row {missing}")  # fmt: skip
        return self.counts


def run_schedules(count: int, *, first_seed: int = 0, root: str | None = None) -> dict[str, int]:
    """Play ``count`` seeded schedules (each in a fresh directory under ``root``, default a
    temporary one); returns the summed counts. Raises on the first violation."""
    totals = {"schedules": 0}
    with tempfile.TemporaryDirectory(dir=root) as base, watch_writes():
        for seed in range(first_seed, first_seed + count):
            counts = Simulation(seed, f"{base}/{seed}").run()
            totals["schedules"] += 1
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
    return totals
