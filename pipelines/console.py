"""A console a person can read: the project's lines on the terminal, Ray's own in a file.

A quiet run (the default; ``--verbose`` / ``FRAMEEXIT_VERBOSE=1`` turns it off) keeps
Ray's internal logging off the terminal:

- worker and system lines Ray forwards to the driver (``(raylet) WARNING: 16 PYTHON
  worker processes``, ``(gcs_server) ... Failed to kill actor``, Ray Data and Ray Train
  notices from workers): only the project's own ``[frameexit]`` lines are printed;
- the driver's C++ log lines (``core_worker.cc:2465: ... PreemptionWatcher``), written by
  Ray's core straight to file descriptor 2;
- Ray Data's driver-side notices (``Dataset ... execution finished``, ``Progress bars
  disabled``, ``Data sink Parquet finished``): its console handler shows errors only;
- tracebacks of Ray's own background threads on the driver.

Each hidden line is appended to :data:`HIDDEN_FILE` in the logs folder of the Ray session
(``{session}/logs/``, beside Ray's own files: ``raylet.out``, ``gcs_server.err``,
``worker-*.out``, ``ray-data/``). A hidden line that matters to the user — a worker
killed for lack of memory, a lost node — is restated once on the console in the
project's words (:data:`RESTATED`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("frameexit.pipelines")

#: The file, in ``{session}/logs/``, that holds every line kept off the console.
HIDDEN_FILE = "frameexit-hidden-console.log"

#: A line of the project's own that workers print (Train epoch lines, labeling notices).
PROJECT_PREFIX = "[frameexit]"

#: Ray's C++ log line: ``[2026-12-03 20:10:46,247 E 19849 19912] core_worker.cc:2465: ...``.
CPP_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] \S+:\d+:")

#: Hidden lines that matter, and what the console says about them instead (once each).
RESTATED: dict[str, tuple[re.Pattern[str], str]] = {
    "memory": (
        re.compile(
            r"killed due to (the node running low on )?memory|memory pressure|"
            r"OutOfMemoryError|out of memory|OOM kill",
            re.IGNORECASE,
        ),
        "Ray killed a worker for lack of memory on a node; the work is retried, but lower "
        "the memory each worker needs (data.decode_concurrency, train.batch_size, "
        "label.batch_size) if it happens again",
    ),
    "node": (
        re.compile(
            r"node\b.*\b(marked dead|has died|died|was lost|is dead)|NodeDiedError|"
            r"raylet\b.*\b(died|exited unexpectedly)|lost (a|the) node",
            re.IGNORECASE,
        ),
        "a Ray node was lost; its tasks are retried on the others and a resumable run "
        "continues from its last checkpoint",
    ),
}


def restatement(line: str) -> tuple[str, str] | None:
    """``(kind, the project's words)`` when a hidden Ray line matters to the user."""
    for kind, (pattern, words) in RESTATED.items():
        if pattern.search(line):
            return kind, words
    return None


def shown(line: str) -> bool:
    """Whether a line Ray forwards from a worker belongs on a quiet console."""
    return line.lstrip().startswith(PROJECT_PREFIX)


class HiddenLines:
    """Where a quiet console puts Ray's lines: a file (lines arriving before Ray has a
    session folder wait in memory), and a restatement on the console for those that
    matter. Thread-safe: Ray's log thread, its error thread and the stderr reader
    all write here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._file: Any = None
        self.path: str | None = None
        self.restated: set[str] = set()
        self.count = 0

    def open(self, folder: str) -> str:
        """Write to ``folder/HIDDEN_FILE`` from now on (pending lines first)."""
        path = os.path.join(folder, HIDDEN_FILE)
        with self._lock:
            if self.path == path:
                return path
            os.makedirs(folder, exist_ok=True)
            if self._file is not None:
                self._file.close()
            self._file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            self.path = path
            self._file.writelines(self._pending)
            self._pending.clear()
            self._file.flush()
        return path

    def add(self, source: str, line: str) -> None:
        """Keep ``line`` (from ``source``) off the console; restate it if it matters."""
        text = f"({source}) {line.rstrip()}\n" if source else line.rstrip() + "\n"
        with self._lock:
            self.count += 1
            if self._file is None:
                self._pending.append(text)
            else:
                self._file.write(text)
                self._file.flush()
            said = restatement(line)
            if said is None or said[0] in self.restated:
                return
            self.restated.add(said[0])
        where = f" (Ray's words: {self.path})" if self.path else ""
        log.warning("%s%s", said[1], where)


HIDDEN = HiddenLines()


def _source(data: dict[str, Any]) -> str:
    name = data.get("actor_name") or data.get("task_name") or ""
    pid = data.get("pid", "")
    return f"{name} pid={pid}".strip() if name else str(pid)


def _quiet_print_to_stdstream(original: Callable[..., None]) -> Callable[..., None]:
    """Ray's printer of forwarded worker/system lines, keeping only the project's."""

    def forward(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        from pipelines.common import verbose

        if verbose():
            original(data, ignore_prefix=ignore_prefix)
            return
        lines = list(data.get("lines", []))
        if data.get("pid") == "autoscaler":  # what Ray would print of it: event summaries
            from ray._private import worker as ray_worker

            lines = list(ray_worker.filter_autoscaler_events(lines))
        keep = [line for line in lines if shown(line)]
        for line in lines:
            if not shown(line):
                HIDDEN.add(_source(data), line)
        if keep:
            original({**data, "lines": keep}, ignore_prefix=ignore_prefix)

    forward.__frameexit_quiet__ = True  # type: ignore[attr-defined]
    return forward


def quiet_forwarded_lines() -> None:
    """Filter what Ray prints of its workers' and system processes' output on the driver
    (before ``ray.init``, which binds the printer). Idempotent."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # another Ray layout: nothing to filter
        return
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "__frameexit_quiet__", False):
        return
    ray_worker.print_to_stdstream = _quiet_print_to_stdstream(printer)


