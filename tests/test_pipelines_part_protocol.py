"""The part protocol under thousands of seeded schedules (``pipelines.labeling.simulation``):
two or more writers and compactions interleaved, crashes at every step of commit and
compaction, lease takeovers with the old holder still alive. ``bench/part_protocol.py``
plays more."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from pipelines.labeling import parts
from pipelines.labeling.simulation import ProtocolViolation, Simulation, run_schedules, watch_writes

SCHEDULES = 2000


def _chunk(first: int) -> dict[str, int]:
    return run_schedules(SCHEDULES // 2, first_seed=first, root=_shm())


def _shm() -> str | None:
    import os

    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@pytest.mark.slow
def test_thousands_of_schedules_keep_exactly_one_row_and_every_winner():
    with ProcessPoolExecutor(2) as pool:  # two cores: half the schedules each
        results = list(pool.map(_chunk, [0, SCHEDULES // 2]))
    totals = {k: sum(r[k] for r in results) for k in results[0]}
    assert totals["schedules"] == SCHEDULES
    # every kind of event happened many times over
    assert totals["crashes"] > SCHEDULES // 4 and totals["takeovers"] > SCHEDULES // 4
    assert totals["fenced"] == totals["takeovers"]  # each stalled holder was stopped
    print(f"part protocol: {totals}")


def _replay_with(tmp_path, seeds, change) -> str | None:
    """The first violation message under ``change`` (a broken protocol), or None."""
    saved = {name: getattr(parts, name) for name in change}
    for name, value in change.items():
        setattr(parts, name, value)
    try:
        with watch_writes():
            for seed in seeds:
                try:
                    Simulation(seed, str(tmp_path / str(seed))).run()
                except ProtocolViolation as violation:
                    return str(violation)
    finally:
        for name, value in saved.items():
            setattr(parts, name, value)
    return None


def test_the_schedules_catch_a_compaction_that_deletes_its_own_rewrite(tmp_path):
    """Issue 20's item 2 brought back: the rewrite takes the name of a part deleted later."""

    def careless(output, options, current_ids, schema=parts.OUTPUT_SCHEMA, *, fence=None,
                 state=None):  # fmt: skip
        state = state or parts.read_committed(output, options, schema)
        keep = state.winner
        if current_ids is not None and state.rows.num_rows:
            current = parts.pc.is_in(state.rows.column("input_id"), value_set=current_ids)
            keep = parts.pc.and_(keep, current)
        dropped = parts.pc.invert(keep)
        removed, added = [], []
        for index in sorted(set(state.rows.column("part").filter(dropped).to_pylist())):
            uri = state.parts[index]
            mine = parts.pc.and_(parts.pc.equal(state.rows.column("part"), index), keep)
            kept = parts.read_part(uri, options, schema=schema).take(
                state.rows.column("position").filter(mine)
            )
            if fence:
                fence()
            new = parts.write_part(output, kept, options, schema) if kept.num_rows else None
            if new is not None:
                added.append((new, parts.as_written(kept, schema)))
            if new != uri:  # the bug: the rewrite may carry the name of a part deleted here
                if fence:
                    fence()
                parts.remove(uri, storage_options=options)
                removed.append(uri)
        for uri in removed:
            state.remove(uri)
        for uri, table in added:
            state.add(uri, table)
        return {}

    import pipelines.labeling.simulation as simulation

    saved = simulation.compact
    simulation.compact = careless
    try:
        found = _replay_with(tmp_path, range(400), {})
    finally:
        simulation.compact = saved
    # the deleted rewrite shows as a lost winner, or as the run's index naming a part
    # that is gone
    assert found is not None and ("lost" in found or "disagrees" in found), found


def test_the_schedules_catch_a_commit_without_a_lease_check(tmp_path):
    class Unfenced(parts.PartWriter):
        def _commit(self, n: int) -> None:
            fence, self.fence = self.fence, None
            try:
                super()._commit(n)
            finally:
                self.fence = fence

    import pipelines.labeling.simulation as simulation

    saved = simulation.PartWriter
    simulation.PartWriter = Unfenced
    try:
        found = _replay_with(tmp_path, range(20), {})
    finally:
        simulation.PartWriter = saved
    assert found is not None and "without a lease check" in found
