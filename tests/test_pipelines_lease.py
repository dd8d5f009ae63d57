"""The writer lease (``pipelines.lease``): one holder, storage-clock expiry, fencing.

Local directories and a real S3 server (moto, which honours ``If-None-Match`` and
``If-Match``); a store without times exercises heartbeat counting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from frameexit.errors import ConfigError, LeaseLost
from pipelines.common import EXIT_INCOMPLETE, run_command
from pipelines.labeling.parts import PartWriter, compact, list_parts, read_committed
from pipelines.labeling.schema import OUTPUT_SCHEMA
from pipelines.lease import LEASE_NAME, Lease, LeaseStore, Version


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def _foreign(path: Path, *, age: float, host: str = "elsewhere", seconds: float = 60, **extra):
    """A lease of another machine whose last write the store stamped ``age`` s ago."""
    record = {"owner": "theirs", "host": host, "pid": 1, "started": 0, "token": 7,
              "beats": 3, "seconds": seconds, **extra}  # fmt: skip
    path.write_text(json.dumps(record))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_a_live_lease_refuses_and_release_removes_only_its_own(tmp_path):
    out = str(tmp_path / "out")
    holder = Lease(out, None, seconds=60)
    holder.acquire()
    try:
        with pytest.raises(ConfigError, match="being written by another labeling run") as info:
            Lease(out, None, seconds=60).acquire()
        assert f"pid {os.getpid()}" in str(info.value) and "token 1" in str(info.value)
    finally:
        holder.release()
    assert not (Path(out) / LEASE_NAME).exists()
    # a release after someone else took over leaves the other's lease in place
    first = Lease(out, None, seconds=60)
    first.acquire()
    first._stop.set()  # its heartbeats stop (a paused or partitioned holder)
    _foreign(Path(out) / LEASE_NAME, age=0)
    first.release()
    assert json.loads((Path(out) / LEASE_NAME).read_text())["owner"] == "theirs"


def test_expiry_is_judged_by_the_store_clock_not_the_holders_timestamps(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lease = out / LEASE_NAME
    # a holder whose clock runs 10 minutes behind (its own stamps look ancient) but that
    # renewed 1 s ago by the store's clock: live
    _foreign(lease, age=1, heartbeat=time.time() - 600, expires=time.time() - 480)
    with pytest.raises(ConfigError, match="host elsewhere"):
        Lease(str(out), None, seconds=60).acquire()
    # a holder whose clock runs far ahead (stamps in the future) but silent for 2 leases
    _foreign(lease, age=130, heartbeat=time.time() + 3600, expires=time.time() + 3720)
    with Lease(str(out), None, seconds=60) as taken:
        record = taken.read()
        assert record["owner"] == taken.owner and record["token"] == 8  # takeovers counted
    # the holder's own lease length counts, not the contender's
    _foreign(lease, age=100, seconds=300)
    with pytest.raises(ConfigError, match="expires in 2\\d\\d s"):
        Lease(str(out), None, seconds=30).acquire()


def test_a_stale_lease_is_watched_then_taken_and_a_renewed_one_refuses(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lease = out / LEASE_NAME
    _foreign(lease, age=0.8, seconds=1.0)  # older than half its length: watched
    began = time.monotonic()
    with Lease(str(out), None, seconds=1.0):
        pass
    assert time.monotonic() - began < 3
    _foreign(lease, age=0.6, seconds=1.0)

    def renew() -> None:
        time.sleep(0.1)
        _foreign(lease, age=0, seconds=1.0, beats=4)

    threading.Thread(target=renew).start()
    with pytest.raises(ConfigError, match="host elsewhere"):
        Lease(str(out), None, seconds=1.0).acquire()


def test_a_crashed_run_on_this_host_is_taken_over_at_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = Lease(str(out), None)
    _foreign(out / LEASE_NAME, age=0, host=holder.host, pid=_dead_pid(), seconds=600)
    began = time.monotonic()
    with Lease(str(out), None) as taken:
        assert taken.token == 8
    assert time.monotonic() - began < 2


class _Timeless(LeaseStore):
    """A store that reports no modification times (heartbeats must be counted)."""

    def read(self) -> Version | None:
        found = super().read()
        return None if found is None else Version(found.data, found.tag, None)

    def now(self) -> float | None:
        return None


def test_without_a_store_clock_heartbeats_are_counted(tmp_path):
    out = str(tmp_path / "out")
    holder = Lease(out, None, seconds=0.6, store=_Timeless(out, None))
    holder.acquire()  # renews every 0.2 s
    try:
        with pytest.raises(ConfigError, match="being written"):
            Lease(out, None, seconds=0.6, store=_Timeless(out, None)).acquire()
    finally:
        holder._stop.set()  # dies without releasing
        holder._thread.join()
    began = time.monotonic()
    with Lease(out, None, seconds=0.6, store=_Timeless(out, None)) as taken:
        assert taken.token == 2
    assert time.monotonic() - began >= 0.5  # it watched one lease length first


def _rows(ids: list[str], attempts: int = 1, retryable: bool = False) -> pa.Table:
    n = len(ids)
    table = OUTPUT_SCHEMA.empty_table().to_pydict()
    defaults = {f.name: None for f in OUTPUT_SCHEMA}
    rows = [{**defaults, "input_id": i, "row": k, "video": i, "status": "timeout" if
             retryable else "ok", "retryable": retryable, "attempts": attempts}
            for k, i in enumerate(ids)]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
    assert table.num_rows == n
    return table


def test_a_writer_that_lost_its_lease_commits_and_compacts_nothing(tmp_path):
    out = str(tmp_path / "out")
    lease = Lease(out, None, seconds=60)
    lease.acquire()
    writer = PartWriter(out, {}, 2, fence=lease.check)
    writer.add(_rows(["a", "b"]))
    assert len(list_parts(out)) == 1
    lease._stop.set()
    _foreign(Path(out) / LEASE_NAME, age=0)  # another writer took the output over
    with pytest.raises(LeaseLost, match="another labeling run \\(host elsewhere"):
        writer.add(_rows(["c", "d"], attempts=2))  # a full part: committed at once
    assert len(list_parts(out)) == 1
    writer_b = PartWriter(out, {}, 2)  # the new holder's row supersedes a
    writer_b.add(_rows(["a", "x"], attempts=2))
    before = sorted(list_parts(out))
    with pytest.raises(LeaseLost):
        compact(out, {}, None, fence=lease.check)
    assert sorted(list_parts(out)) == before  # nothing deleted or rewritten
    assert run_command(lambda argv: lease.check(), []) == EXIT_INCOMPLETE


def test_a_holder_that_cannot_renew_in_time_stops(tmp_path):
    now = [0.0]
    out = str(tmp_path / "out")
    lease = Lease(out, None, seconds=60, clock=lambda: now[0])
    lease.acquire()
    lease._stop.set()
    lease.check()  # renews fine

    def broken(data: bytes, seen: Version) -> Version | None:
        raise OSError("the store is unreachable")

    lease.store.replace = broken  # type: ignore[method-assign]
    now[0] = 30.0
    lease.check()  # within 3/4 of the lease of the last renewal: still trusted
    now[0] = 46.0
    with pytest.raises(LeaseLost, match="could not be renewed for 45 s"):
        lease.check()


def test_max_attempts_makes_a_retryable_row_final(tmp_path):
    out = str(tmp_path / "out")
    writer = PartWriter(out, {}, 10, max_attempts=3)
    writer.add(_rows(["a"], attempts=2, retryable=True))
    writer.add(_rows(["b"], attempts=3, retryable=True))
    writer.flush()
    winners = read_committed(out).winners.to_pydict()
    assert dict(zip(winners["input_id"], winners["retryable"], strict=True)) == {
        "a": True, "b": False,
    }  # fmt: skip


@pytest.mark.s3
def test_on_s3_one_of_two_racing_writers_wins_and_fencing_holds(moto_s3, s3_bucket):
    out = f"{s3_bucket}/out"
    options = moto_s3.storage_options
    for trial in range(4):
        where = f"{out}/{trial}"
        leases = [Lease(where, options, seconds=30) for _ in range(2)]
        outcomes: list[str] = []
        gate = threading.Barrier(2)

        def take(lease: Lease, gate=gate, outcomes=outcomes) -> None:
            gate.wait()
            try:
                lease.acquire()
                outcomes.append("won")
            except ConfigError:
                outcomes.append("refused")

        threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["refused", "won"]
        winner = next(lease for lease in leases if lease._version is not None)
        assert winner.store.conditional
        winner.check()
        winner.release()
    # an expired lease (by the store's clock) is taken over; the old holder is fenced off
    old = Lease(out, options, seconds=2)
    old.acquire()
    old._stop.set()
    old._thread.join()
    time.sleep(2.5)
    with Lease(out, options, seconds=30) as new:
        assert new.token == 2
        with pytest.raises(LeaseLost):
            old.check()
        old.release()  # must not remove the new holder's lease
        assert new.read()["owner"] == new.owner


def test_a_second_training_job_with_the_same_name_refuses_before_ray(tmp_path, tiny_corpus):
    from frameexit.config import load_config
    from pipelines.common import RunPaths
    from pipelines.pipeline import run_pipeline

    cfg = load_config(None, [f"data.manifest={tiny_corpus.manifest}",
                             f"train.storage={tmp_path}", "train.name=shared"])  # fmt: skip
    paths = RunPaths(cfg)
    import ray

    was = ray.is_initialized()  # the session's Ray may be up already
    held = Lease(paths.root, None, what="training job", field="train.name")
    with held, pytest.raises(ConfigError) as info:
        run_pipeline(cfg, resume=True)
    assert info.value.field == "train.name" and "another training job" in str(info.value)
    assert ray.is_initialized() == was  # refused before any Ray work


def test_a_rerun_without_append_refuses_an_output_holding_other_shards(tmp_path):
    from frameexit.config import load_config
    from pipelines.labeling.job import LabelJob, check_fingerprint

    out = str(tmp_path / "out")

    def job(source: str) -> LabelJob:
        return LabelJob(load_config(None, []), source, out, None, {}, 1.0, [], {"k": 1})

    check_fingerprint(job("/in/shard-a.csv"), {}, overwrite=False)
    check_fingerprint(job("/in/shard-b.csv"), {}, overwrite=False, append=True)
    for source in ("/in/shard-a.csv", "/in/shard-c.csv"):  # a shard it holds, or a new one
        with pytest.raises(ConfigError, match="shard-b.csv.*--append"):
            check_fingerprint(job(source), {}, overwrite=False)
    check_fingerprint(job("/in/shard-a.csv"), {}, overwrite=False, append=True)
