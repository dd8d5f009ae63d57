"""``open_video`` / ``VideoReader`` / ``read_frames``: exact frames at indices from any URI.

Data flow of one reader (opened once, asked step by step as the exit gates decide)::

    URI ──Source──> bytes (local file | one GET | ranged block cache)
                      │
                      ├─ PyAV probe: container, stream, packet table (+ decord trust rule)
                      │
        get(step's indices) ──watchdog thread──> decord (trusted) | PyAV exact seek+decode
                      │
                      └─> uint8 [n, H, W, 3] in the order asked

What is fetched when (remote URIs; local files are read in place by the decoders):

* ``fetch="whole"`` (default): the whole object in one GET inside ``open_video``; later
  ``get`` calls read nothing from storage. Best for the usual clip (a few MB): one round
  trip, and both decord and the packet scan need every packet anyway (decord indexes
  every packet when it opens a file, and copies a file-like object whole into memory).
* ``fetch="ranges"``: ``open_video`` reads the container header (MP4: the ``moov`` box,
  wherever it is) through an fsspec block cache (``block_size`` bytes per GET, LRU of
  ``max_blocks``); each ``get`` then reads only the blocks of the GOPs it decodes, and a
  block stays cached for later steps. Uses PyAV's index mode (see ``pyav_backend``);
  containers without a sample index (MKV/WebM/TS) fall back to a scan, i.e. every block is
  read once at open. Worth it for long videos where an early exit leaves most GOPs unread.

Exactness: ``backend="auto"`` uses decord only where its random access is known to be
exact (``decord_backend.trust_decord``) and PyAV's exact seek otherwise; ``"pyav"``
always the exact path; ``"decord"`` trusts decord blindly (fast, wrong on open GOPs,
AVI and MPEG-TS). ``VideoReader.backend`` and ``.fallback_reason`` say what was used.

Time bound: with ``timeout_s`` set, all work for a reader runs on one daemon thread and
the caller waits at most ``timeout_s`` *in total* over ``open_video`` and every ``get``
(time between calls, e.g. model compute, does not count). When it runs out the call
raises ``VideoDecodeError(kind="timeout")``, the reader becomes unusable, the PyAV path
stops at its next packet and a stuck native call is abandoned on its daemon thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from frameexit.errors import VideoDecodeError
from frameexit.video.decord_backend import DecordDecoder, trust_decord
from frameexit.video.pyav_backend import Cancelled, PyAVDecoder
from frameexit.video.source import (
    DEFAULT_MAX_BLOCKS,
    FETCH_MODES,
    Source,
    _error_for,
    classify_open_failure,
)

BACKENDS = ("auto", "pyav", "decord")
DEFAULT_TIMEOUT_S = 120.0

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "FETCH_MODES",
    "VideoReader",
    "clip_indices",
    "open_video",
    "read_frames",
]


def clip_indices(center: int, length: int, num_frames: int) -> list[int]:
    """The ``length`` frame indices around ``center``: ``center - length//2`` onward, each
    clamped to ``[0, num_frames - 1]`` (edge frames repeat), so position ``length//2`` of
    the clip is always ``center``."""
    if length < 1:
        raise ValueError(f"clip length must be >= 1, got {length}")
    first = center - length // 2
    return [min(max(first + k, 0), num_frames - 1) for k in range(length)]


class _Watchdog:
    """Runs a reader's calls on one daemon thread; callers wait at most the budget left."""

    def __init__(self, uri: str, budget_s: float | None) -> None:
        self.uri = uri
        self.budget_s = budget_s
        self.remaining = budget_s
        self.cancel = threading.Event()
        self.timed_out = False
        self.thread: threading.Thread | None = None
        self._queue: queue.SimpleQueue | None = None

    def _worker(self) -> None:
        q = self._queue
        while True:
            fut, fn, args = q.get()
            if fut is None:
                if fn is not None:
                    fn()
                return
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    fut.set_exception(exc)
            del fut, fn, args  # hold no reference to the reader while waiting

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.timed_out:
            raise VideoDecodeError(
                self.uri, "timeout", "an earlier call ran out of the time budget"
            )
        if self.budget_s is None:
            return fn(*args)
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            self.thread = threading.Thread(
                target=self._worker, name="frameexit-decode", daemon=True
            )
            self.thread.start()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fut, fn, args))
        start = time.monotonic()
        try:
            return fut.result(timeout=max(self.remaining, 0.0))
        except concurrent.futures.TimeoutError:
            self.timed_out = True
            self.cancel.set()
            raise VideoDecodeError(
                self.uri, "timeout", f"decoding took longer than the {self.budget_s:g} s budget"
            ) from None
        finally:
            self.remaining -= time.monotonic() - start

    def close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after any call still in progress, then stop the thread."""
        if self._queue is None:
            fn()
        else:
            self._queue.put((None, fn, ()))


class VideoReader:
    """One open video. Use ``open_video``; close it (or use ``with``) when done.

    ``num_frames`` (what the container declares), ``fps``, ``backend`` (``decord`` or
    ``pyav``), ``fallback_reason`` (why decord was not used, or None), ``get(indices)``,
    ``get_clips(indices, length)``, ``stats`` (storage requests and bytes so far).
    """

    def __init__(
        self,
        uri: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        fetch: str = "whole",
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        backend: str = "auto",
        threads: int = 1,
        block_size: int | None = None,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
    ) -> None:
        if fetch not in FETCH_MODES:
            raise ValueError(f"fetch must be one of {FETCH_MODES}, got {fetch!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "decord" and fetch == "ranges":
            raise ValueError("backend='decord' cannot read byte ranges (it reads whole files)")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.uri = str(uri)
        self.backend = ""
        self.fallback_reason: str | None = None
        self._decoder: Any = None
        self._source: Source | None = None
        self._closed = False
        self._watchdog = _Watchdog(self.uri, timeout_s)
        opts = dict(
            storage_options=storage_options,
            fetch=fetch,
            backend=backend,
            threads=threads,
            block_size=block_size,
            max_blocks=max_blocks,
        )
        try:
            self._watchdog.call(self._open, opts)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self, opts: dict[str, Any]) -> None:
        src = self._source = Source(
            self.uri,
            storage_options=opts["storage_options"],
            fetch=opts["fetch"],
            block_size=opts["block_size"],
            max_blocks=opts["max_blocks"],
        )
        threads, backend = opts["threads"], opts["backend"]
        if backend == "decord":
            try:
                self._use(DecordDecoder(src.decord_input(), threads=threads), "decord")
                return
            except Exception as exc:  # noqa: BLE001 - find out why with the PyAV probe below
                decord_error = exc
        probe = self._probe(src, "index" if opts["fetch"] == "ranges" else "scan", threads)
        if backend == "decord":
            probe.close()
            raise VideoDecodeError(self.uri, "unreadable", f"decord cannot open it: {decord_error}")
        reason = None
        if backend == "pyav":
            reason = "backend='pyav' requested"
        elif opts["fetch"] == "ranges":
            reason = "fetch='ranges' (decord reads whole files)"
        else:
            reason = trust_decord(probe)
        if reason is None:
            try:
                fast = DecordDecoder(src.decord_input(), threads=threads)
            except Exception as exc:  # noqa: BLE001 - e.g. WebM without cues (decord#91)
                reason = f"decord cannot open it: {exc}"
            else:
                if fast.num_frames == probe.num_frames:
                    probe.close()
                    self._use(fast, "decord")
                    if src.path is None:
                        src.close()  # decord keeps its own copy of the bytes
                    return
                reason = f"decord counts {fast.num_frames} frames, the container {probe.num_frames}"
                fast.close()
        self.fallback_reason = reason
        self._use(probe, "pyav")

    def _probe(self, src: Source, mode: str, threads: int) -> PyAVDecoder:
        try:
            return PyAVDecoder(
                src.pyav_input, self.uri, mode=mode, threads=threads, cancel=self._watchdog.cancel
            )
        except (VideoDecodeError, Cancelled):
            raise
        except (FileNotFoundError, PermissionError) as exc:
            raise _error_for(self.uri, exc) from exc
        except Exception as exc:  # noqa: BLE001 - av.error.* and I/O errors from the file
            raise classify_open_failure(src, exc) from exc

    def _use(self, decoder: Any, name: str) -> None:
        self._decoder = decoder
        self.backend = name
        self.num_frames: int = decoder.num_frames
        self.fps: float = decoder.fps
        self._decodable: int = getattr(decoder, "decodable", decoder.num_frames)

    # ------------------------------------------------------------------ reading

    def _check(self, indices: Sequence[int]) -> list[int]:
        if self._closed:
            raise ValueError(f"VideoReader for {self.uri} is closed")
        out = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"frame indices must be integers, got {i!r}")
            out.append(int(i))
        bad = [i for i in out if not 0 <= i < self.num_frames]
        if bad:
            raise VideoDecodeError(
                self.uri,
                "index_out_of_range",
                f"frame indices {bad[:8]} outside [0, {self.num_frames})",
            )
        cut = [i for i in out if i >= self._decodable]
        if cut:
            raise VideoDecodeError(
                self.uri,
                "truncated",
                f"the container declares {self.num_frames} frames but only the first "
                f"{self._decodable} are present; asked for {cut[:8]}",
            )
        return out

    def _decode(self, indices: list[int]) -> dict[int, np.ndarray]:
        try:
            return self._decoder.get(indices)
        except (VideoDecodeError, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 - decord/av/storage errors become typed
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise _error_for(self.uri, exc) from exc
            raise VideoDecodeError(
                self.uri, "unreadable", f"{type(exc).__name__} while decoding: {exc}"
            ) from exc

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (0-based, repeats allowed) as uint8 ``[n, H, W, 3]`` RGB,
        in the order asked (``[0, 0, 0, 3]`` for no indices). Only what is needed is
        decoded; decoding goes on from where the previous call left off when that is
        cheaper than seeking."""
        idx = self._check(indices)
        if not idx:
            return np.zeros((0, 0, 0, 3), np.uint8)
        frames = self._watchdog.call(self._decode, idx)
        return np.stack([frames[i] for i in idx])

    def get_clips(self, indices: Sequence[int], length: int) -> np.ndarray:
        """For each index the ``length`` frames around it (``clip_indices``), as uint8
        ``[n, length, H, W, 3]``."""
        centers = self._check(indices)
        windows = [clip_indices(c, length, self.num_frames) for c in centers]
        flat = [i for w in windows for i in w]
        if not flat:
            return np.zeros((0, length, 0, 0, 3), np.uint8)
        frames = self.get(flat)
        return frames.reshape(len(centers), length, *frames.shape[1:])

    @property
    def stats(self) -> dict[str, Any]:
        """Storage requests and bytes fetched so far (0 for local files), backend used."""
        src = self._source
        return {
            "backend": self.backend,
            "mode": getattr(self._decoder, "mode", None),
            "requests": src.requests if src else 0,
            "bytes_fetched": src.bytes_fetched if src else 0,
            "size": getattr(src, "size", None),
        }

    def close(self) -> None:
        """Release the decoder and the fetched bytes (after any call still running)."""
        if self._closed:
            return
        self._closed = True

        def release() -> None:  # runs after any in-flight call: sees what it opened
            if self._decoder is not None:
                self._decoder.close()
            if self._source is not None:
                self._source.close()

        self._watchdog.close(release)

    def __del__(self) -> None:  # a reader dropped without close(): free its thread
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        n = getattr(self, "num_frames", "?")
        return f"VideoReader({self.uri!r}, num_frames={n}, backend={self.backend!r})"


def open_video(
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    fetch: str = "whole",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    backend: str = "auto",
    threads: int = 1,
    block_size: int | None = None,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
) -> VideoReader:
    """Open a video at any fsspec URI for repeated exact frame access (see module doc).

    Raises ``VideoDecodeError`` (``missing``, ``access_denied``, ``empty``, ``not_video``,
    ``truncated``, ``unreadable``, ``timeout``) naming the URI and the reason.
    """
    return VideoReader(
        uri,
        storage_options=storage_options,
        fetch=fetch,
        timeout_s=timeout_s,
        backend=backend,
        threads=threads,
        block_size=block_size,
        max_blocks=max_blocks,
    )


def read_frames(
    uri: str,
    indices: Sequence[int],
    *,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Open, read the frames at ``indices`` (uint8 ``[n, H, W, 3]``, order kept) and close.
    ``kwargs`` are ``open_video``'s."""
    with open_video(uri, storage_options=storage_options, **kwargs) as reader:
        return reader.get(indices)
