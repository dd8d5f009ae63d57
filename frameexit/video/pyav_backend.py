"""Exact random access with PyAV: frames are found by presentation timestamp, not by count.

Frame ``i`` is the frame with the ``i``-th smallest pts in the stream's ``FrameTable``
(``frame_table``: learnt from the container's sample index, ``mode="index"``, or from a
scan of every packet, ``mode="scan"``), which is what a plain sequential decode outputs
as its ``i``-th frame. To get it we seek to a keyframe at or before it, check where the
demuxer really landed (by the byte position of the first packet), and decode forward
until a frame with that pts comes out. A seek that lands too late, or a decoder that
drops the frame (open-GOP leading pictures), is noticed and retried from an earlier
keyframe, finally from the start. In index mode every packet read is checked against
the table (position, pts, dts); any mismatch rebuilds it with a scan (``NeedScan``)
before a frame is returned.

Files whose pts do not identify frames (duplicates, missing, or labels that do not follow
display order: AVI with B-frames) are decoded sequentially, counting frames
(``ordinal``): exact but slow for random access.

Policy-aware decoding: ``plan(indices)`` names the frames later steps will ask for. A
planned frame that the decoder outputs on its way to another one is converted and kept
(at most one copy per distinct planned index, dropped once its last planned use is
served), so a later step whose frame was already passed costs no decoding. Before a seek
away from a GOP where planned frames still lie ahead, the decoder session (``_Session``:
container, demuxer position, codec state) is parked (at most ``_MAX_PARKED``) and a later
step there goes on from it instead of decoding again from the keyframe. On the way to a
frame, packets of frames that nobody asked for are fed with ``skip_frame=NONREF``: the
decoder drops non-reference pictures (most B-frames) without decoding them, which
changes no other picture.

Memory: with ``limits`` (``DecodeOptions``) the sizes FFmpeg read from the header are
checked before any frame table is built (``limits.check_declared``), a scan stops past
``max_frames`` packets, and every decoded frame over ``max_pixels`` fails the video as
``too_large``. ``frame_fn`` (``VideoReader.transform_frames``) turns each frame into what
the caller needs (the model's input size) as soon as it is decoded, so planned frames are
kept at that size, not at the source's. A video whose sessions would hold more than
``limits.idle_decoder_bytes`` between reads (4K and up) parks none and closes its session
after every ``get``: between steps it holds its table and kept frames only.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from frameexit.errors import VideoDecodeError
from frameexit.video.containers import PTS_FORMATS, is_not_video
from frameexit.video.decode_session import Cancelled, DecodeSession, NeedScan
from frameexit.video.frame_table import FrameTable, index_table, scan_table
from frameexit.video.limits import check_declared, check_frame, session_bytes, stream_declared
from frameexit.video.options import DecodeOptions

_MAX_REORDER = 4  # B-frames in a row assumed at most, where pts cannot say
_PTS_CHECK_FRAMES = 16
# Decoder sessions kept parked besides the active one, and the decoding a parked session
# must save (frames from its keyframe) to be worth the container it holds open.
_MAX_PARKED = 2
MAX_SESSIONS = 1 + _MAX_PARKED  # sessions one video may hold: the active one, the parked
_PARK_MIN_FRAMES = 8


class NeedOrdinal(Exception):
    """Decoded timestamps do not follow display order; count frames instead."""


class _LocalBytes:
    """``size`` / ``read_at`` of a local path, for decoders built without a ``Source``
    (one buffered handle, opened on the first read)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = os.path.getsize(path)
        self._file: Any = None

    def read_at(self, offset: int, n: int) -> bytes:
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(offset)
        return self._file.read(n)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class PyAVDecoder:
    """Exact decoder for one video. Not thread-safe; the reader serialises calls.

    ``source`` (optional) gives ``size`` and ``read_at(offset, n)`` (index mode reads the
    MP4 header through it) and, for ranged remote reads, ``prefetch(start, end)`` (the
    byte range of the packets about to be decoded) and ``fetch_rest()`` (before a scan).
    """

    def __init__(
        self,
        opener: Callable[[], Any],
        uri: str,
        *,
        mode: str = "auto",
        threads: int = 1,
        cancel: threading.Event | None = None,
        source: Any = None,
        limits: DecodeOptions | None = None,
    ) -> None:
        if mode not in ("auto", "scan", "index"):
            raise ValueError(f"mode must be 'auto', 'scan' or 'index', got {mode!r}")
        self.uri = uri
        self._opener = opener
        self._threads = threads
        self._cancel = cancel or threading.Event()
        self._s: DecodeSession | None = None  # the active session
        self._parked: list[DecodeSession] = []  # sessions left mid-GOP for later steps
        self._reformatter = VideoReformatter()
        self.frames_decoded = 0  # frames the decoder output (all sessions)
        self._plan: collections.Counter = collections.Counter()
        self._kept: dict[int, np.ndarray] = {}
        self._wanted: dict[int, int] = {}
        self._limits = limits
        self.frame_fn: Callable[[np.ndarray], np.ndarray] | None = None
        self._own_bytes: _LocalBytes | None = None
        self._open_container()
        if source is None:
            first = opener()
            source = self._own_bytes = _LocalBytes(first) if isinstance(first, str) else None
        self._source = source
        vs = self._s.stream
        if limits is not None:  # before any table is built or frame decoded
            try:
                check_declared(uri, stream_declared(self._s.container, vs), limits)
            except VideoDecodeError:
                self.close()
                raise
        self.format_name: str = self._s.container.format.name
        self.codec_name: str = vs.codec_context.name
        self.width: int = vs.codec_context.width
        self.height: int = vs.codec_context.height
        rate = vs.average_rate or vs.guessed_rate
        self.fps: float = float(rate) if rate else 0.0
        self.declared_frames: int = int(vs.frames or 0)
        self.index_skipped: str | None = None  # why index mode was not used, if asked
        budget = limits.idle_decoder_bytes if limits is not None else None
        held = MAX_SESSIONS * session_bytes(self.width, self.height, threads)
        self.holds_sessions = budget is None or held <= budget
        if mode == "scan" or not self._load_index():
            self._scan(reopen=False)
        self._idle()

    # ------------------------------------------------------------------ opening, tables

    def _open_container(self) -> None:
        """A fresh session on a newly opened container (the active one is closed)."""
        if self._s is not None:
            self._s.close()
            self._s = None
        # one thread for the codec that find_stream_info opens: the default (one per core)
        # starts and joins a thread pool per open, ~25 % of the open's CPU on small clips
        container = av.open(self._opener(), "r", stream_options=[{"threads": "1"}])
        try:
            videos = container.streams.video
            if not videos:
                raise VideoDecodeError(self.uri, "not_video", "no video stream in the container")
            vs = videos[0]
            if is_not_video(container.format.name, vs.codec_context.name):
                raise VideoDecodeError(
                    self.uri,
                    "not_video",
                    f"container {container.format.name!r} / codec {vs.codec_context.name!r} "
                    "is not a video format",
                )
        except BaseException:
            container.close()
            raise
        vs.codec_context.thread_count = self._threads
        self._s = DecodeSession(container, vs, self._check_cancel)

    def _set_table(self, table: FrameTable) -> None:
        self._table = table
        self.ordinal = table.ordinal
        self.decodable = table.decodable
        self.num_frames = table.num_frames
        self.truncated = table.truncated
        self._rebuild_wanted()

    def _load_index(self) -> bool:
        """Build the table from the container's sample index; False (and
        ``index_skipped``) where that is not known to be exact."""
        s = self._s
        table = index_table(s.stream, self.format_name, self.declared_frames, self._source)
        if isinstance(table, str):
            self.index_skipped = table
            return False
        self._set_table(table)
        if not self.ordinal and self.format_name not in PTS_FORMATS:
            try:
                self.ordinal = not self._pts_follow_display_order()
            except NeedScan:
                self.index_skipped = "packets differ from the index"
                self._open_container()  # the check left the demuxer mid-stream
                return False
        return True

    def _scan(self, reopen: bool = True) -> None:
        """Demux every packet of the stream (no decoding) and build the frame table."""
        fetch_rest = getattr(self._source, "fetch_rest", None)
        if fetch_rest is not None:
            fetch_rest()  # one request for the rest, not one per block the scan touches
        self._drop_parked()
        if reopen:
            self._open_container()
        s = self._s
        table = scan_table(
            s.container,
            s.stream,
            uri=self.uri,
            format_name=self.format_name,
            declared_frames=self.declared_frames,
            fps=self.fps,
            source=self._source,
            check_cancel=self._check_cancel,
            max_frames=self._limits.max_frames if self._limits is not None else None,
        )
        self._kept.clear()  # identified with a table that turned out not to be exact
        self._set_table(table)
        self._s = s.fresh()  # the scan left the demuxer at the end
        if not self.ordinal and self.format_name not in PTS_FORMATS:
            self.ordinal = not self._pts_follow_display_order()
        if self.truncated and self.ordinal and self._s.stream.codec_context.has_b_frames:
            # frame i is the i-th output: the last outputs of a cut stream with B-frames
            # may be frames shown after missing ones, and pts cannot tell which
            self.decodable = max(1, self.decodable - _MAX_REORDER)

    def _pts_follow_display_order(self) -> bool:
        """Decode the first frames: do their pts equal the table's first pts, in order?"""
        self._start_at(0)
        want = list(self._table.frame_pts[:_PTS_CHECK_FRAMES])
        got: list = []
        while len(got) < len(want):
            frame = self._next_frame()
            if frame is None:
                break
            got.append(frame.pts)
        self._open_container()
        return got[: len(want)] == want

    @property
    def mode(self) -> str:
        """How the frame table was learnt: ``index`` or ``scan`` (``frame_table``)."""
        return "index" if self._table.from_index else "scan"

    @property
    def open_gop_keys(self) -> list[int]:
        """Decode indices of keyframes followed (in decode order) by frames displayed before
        them — open GOPs, where decord's seeks go wrong."""
        return [] if self.ordinal else self._table.open_gop_keys()

    # The frame table's lookups under the names the decoder's tests use.
    @property
    def _frame_pts(self) -> tuple[int, ...]:
        return self._table.frame_pts

    @property
    def _idx_of_pts(self) -> Mapping[int, int]:
        return self._table.idx_of_pts

    @property
    def _session_start(self) -> int | None:
        return self._s.start if self._s is not None else None

    def _key_for(self, target_pts: int) -> int:
        return self._table.key_for(target_pts)

    # ------------------------------------------------------------------ demux/decode loop

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def _feed(self) -> list:
        """Feed one packet (or the end-of-stream flush) and return decoded frames."""
        return self._s.feed(self._table)

    def _next_frame(self) -> Any | None:
        """The next frame the decoder outputs, or None at the end of the stream."""
        s = self._s
        while not s.pending:
            frames = self._feed()
            self.frames_decoded += len(frames)
            if self._limits is not None:
                for frame in frames:
                    check_frame(self.uri, frame.width, frame.height, self._limits)
            s.pending.extend(frames)
            if s.eof and not frames:
                return None
        return s.pending.popleft()

    def _start_at(self, key_idx: int) -> None:
        """Position the active session at keyframe ``key_idx`` or earlier (checked); where
        no seek lands right, reopen the container and decode from the start."""
        if not self._s.start_at(self._table, key_idx):
            self._start_fresh()

    def _start_fresh(self) -> None:
        """Reopen the container and decode from its very first packet: always right."""
        self._open_container()
        self._s.begin()

    def _prefetch(self, start: int, p: int) -> None:
        """Tell a ranged source the bytes of packets ``start`` .. the last one the decoder
        needs before it outputs the frame with pts ``p`` (one request instead of many)."""
        prefetch = getattr(self._source, "prefetch", None)
        span = self._table.byte_span(start, p) if prefetch is not None else None
        if span is not None:
            prefetch(*span)

    # ------------------------------------------------------------------ planning

    def plan(self, indices: Sequence[int]) -> None:
        """The frames later calls will ask for (with repeats); passed ones are kept."""
        self._plan = collections.Counter(int(i) for i in indices)
        self._kept = {i: f for i, f in self._kept.items() if self._plan[i] > 0}
        self._rebuild_wanted()

    def _rebuild_wanted(self) -> None:
        """``pts -> index`` (``ordinal -> index`` when counting) of planned frames not
        kept yet: what the decode loop keeps when it passes them."""
        planned = [i for i, c in self._plan.items() if c > 0 and i not in self._kept]
        if self.ordinal:
            self._wanted = {i: i for i in planned}
        else:
            fp = self._table.frame_pts
            self._wanted = {fp[i]: i for i in planned if i < len(fp)}

    def _keep(self, label: int, frame: Any) -> None:
        i = self._wanted.pop(label, None)
        if i is not None:
            self._kept[i] = self._rgb(frame)

    def _served(self, indices: Sequence[int], out: dict[int, np.ndarray]) -> None:
        """Count planned uses served; keep a frame while a later step still plans it."""
        for i in indices:
            if self._plan[i] > 0:
                self._plan[i] -= 1
        for i in out:
            if self._plan[i] > 0:
                self._kept[i] = out[i]
            else:
                self._kept.pop(i, None)
        self._rebuild_wanted()

    # ------------------------------------------------------------------ public

    def get(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """Decode the given frame indices (each in ``[0, num_frames)``); returns index ->
        RGB ``[H, W, 3]``. Indices past the packets present raise ``truncated``."""
        cut = sorted(i for i in set(indices) if i >= self.decodable)
        if cut:
            raise VideoDecodeError(
                self.uri,
                "truncated",
                f"only the first {self.decodable} of {self.num_frames} frames are present; "
                f"asked for {cut[:8]}",
            )
        out = {i: self._kept[i] for i in set(indices) if i in self._kept}
        todo = sorted(set(indices) - set(out))
        if todo:
            if self._s is None:
                self._open_container()  # released after the last read (_idle)
            try:
                out.update(self._decode_all(todo))
            finally:
                self._idle()
        self._served(indices, out)
        return out

    def _idle(self) -> None:
        """Between reads: a video whose sessions are too large to keep
        (``holds_sessions`` False) closes them; the next ``get`` reopens the container."""
        if not self.holds_sessions and self._s is not None:
            self._drop_parked()
            self._s.close()
            self._s = None

    def _decode_all(self, todo: list[int]) -> dict[int, np.ndarray]:
        if self.ordinal:
            return self._get_ordinal(todo)
        out: dict[int, np.ndarray] = {}
        t = self._table
        try:
            for i in todo:  # ascending index = ascending pts: forward decode
                if i in self._kept:  # passed while decoding an earlier one of this call
                    out[i] = self._kept[i]
                    continue
                p = t.frame_pts[i]
                out[i] = self._get_one(p, t.key_for(p), i)
        except NeedScan:
            self._scan()
            return self._decode_all(todo)
        except NeedOrdinal:
            self.ordinal = True
            self._drop_parked()
            self._open_container()
            self._rebuild_wanted()
            return self._decode_all(todo)
        return out

    # ------------------------------------------------------------------ sessions

    def _drop_parked(self) -> None:
        for session in self._parked:
            session.close()
        self._parked = []

    def _worth_parking(self, p: int, s: DecodeSession) -> bool:
        """Does a planned frame other than ``p`` lie ahead of session ``s`` in its GOP,
        far enough from the keyframe that going on beats seeking again?"""
        if s.last_out is None:
            return False
        t = self._table
        done = bisect.bisect_right(t.frame_pts, s.last_out)
        for q in self._wanted:
            key = t.key_for(q)
            start = bisect.bisect_left(t.frame_pts, t.pts[key])
            if q != p and done - start >= _PARK_MIN_FRAMES and s.can_continue(t, q, key):
                return True
        return False

    def _pick_session(self, p: int, key: int) -> None:
        """With a plan, several decoder sessions: go on with one that can reach ``p``
        without a seek; before seeking away from a GOP where later steps still need
        frames, park the session there and seek with another container."""
        active, t = self._s, self._table
        if active.can_continue(t, p, key) or not self._wanted or not self.holds_sessions:
            return
        for k, session in enumerate(self._parked):
            if session.can_continue(t, p, key):
                self._s = self._parked.pop(k)
                if self._worth_parking(p, active):
                    self._parked.append(active)
                else:
                    active.close()
                return
        if active.demux is not None and self._worth_parking(p, active):
            if len(self._parked) >= _MAX_PARKED:
                self._parked.pop(0).close()  # the longest parked
            self._parked.append(active)
            self._s = None  # parked: _open_container must not close it
            self._open_container()

    # ------------------------------------------------------------------ decoding frames

    def _get_one(self, p: int, key: int, i: int) -> np.ndarray:
        self._pick_session(p, key)
        keys = self._table.keys
        k = keys.index(key)
        retries = list(dict.fromkeys([key, keys[k - 1] if k > 0 else 0, 0]))
        starts: list[int | None] = [None] if self._s.can_continue(self._table, p, key) else []
        for n, start in enumerate(starts + retries):  # None: go on decoding from where we are
            self._prefetch(self._s.next_idx if start is None else start, p)
            if start == 0 and n > 0:
                self._start_fresh()  # the last resort after a failed try: a reopened file
            elif start is not None:
                self._start_at(start)
            frame = self._decode_to(p)
            if frame is not None:
                return frame
        kind = "truncated" if self.truncated else "unreadable"
        raise VideoDecodeError(
            self.uri, kind, f"frame {i} (pts {p}) could not be decoded even from the start"
        )

    def _decode_to(self, p: int) -> np.ndarray | None:
        at = self._table.idx_of_pts
        self._s.needed = {at[p], *(at[q] for q in self._wanted)}
        try:
            return self._decode_until(p)
        finally:
            self._s.needed = None
            self._s.stream.codec_context.skip_frame = "DEFAULT"

    def _decode_until(self, p: int) -> np.ndarray | None:
        while True:
            frame = self._next_frame()
            if frame is None:
                return None
            fp = frame.pts if frame.pts is not None else frame.dts
            if fp is None:
                continue
            s = self._s
            if s.last_out is not None and fp <= s.last_out:
                raise NeedOrdinal()  # output not in increasing pts: labels are unusable
            s.last_out = fp
            if fp == p:
                return self._rgb(frame)
            if fp > p:
                return None  # passed it: the seek or the decoder skipped the frame
            if fp in self._wanted:
                self._keep(fp, frame)

    def _get_ordinal(self, indices: list[int]) -> dict[int, np.ndarray]:
        """Sequential decode counting output frames (files without usable pts)."""
        out: dict[int, np.ndarray] = {}
        if self._s.demux is None or self._s.ordinal >= indices[0]:
            self._open_container()
            self._s.demux = self._s.container.demux(self._s.stream)
        s, want = self._s, set(indices)
        while want:
            frame = self._next_frame()
            if frame is None:
                break
            s.ordinal += 1
            if s.ordinal in want:
                out[s.ordinal] = self._rgb(frame)
                want.discard(s.ordinal)
            elif s.ordinal in self._wanted:
                self._keep(s.ordinal, frame)
        if want:
            kind = "truncated" if self.truncated else "unreadable"
            raise VideoDecodeError(
                self.uri, kind, f"frames {sorted(want)} not produced by a sequential decode"
            )
        return out

    def _rgb(self, frame: Any) -> np.ndarray:
        """RGB24 ``[H, W, 3]`` of a decoded frame (the same pixels as
        ``frame.to_ndarray(format="rgb24")``), through one reusable single-threaded
        converter: ``to_ndarray`` builds a new swscale context with its own thread pool for
        every frame, which costs more than decoding a small frame. With ``frame_fn``: that
        function of it (the full-size array is dropped at once)."""
        rgb = self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        return rgb if self.frame_fn is None else self.frame_fn(rgb)

    def set_frame_fn(self, fn: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """Apply ``fn`` to every frame from now on; frames kept earlier are dropped (they
        were made without it)."""
        self.frame_fn = fn
        self._kept.clear()
        self._rebuild_wanted()

    def close(self) -> None:
        if self._own_bytes is not None:
            self._own_bytes.close()
        self._kept.clear()
        self._drop_parked()
        if self._s is not None:
            self._s.close()
            self._s = None