def quiet_ray_data_console() -> None:
    """Ray Data's driver-side console handler: errors only (its file handler, in the
    session's ``logs/ray-data/``, keeps everything). ``import ray.data`` reconfigures the
    ``ray.data`` logger, so this runs after it."""
    import ray.data  # noqa: F401 - configures the logger this adjusts

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.ERROR)


class _StderrFilter:
    """File descriptor 2 through a pipe: Ray's C++ log lines go to :data:`HIDDEN`, the
    rest to the real stderr. Ray's core writes its ERROR lines straight to fd 2, below
    Python, so no logging setting reaches them."""

    def __init__(self) -> None:
        self.original: int | None = None
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        if self.original is not None:
            return
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stderr.flush()
        read_end, write_end = os.pipe()
        self.original = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(
            target=self._pump, args=(read_end, self.original), name="frameexit-stderr"
        )
        self._thread.daemon = True
        self._thread.start()
        atexit.register(self.uninstall)

    def _pump(self, read_end: int, original: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._route(raw + b"\n", original)
            if pending:
                self._route(pending, original)

    @staticmethod
    def _route(raw: bytes, original: int) -> None:
        text = raw.decode("utf-8", errors="replace")
        if CPP_LOG_LINE.match(text):
            HIDDEN.add("", text)
        else:
            with contextlib.suppress(OSError):
                os.write(original, raw)

    def uninstall(self) -> None:
        """Put the real stderr back and let the reader finish what is in the pipe."""
        if self.original is None:
            return
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stderr.flush()
        os.dup2(self.original, 2)  # closes the pipe's last write end: the reader ends
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self.original)
        self.original, self._thread = None, None


STDERR = _StderrFilter()


def _quiet_thread_excepthook(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """A traceback in one of Ray's own driver threads (e.g. Ray Train's placement-group
    monitor asking the state API which cluster to use) goes to the hidden file."""
    ray_dir = str(Path(__import__("ray").__file__).parent)

    def hook(args: Any) -> None:
        frames = []
        tb = args.exc_traceback
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        own = [f for f in frames if not f.endswith(os.path.join("", "threading.py"))]
        if own and own[0].startswith(ray_dir):  # the thread's target is Ray's
            import traceback

            name = getattr(args.thread, "name", "?")
            text = "".join(
                traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
            )
            for line in f"exception in Ray's thread {name}:\n{text}".splitlines():
                HIDDEN.add("driver", line)
            return
        original(args)

    hook.__frameexit_quiet__ = True  # type: ignore[attr-defined]
    return hook


def quiet_console() -> None:
    """Before ``ray.init`` on the driver of a quiet run: forwarded lines filtered, the
    C++ lines of fd 2 and tracebacks of Ray's threads hidden. Call :func:`hidden_to`
    once Ray has a session folder."""
    quiet_forwarded_lines()
    if not getattr(threading.excepthook, "__frameexit_quiet__", False):
        threading.excepthook = _quiet_thread_excepthook(threading.excepthook)
    try:
        os.fstat(2)
    except OSError:  # no stderr at all: nothing to filter
        return
    STDERR.install()


def ray_logs_folder() -> str | None:
    """The logs folder of this driver's Ray session (``{session}/logs``), if connected."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return None
    node = getattr(ray_worker, "_global_node", None)
    if node is None:
        return None
    try:
        return node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - a Ray without it: no folder to name
        return None


def hidden_to(folder: str | None) -> str | None:
    """Send hidden lines to ``folder`` (Ray's session logs); return the file's path."""
    if folder is None:
        import tempfile

        folder = tempfile.mkdtemp(prefix="frameexit-ray-logs-")
    try:
        return HIDDEN.open(folder)
    except OSError:
        return None
