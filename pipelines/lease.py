"""One writer at a time: a lease with a fencing check, judged by the storage's clock.

``<dir>/_lease.json`` = ``{owner, host, pid, what, started, token, beats, heartbeat,
seconds}``. A labeling run takes the lease of its output, a training job the lease of its
run directory, before touching anything; a second one refuses while the lease is live,
naming the holder.

* **Conditional writes.** Every change of the lease file is a compare-and-swap where the
  store offers one: on S3 (and S3-compatible servers that honour it) ``If-None-Match: *``
  to create, ``If-Match: <etag>`` to renew, take over and delete; on local and shared
  POSIX filesystems the read-compare-write runs under an exclusive ``flock``. Other
  stores (gcs, azure, ...) write and then confirm by reading back after a pause.
* **Fencing.** The holder renews by compare-and-swap against the version it last wrote,
  from a background thread every third of the lease, and :meth:`Lease.check` does one
  more before every commit and compaction step. A run whose swap fails (someone else
  holds the lease now) or that could not renew for ¾ of the lease stops with
  :class:`frameexit.errors.LeaseLost` (exit 1), before it writes. ``token`` counts
  takeovers, so a log line or record names which tenure wrote.
* **Expiry without trusting clocks.** A lease is expired when the *storage* says its last
  renewal is older than the holder's own ``seconds``: the age is the modification time
  of a probe the contender writes next to it minus the lease's modification time, both
  stamped by the same store. Where the store reports no times, the contender counts the
  holder's heartbeats instead: it waits one lease period and takes over only if
  ``beats`` did not move. On the same host, a lease whose process is gone is a crashed
  run's and is taken over at once.
* **Release** deletes the lease only if it is still the version this run wrote.

The holder stops committing ¾ of a lease after its last successful renewal began, and a
contender takes over only a full lease after that renewal landed, by the store's clock; so
one writer at a time holds as long as the two machines' clocks *run* at similar rates
(their offsets do not matter).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from frameexit.errors import ConfigError, LeaseLost
from pipelines.lease_stores import LEASE_NAME, LeaseStore, Version

__all__ = ["CONFIRM_S", "LEASE_NAME", "SAFETY", "Lease", "LeaseStore", "Version"]

log = logging.getLogger("frameexit.pipelines.lease")

CONFIRM_S = 0.3  # stores with compare-and-swap: a last read-back after taking the lease
SAFETY = 0.75  # the holder trusts its lease for this share of it after a renewal began


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """The writer lease of one output or run directory (a context manager: take, renew,
    release). ``what`` and ``field`` name the writer and the setting in messages."""

    def __init__(
        self,
        directory: str,
        options: Mapping[str, Any] | None,
        *,
        seconds: float = 120.0,
        what: str = "labeling run",
        field: str = "--output",
        store: LeaseStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.options = dict(options or {})
        self.seconds = float(seconds)
        self.what, self.field = what, field
        self.store = store or LeaseStore.open(directory, options)
        self.uri = self.store.uri
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.started = time.time()
        self.token = 0
        self.beats = 0
        self.clock = clock
        self._version: Version | None = None
        self._valid_until = 0.0
        self._lost: str | None = None
        self._left: float | None = None  # seconds until a refused holder's lease expires
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ records
    def _payload(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": self.host,
                "pid": os.getpid(),
                "what": self.what,
                "started": self.started,
                "token": self.token,
                "beats": self.beats,
                "heartbeat": time.time(),
                "seconds": self.seconds,
            }  # fmt: skip
        ).encode()

    @staticmethod
    def _parse(version: Version | None) -> dict[str, Any] | None:
        if version is None:
            return None
        try:
            record = json.loads(version.data)
        except ValueError:  # a torn or foreign file: an unknown holder
            return {}
        return record if isinstance(record, dict) else {}

    def read(self) -> dict[str, Any] | None:
        """The lease record on the store now, or None."""
        return self._parse(self.store.read())

    # ------------------------------------------------------------------ expiry
    def _live(self, record: dict[str, Any], version: Version) -> bool:
        """Whether another writer's lease still holds (see the module doc). A lease
        renewed within half its length holds; an older one is watched until it is
        renewed (live) or reaches its length by the store's clock (expired); without a
        store clock, for one lease length of unchanged heartbeats."""
        same_host = record.get("host") == self.host and "pid" in record
        if same_host and not _pid_alive(int(record.get("pid", -1))):
            return False  # a crashed run on this machine
        seconds = float(record.get("seconds") or self.seconds)
        age = self._age(version)
        self._left = None if age is None else max(0.0, seconds - age)
        if age is not None and age <= seconds / 2:
            return True
        wait = seconds if age is None else seconds - age
        if wait > 0:
            log.info(
                "%s has a lease whose holder (host %s, pid %s) has not renewed it for %s: "
                "waiting up to %.0f s for a heartbeat before taking it over",
                self.directory, record.get("host"), record.get("pid"),
                "a while" if age is None else f"{age:.0f} s", wait,
            )  # fmt: skip
        deadline = self.clock() + max(wait, 0.0)
        while self.clock() < deadline:
            time.sleep(max(0.05, min(1.0, seconds / 20, deadline - self.clock())))
            now = self.store.read()
            if now is None or now.data != version.data:
                return now is not None  # renewed (or another writer's now); gone: take it
        return False

    def _age(self, version: Version) -> float | None:
        """Seconds since the lease was last written, by the store's clock (None: the
        store reports no times)."""
        if version.mtime is None:
            return None
        try:
            now = self.store.now()
        except Exception as error:  # noqa: BLE001 - then heartbeats are counted
            log.debug("no storage clock on %s: %s", self.directory, error)
            return None
        return None if now is None else max(0.0, now - version.mtime)

    # ------------------------------------------------------------------ take
    def _refuse(self, record: dict[str, Any]) -> ConfigError:
        left = (
            ""
            if self._left is None
            else (f"; if it is gone, its lease expires in {self._left:.0f} s")
        )
        started = time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0) or 0))
        )
        return ConfigError(
            self.field,
            f"{self.directory} is being written by another {record.get('what', self.what)} "
            f"(host {record.get('host')}, pid {record.get('pid')}, since {started}, lease "
            f"token {record.get('token')}{left}). Wait for it to finish, or write elsewhere",
        )

    def acquire(self) -> None:
        """Take the lease or raise ``ConfigError`` naming its live holder."""
        for _ in range(5):
            seen = self.store.read()
            record = self._parse(seen)
            began = self.clock()
            if seen is None or record is None:
                self.token, self.beats = 1, 0
                written = self.store.create(self._payload())
            elif self._live(record, seen):
                raise self._refuse(record)
            else:
                self.token, self.beats = int(record.get("token", 0) or 0) + 1, 0
                log.info(
                    "taking over the expired lease of %s (host %s, pid %s)",
                    self.directory, record.get("host"), record.get("pid"),
                )  # fmt: skip
                written = self.store.replace(self._payload(), seen)
            if written is None:
                continue  # someone else changed the lease meanwhile: look again
            self._confirm(written, began)
            self._thread = threading.Thread(target=self._renew_loop, name="fe-lease", daemon=True)
            self._thread.start()
            return
        raise self._refuse(self.read() or {})

    def _confirm(self, written: Version, began: float) -> None:
        """Without compare-and-swap, a slower write may land after ours: wait a few times
        our own write's latency, then read back."""
        latency = self.clock() - began
        time.sleep(CONFIRM_S if self.store.conditional else max(1.0, 5 * latency))
        now = self.store.read()
        record = self._parse(now)
        if now is None or record is None or record.get("owner") != self.owner:
            raise self._refuse(record or {})
        self._version = now
        self._valid_until = began + SAFETY * self.seconds

    # ------------------------------------------------------------------ hold
    def _renew(self) -> bool:
        """One compare-and-swap renewal; False when the lease is no longer ours."""
        with self._guard:
            if self._lost is not None or self._version is None:
                return False
            began = self.clock()
            self.beats += 1
            written = self.store.replace(self._payload(), self._version)
            if written is None:
                holder = self.read() or {}
                self._lost = (
                    f"another {holder.get('what', self.what)} (host {holder.get('host')}, pid "
                    f"{holder.get('pid')}, token {holder.get('token')}) took it over"
                    if holder
                    else "its lease file was removed"
                )
                return False
            self._version = written
            self._valid_until = began + SAFETY * self.seconds
            return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self._renew():
                    log.error("lost the lease on %s: %s", self.directory, self._lost)
                    return
            except Exception as error:  # noqa: BLE001 - a missed heartbeat is retried
                log.warning("lease heartbeat on %s failed: %s", self.directory, error)

    def check(self) -> None:
        """The fence before a commit: renew by compare-and-swap now; raise
        :class:`LeaseLost` if the lease is not this run's any more, or if it could not be
        renewed within ¾ of a lease (another writer may have taken it over)."""
        try:
            held = self._renew()
        except Exception as error:  # noqa: BLE001 - judged by the deadline below
            log.warning("lease renewal on %s failed: %s", self.directory, error)
            held = self._lost is None and self.clock() < self._valid_until
        if not held:
            reason = self._lost or (f"it could not be renewed for {SAFETY * self.seconds:.0f} s")
            raise LeaseLost(
                f"this {self.what} lost its lease on {self.directory} ({reason}); it stopped "
                "before writing more. What it committed before stays; rerun once the other "
                "writer is done"
            )

    @property
    def lost(self) -> bool:
        """Whether the renewal thread found the lease taken over."""
        return self._lost is not None

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still the version this run wrote."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._guard:
            if self._version is not None and self._lost is None:
                with contextlib.suppress(Exception):
                    self.store.delete(self._version)
            self._version = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
