"""``open_video`` / ``VideoReader`` / ``read_frames``: exact frames at indices from any URI.

Data flow of one reader (opened once, asked step by step as the exit gates decide)::

    URI ──Source──> bytes (local file | one GET | header + ranges of the GOPs decoded)
                      │
                      ├─ PyAV: container, stream, frame table (sample index, or a scan)
                      │
    plan(all steps' indices)   get(step's indices) ──watchdog thread──> PyAV exact decode
                      │            (planned frames passed on the way are kept: a later
                      │             step whose frame was passed costs nothing)
                      └─> uint8 [n, H, W, 3] in the order asked

What is fetched when (remote URIs; local files are read in place by the decoder):

* ``fetch="auto"`` (default): one GET of the first 64 KiB (``source.HEAD_BYTES``; S3 says
  the object's size in the same answer). A smaller object is then whole in memory, one
  under ``range_min_bytes`` (``data.decode.range_min_bytes``) is completed with a second
  GET; a larger one goes on as ``"ranges"`` with those bytes kept (header, often the
  start of the first GOP, which coarse-to-fine asks for at step 2).
* ``fetch="whole"``: the whole object in one GET inside ``open_video``.
* ``fetch="ranges"``: the header at open, then per ``get`` the byte range of the packets
  from the keyframe to the frame asked for (announced by the decoder, one request), so
  bytes read follow frames decoded. Containers without a per-frame sample index
  (MKV/WebM/TS, AVI with B-frames) need a scan: the rest of the object is fetched in one
  request at open.

Exactness (``backend``): ``"auto"`` and ``"pyav"`` (the same today) return for every index
the frame a plain sequential PyAV decode outputs at that position, by construction (see
``pyav_backend``): frames are identified by pts in a table built from the container's
sample index (checked against every packet read) or a scan, never by counting after a
seek. ``"decord"`` is decord's own random access, used only when asked for: faster to
open on some files, but wrong on many (``decord_backend`` lists where). torchcodec was
measured as a candidate for ``auto`` and not adopted (``decord_backend`` doc and the
README say why).

Time bound: with ``timeout_s`` set, all work for a reader runs on one daemon thread and
the caller waits at most ``timeout_s`` *in total* over ``open_video`` and every ``get``
(time between calls, e.g. model compute, does not count). When it runs out the call
raises ``VideoDecodeError(kind="timeout")``, the reader becomes unusable, and the work
stops: every byte read (``Source``, the container checks) and every packet demuxed checks
the cancel flag and raises, so the thread ends at its next read; only a native call in
progress (FFmpeg reading a local file it was given by path) runs to its own end first.

Size bounds (``DecodeOptions.max_*``): ``max_bytes`` before any byte is fetched; before
FFmpeg opens an MP4/MOV, the sample counts, frame size and duration its ``moov`` box
declares (``limits``); for other containers what FFmpeg read from their header, before
any frame table or decode; every decoded frame against ``max_pixels``. Beyond a bound:
``VideoDecodeError(kind="too_large")``. ``transform_frames(fn)`` makes the decoder keep
and return ``fn(frame)`` (e.g. the model's input size) instead of full-size frames.
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
from frameexit.video.containers import sniff
from frameexit.video.decord_backend import DecordDecoder
from frameexit.video.errors import classify_failure
from frameexit.video.limits import check_declared, mp4_declared
from frameexit.video.options import (
    BACKENDS,
    DEFAULT_RANGE_MIN_BYTES,
    DEFAULT_TIMEOUT_S,
    FETCH_MODES,
    DecodeOptions,
)
from frameexit.video.pyav_backend import Cancelled, PyAVDecoder
from frameexit.video.source import Source

__all__ = [
    "BACKENDS",
    "DEFAULT_RANGE_MIN_BYTES",
    "DEFAULT_TIMEOUT_S",
    "FETCH_MODES",
    "DecodeOptions",
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

    ``num_frames`` (frames a sequential decode outputs; for a cut file, what the container
    declares), ``fps``, ``backend`` (``pyav`` or ``decord``), ``get(indices)``,
    ``get_clips(indices, length)``, ``plan(indices)``, ``stats`` (storage requests and
    bytes so far, frames decoded, table mode).
    """

    def __init__(
        self,
        uri: str,
        options: DecodeOptions | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        **changes: Any,
    ) -> None:
        options = options or DecodeOptions()
        if changes:  # DecodeOptions' field names (fetch="whole", timeout_s=None, ...)
            options = options.replace(**changes)
        self.uri = str(uri)
        self.options = options
        self.backend = ""
        self._decoder: Any = None
        self._source: Source | None = None
        self._closed = False
        self._watchdog = _Watchdog(self.uri, options.timeout_s)
        try:
            self._watchdog.call(self._open, options, storage_options)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self, options: DecodeOptions, storage_options: Mapping[str, Any] | None) -> None:
        src = self._source = Source(
            self.uri,
            storage_options=storage_options,
            fetch=options.source_fetch,
            block_size=options.block_size,
            range_min_bytes=options.range_min_bytes,
            max_bytes=options.max_bytes,
            cancel=self._watchdog.cancel,
        )
        self._refuse_declared(src, options)
        threads = options.threads
        if options.backend == "decord":
            try:
                self._use(DecordDecoder(src.decord_input(), threads=threads), "decord")
                if src.path is None:
                    src.close()  # decord keeps its own copy of the bytes
                return
            except Exception as exc:  # noqa: BLE001 - find out why with the PyAV probe below
                self._probe(src, threads).close()
                raise VideoDecodeError(
                    self.uri, "unreadable", f"decord cannot open it: {exc}"
                ) from exc
        self._use(self._probe(src, threads), "pyav")

    def _refuse_declared(self, src: Source, options: DecodeOptions) -> None:
        """Refuse an MP4/MOV whose ``moov`` declares more than the limits allow before
        FFmpeg opens it (FFmpeg allocates its index per declared sample at open)."""
        if sniff(src.read_at) != "mp4":
            return
        declared = mp4_declared(src.read_at, src.size)
        if declared.problem is not None:
            raise VideoDecodeError(self.uri, "unreadable", declared.problem)
        check_declared(self.uri, declared, options)

    def _probe(self, src: Source, threads: int) -> PyAVDecoder:
        try:
            return PyAVDecoder(
                src.pyav_input,
                self.uri,
                threads=threads,
                cancel=self._watchdog.cancel,
                source=src,
                limits=self.options,
            )
        except (VideoDecodeError, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 - av.error.* and I/O errors from the file
            raise classify_failure(self.uri, exc, stage="open", source=src) from exc

    def _use(self, decoder: Any, name: str) -> None:
        self._decoder = decoder
        self.backend = name
        self.num_frames: int = decoder.num_frames
        self.fps: float = decoder.fps
        self._decodable: int = getattr(decoder, "decodable", decoder.num_frames)
        self._frame_fn: Callable[[np.ndarray], np.ndarray] | None = None

    # ------------------------------------------------------------------ reading

    def _check(self, indices: Sequence[int], *, present: bool = True) -> list[int]:
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
        cut = [i for i in out if i >= self._decodable] if present else []
        if cut:
            raise VideoDecodeError(
                self.uri,
                "truncated",
                f"the container declares {self.num_frames} frames but only the first "
                f"{self._decodable} are present; asked for {cut[:8]}",
            )
        return out

    def transform_frames(self, fn: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """From now on every decoded frame (uint8 ``[H, W, 3]``) becomes ``fn(frame)`` as
        soon as it is decoded: ``get`` returns those, and planned frames are kept as
        those (e.g. at the model's input size, not the source's). Call it before
        ``plan``; None: full frames again."""
        self._frame_fn = fn
        set_fn = getattr(self._decoder, "set_frame_fn", None)
        if set_fn is not None and not self._watchdog.timed_out:
            set_fn(fn)

    def _decode(self, indices: list[int]) -> dict[int, np.ndarray]:
        try:
            frames = self._decoder.get(indices)
            if self._frame_fn is not None and not hasattr(self._decoder, "set_frame_fn"):
                frames = {i: self._frame_fn(f) for i, f in frames.items()}  # decord
            return frames
        except (VideoDecodeError, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 - decord/av/storage errors become typed
            raise classify_failure(self.uri, exc, stage="decode") from exc

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

    def plan(self, indices: Sequence[int]) -> None:
        """Announce the frames later ``get`` calls will ask for (all steps, repeats
        allowed). Decoding on the way to one frame then keeps the planned frames it
        passes (at most one copy each, until their last planned use), so a later step
        whose frame was passed costs no decoding. Frames returned are the same as without
        a plan. A new call replaces the plan."""
        idx = self._check(indices, present=False)  # frames past a cut fail at their step
        plan = getattr(self._decoder, "plan", None)
        if plan is not None and not self._watchdog.timed_out:
            plan(idx)

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
        """Storage requests and bytes fetched so far (0 for local files), how the object is
        read (``fetch``: local, whole, ranges), backend, frame-table mode (``index`` /
        ``scan``) and frames the decoder has output so far (``frames_decoded``)."""
        src = self._source
        return {
            "backend": self.backend,
            "mode": getattr(self._decoder, "mode", None),
            "fetch": getattr(src, "fetch", None),
            "requests": src.requests if src else 0,
            "bytes_fetched": src.bytes_fetched if src else 0,
            "size": getattr(src, "size", None),
            "frames_decoded": getattr(self._decoder, "frames_decoded", None),
        }

    @property
    def decodable_frames(self) -> int:
        """Frames known to be present (fewer than ``num_frames`` when the frame table
        lists frames whose data the file does not hold)."""
        return int(self._decodable)

    @property
    def declared_frames(self) -> int:
        """The frame count the stream header declares (0 when it declares none); more
        than ``decodable_frames`` when the header overstates the length."""
        return int(getattr(self._decoder, "declared_frames", 0) or 0)

    @property
    def info(self) -> dict[str, Any]:
        """What the stream header says: ``num_frames`` (declared), ``decodable_frames``,
        ``fps``, ``duration`` (s, of the decodable frames), ``width``, ``height``,
        ``codec``, ``container``, and the backend that reads it."""
        decoder = self._decoder
        fps = float(self.fps or 0.0)
        return {
            "num_frames": int(self.num_frames),
            "decodable_frames": self.decodable_frames,
            "declared_frames": self.declared_frames,
            "fps": fps,
            "duration": self.decodable_frames / fps if fps else None,
            "width": getattr(decoder, "width", None),
            "height": getattr(decoder, "height", None),
            "codec": getattr(decoder, "codec_name", None),
            "container": getattr(decoder, "format_name", None),
            "backend": self.backend,
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
    options: DecodeOptions | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    **changes: Any,
) -> VideoReader:
    """Open a video at any fsspec URI for repeated exact frame access (see module doc).

    ``options`` (default ``DecodeOptions()``) say how; ``changes`` are a shorthand for
    fields of it (``open_video(uri, fetch="whole", timeout_s=None)``).
    Raises ``VideoDecodeError`` (``missing``, ``access_denied``, ``empty``, ``not_video``,
    ``truncated``, ``too_large``, ``unreadable``, ``timeout``) naming the URI and the reason,
    and ``ConfigError`` (a ``ValueError``) for an option not allowed.
    """
    return VideoReader(uri, options, storage_options=storage_options, **changes)


def read_frames(
    uri: str,
    indices: Sequence[int],
    options: DecodeOptions | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    **changes: Any,
) -> np.ndarray:
    """Open, read the frames at ``indices`` (uint8 ``[n, H, W, 3]``, order kept) and close.
    ``options`` / ``changes`` as for :func:`open_video`."""
    with open_video(uri, options, storage_options=storage_options, **changes) as reader:
        return reader.get(indices)
