"""One writer per output: a lease file with owner, heartbeat and expiry.

``<output>/_lease.json`` = ``{owner, host, pid, started, heartbeat, expires}``. A run takes
the lease before it touches anything (temporaries, parts, records), renews it from a
background thread every third of ``label.lease_seconds``, and deletes it when it ends. A
second run on the same output refuses while the lease is live, naming the holder. A
crashed run stops renewing, so its lease expires; on the same host a lease whose process
no longer exists is taken over at once.

Object stores have no compare-and-swap that every S3-compatible server honours, so taking
a lease is write-then-confirm: the run writes its lease, waits a moment, and reads it back
(two runs starting within that moment: the later write wins and the other refuses).
Local outputs use an exclusive create (``O_EXCL``) for the first write.
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
from collections.abc import Mapping
from typing import Any

from frameexit.errors import ConfigError
from frameexit.storage import is_local, join_uri, local_path, read_bytes, remove, write_text
from pipelines.labeling.schema import LEASE_NAME

log = logging.getLogger("frameexit.pipelines.label")

CONFIRM_S = 0.3


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """The writer lease of one labeling output (a context manager: take, renew, release)."""

    def __init__(
        self, output: str, options: Mapping[str, Any] | None, *, seconds: float = 120.0
    ) -> None:
        self.output = output
        self.options = dict(options or {})
        self.seconds = float(seconds)
        self.uri = join_uri(output, LEASE_NAME)
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "owner": self.owner,
            "host": self.host,
            "pid": os.getpid(),
            "started": self.started,
            "heartbeat": now,
            "expires": now + self.seconds,
        }

    def read(self) -> dict[str, Any] | None:
        """The lease on the output now, or None."""
        try:
            return json.loads(read_bytes(self.uri, storage_options=self.options))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: treat as no lease
            return None

    def _live(self, lease: dict[str, Any]) -> bool:
        if lease.get("owner") == self.owner:
            return False
        if float(lease.get("expires", 0)) < time.time():
            return False
        # on the same machine a lease whose process is gone is a crashed run's
        return lease.get("host") != self.host or _pid_alive(int(lease.get("pid", -1)))

    def _refuse(self, lease: dict[str, Any]) -> ConfigError:
        age = time.time() - float(lease.get("heartbeat", 0))
        left = float(lease.get("expires", 0)) - time.time()
        return ConfigError(
            "--output",
            f"{self.output} is being written by another labeling run (host "
            f"{lease.get('host')}, pid {lease.get('pid')}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(lease.get('started', 0)))}; "
            f"last heartbeat {age:.0f} s ago, its lease expires in {max(left, 0):.0f} s). "
            "Wait for it to finish, or use another --output",
        )

    def acquire(self) -> None:
        """Take the lease or raise ``ConfigError`` naming its live holder."""
        current = self.read()
        if current is not None and self._live(current):
            raise self._refuse(current)
        payload = json.dumps(self._record())
        if is_local(self.uri) and current is None:
            path = local_path(self.uri)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raced = self.read()
                raise self._refuse(raced or {}) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
        else:
            write_text(self.uri, payload, storage_options=self.options)
        time.sleep(CONFIRM_S)
        confirmed = self.read()
        if confirmed is None or confirmed.get("owner") != self.owner:
            raise self._refuse(confirmed or {})
        self._thread = threading.Thread(target=self._renew, name="fe-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                current = self.read()
                if current is not None and current.get("owner") != self.owner:
                    log.error("lost the lease on %s to %s", self.output, current.get("host"))
                    return
                write_text(self.uri, json.dumps(self._record()), storage_options=self.options)
            except Exception as error:  # noqa: BLE001 - a missed heartbeat is retried
                log.warning("lease heartbeat on %s failed: %s", self.output, error)

    def release(self) -> None:
        """Stop renewing and delete the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self.read()
        if current is not None and current.get("owner") == self.owner:
            with contextlib.suppress(Exception):
                remove(self.uri, storage_options=self.options)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
