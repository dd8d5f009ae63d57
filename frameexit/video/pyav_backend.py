"""Exact random access with PyAV: frames are found by presentation timestamp, not by count.

Frame ``i`` is the frame with the ``i``-th smallest pts among the video stream's packets
(packets FFmpeg marks as discarded by an edit list do not count), which is what a plain
sequential decode outputs as its ``i``-th frame. To get it we seek to a keyframe at or
before it, check where the demuxer really landed (by the byte position of the first
packet), and decode forward until a frame with that pts comes out. A seek that lands too
late, or a decoder that drops the frame (open-GOP leading pictures), is noticed and
retried from an earlier keyframe, finally from the start.

How the frame table (pts, dts, keyframe flag, byte range of every packet) is learnt
(``mode``; ``auto`` = ``index`` where the container allows it, else ``scan``):

``index`` from the container's own sample index, without reading any packet: MP4/MOV
          (FFmpeg's index + the ``ctts`` composition offsets from the ``moov`` box,
          ``mp4_index``) and AVI with a valid ``idx1`` (complete file, a codec without
          frame reordering, so pts = dts). Open cost does not grow with the file's
          length, and a ranged source reads only the header. Every packet that is read
          later is checked against the table (position, pts, dts); any mismatch rebuilds
          the table with a scan (``NeedScan``) before a frame is returned.
``scan``  demux every packet once at open (packet headers and payloads are read, nothing
          is decoded). Exact for any container (MKV/WebM, MPEG-TS, damaged files).

Files whose pts do not identify frames (duplicates, missing, or labels that do not follow
display order: AVI with B-frames) are decoded sequentially, counting frames
(``ordinal``): exact but slow for random access.

Policy-aware decoding: ``plan(indices)`` names the frames later steps will ask for. A
planned frame that the decoder outputs on its way to another one is converted and kept
(at most one copy per distinct planned index, dropped once its last planned use is
served), so a later step whose frame was already passed costs no decoding. Before a seek
away from a GOP where planned frames still lie ahead, the decoder session (container,
demuxer position, codec state) is parked (at most ``_MAX_PARKED``) and a later step there
goes on from it instead of decoding again from the keyframe. On the way to a frame,
packets of frames that nobody asked for are fed with ``skip_frame=NONREF``: the decoder
drops non-reference pictures (most B-frames) without decoding them, which changes no
other picture.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from frameexit.errors import VideoDecodeError
from frameexit.video.containers import (
    AVI_CHUNK_HEADER,
    MP4_FORMAT,
    PTS_FORMATS,
    is_not_video,
    riff_complete,
)
from frameexit.video.mp4_index import find_moov, sample_tables

_MAX_REORDER = 4  # B-frames in a row assumed at most, where pts cannot say
_PTS_CHECK_FRAMES = 16
# Packets past the frame that the decoder may need before it outputs that frame.
_REORDER_SLACK = 4
# Decoder sessions kept parked besides the active one, and the decoding a parked session
# must save (frames from its keyframe) to be worth the container it holds open.
_MAX_PARKED = 2
_PARK_MIN_FRAMES = 8
# What one decoder session is: a container with its own demuxer position and codec state.
_SESSION = (
    "container", "stream", "_demux", "_buffer", "_pending", "_next_idx", "_session_start",
    "_last_out", "_eof", "_demux_next", "_ordinal", "_needed", "_skipped",
)  # fmt: skip


class Cancelled(Exception):
    """Raised inside a decode loop when the watchdog has given up on this video."""


class NeedScan(Exception):
    """Index mode met something it cannot position exactly; rebuild with a full scan."""


class NeedOrdinal(Exception):
    """Decoded timestamps do not follow display order; count frames instead."""


class _LocalBytes:
    """``size`` / ``read_at`` of a local path, for decoders built without a ``Source``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = os.path.getsize(path)

    def read_at(self, offset: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(n)


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
    ) -> None:
        if mode not in ("auto", "scan", "index"):
            raise ValueError(f"mode must be 'auto', 'scan' or 'index', got {mode!r}")
        self.uri = uri
        self._opener = opener
        self._threads = threads
        self._cancel = cancel or threading.Event()
        self.container: Any = None
        self._reformatter = VideoReformatter()
        self.frames_decoded = 0  # frames the decoder output (all sessions)
        self._plan: collections.Counter = collections.Counter()
        self._kept: dict[int, np.ndarray] = {}
        self._verify = False  # check every packet read against the table (index mode)
        self._parked: list[dict[str, Any]] = []  # sessions left mid-GOP for later steps
        self._open_container()
        if source is None:
            first = opener()
            source = _LocalBytes(first) if isinstance(first, str) else None
        self._source = source
        vs = self.stream
        self.format_name: str = self.container.format.name
        self.codec_name: str = vs.codec_context.name
        self.width: int = vs.codec_context.width
        self.height: int = vs.codec_context.height
        rate = vs.average_rate or vs.guessed_rate
        self.fps: float = float(rate) if rate else 0.0
        self.declared_frames: int = int(vs.frames or 0)
        self.index_skipped: str | None = None  # why index mode was not used, if asked
        if mode != "scan" and self._load_index():
            self.mode = "index"
        else:
            self._scan(reopen=False)

    # ------------------------------------------------------------------ opening, tables

    def _open_container(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
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
        self.container = container
        self.stream = vs
        self._reset_session()

    def _reset_session(self) -> None:
        self._demux: Any = None
        self._buffer: collections.deque = collections.deque()  # demuxed, not yet fed
        self._pending: collections.deque = collections.deque()  # decoded, not yet looked at
        self._next_idx: int | None = None  # decode index of the next packet to feed
        self._session_start: int | None = None  # decode index where decoding (re)started
        self._last_out: int | None = None  # pts of the last frame looked at
        self._eof = False
        self._demux_next = 0  # decode index just after the last packet demuxed
        self._ordinal = -1  # frames output since the start (ordinal mode)
        self._needed: set[int] | None = None  # decode indices to decode; None: all
        self._skipped: set[int] = set()  # decode indices fed with skip_frame=NONREF

    def _set_table(
        self,
        pos: list[int],
        dts: list,
        pts: list,
        key: list[bool],
        size: list[int],
        discard: list[bool],
    ) -> None:
        """The packet table (decode order) and the frame table derived from it."""
        self._pos, self._dts, self._pts, self._key, self._size = pos, dts, pts, key, size
        self._idx_of_pos = {p: i for i, p in enumerate(pos) if p >= 0}
        self._has_pos = bool(pos) and min(pos) >= 0
        self._keys = [i for i, k in enumerate(key) if k]
        if not self._keys or self._keys[0] != 0:
            self._keys.insert(0, 0)  # decoding from the very first packet always works
        shown = [p for p, d in zip(pts, discard, strict=True) if not d]
        self.ordinal = any(p is None for p in pts) or len(set(pts)) != len(pts)
        if not self.ordinal:
            self._frame_pts = sorted(shown)
            self._idx_of_pts = {p: i for i, p in enumerate(pts)}
        self.decodable = len(shown)
        self._rebuild_wanted()

    def _load_index(self) -> bool:
        """Build the tables from the container's sample index; False (and
        ``index_skipped``) where that is not known to be exact."""
        reason = self._index_tables()
        if isinstance(reason, str):
            self.index_skipped = reason
            return False
        self._set_table(*reason)
        self.num_frames = self.decodable
        self.truncated = False
        self._verify = True
        if not self.ordinal and self.format_name not in PTS_FORMATS:
            try:
                self.ordinal = not self._pts_follow_display_order()
            except NeedScan:
                self.index_skipped = "packets differ from the index"
                self._open_container()  # the check left the demuxer mid-stream
                return False
        return True

    def _index_tables(self) -> tuple | str:
        vs, fmt, src = self.stream, self.format_name, self._source
        entries = vs.index_entries
        n = len(entries)
        if fmt not in (MP4_FORMAT, "avi"):
            return f"container {fmt!r} has no per-frame index"
        if n == 0 or src is None:
            return "no sample index" if n == 0 else "no byte access to the file"
        if any(e.is_discard for e in entries):
            return "edit list discards samples"
        pos = [int(e.pos) for e in entries]
        dts = [int(e.timestamp) for e in entries]
        size = [int(e.size) for e in entries]
        key = [bool(e.is_keyframe) for e in entries]
        if fmt == "avi":
            if vs.codec_context.has_b_frames:
                return "AVI with frame reordering: packet pts are not in the index"
            if not riff_complete(src.read_at, src.size):
                return "AVI shorter than its RIFF header says"
            pos = [p + AVI_CHUNK_HEADER for p in pos]
            pts = list(dts)
        else:
            if n != self.declared_frames:
                return "sample count differs from the index"
            moov = find_moov(src.read_at, src.size)
            table = sample_tables(moov).get(vs.id) if moov is not None else None
            if table is None or len(table.offsets) != n:
                return "sample table not understood"
            if not np.array_equal(np.diff(dts), table.deltas[:-1]):
                return "index timestamps do not follow the sample table"
            # FFmpeg shifts dts by the most negative composition offset (ctts version 1)
            shift = max(0, -int(table.offsets.min()))
            pts = [d + int(o) + shift for d, o in zip(dts, table.offsets, strict=True)]
        if len(set(pos)) != n or not key[0]:
            return "sample positions are not unique"
        if max(p + s for p, s in zip(pos, size, strict=True)) > src.size:
            return "samples past the end of the file (cut)"
        return pos, dts, pts, key, size, [False] * n

    def _scan(self, reopen: bool = True) -> None:
        """Demux every packet of the stream (no decoding) and build the frame table."""
        fetch_rest = getattr(self._source, "fetch_rest", None)
        if fetch_rest is not None:
            fetch_rest()  # one request for the rest, not one per block the scan touches
        self._drop_parked()
        if reopen:
            self._open_container()
        pos, dts, pts, key, size, discard = [], [], [], [], [], []
        error, last_corrupt = None, False
        try:
            for packet in self.container.demux(self.stream):
                self._check_cancel()
                if packet.size == 0:
                    continue
                pos.append(packet.pos if packet.pos is not None else -1)
                dts.append(packet.dts)
                pts.append(packet.pts)
                key.append(bool(packet.is_keyframe))
                size.append(packet.size)
                discard.append(bool(packet.is_discard))
                last_corrupt = bool(packet.is_corrupt)
        except av.error.FFmpegError as exc:  # damaged data: keep what was readable
            error = exc
        if last_corrupt:  # a file cut inside its last sample: that frame is not present
            for column in (pos, dts, pts, key, size, discard):
                column.pop()
            error = error or "the last packet is cut short"
        if not pos:
            reason = f"no decodable video packets ({error})" if error else "no video packets"
            raise VideoDecodeError(self.uri, "truncated" if error else "not_video", reason)
        if len(set(p for p in pos if p >= 0)) != sum(p >= 0 for p in pos):
            pos = [-1] * len(pos)  # positions are unusable as packet identities
        self._kept.clear()  # identified with a table that turned out not to be exact
        self._set_table(pos, dts, pts, key, size, discard)
        n = self.decodable
        missing = max(self._declared_if_cut() - len(pos), self._declared_by_duration(n) - n, 0)
        self.truncated = error is not None or missing > 0
        self.num_frames = n + missing
        end = getattr(self._source, "size", None)
        header = AVI_CHUNK_HEADER if self.format_name == "avi" else 0  # AVI: pos of the chunk
        if (
            self.truncated
            and len(pos) > 1
            and end
            and pos[-1] >= 0
            and pos[-1] + header + size[-1] >= end
        ):
            # the last packet runs to the end of a cut file: its data is cut (demuxers do
            # not always flag it corrupt, AVI's does not)
            for column in (pos, dts, pts, key, size, discard):
                column.pop()
            self._set_table(pos, dts, pts, key, size, discard)
        if self.truncated and not self.ordinal:
            hidden = _displayed_after_a_gap(pts, discard, self._frame_step())
            if hidden:  # frames shown after a missing one: not a prefix of the video
                discard = [d or i in hidden for i, d in enumerate(discard)]
                self._set_table(pos, dts, pts, key, size, discard)
        self._verify = False
        self._reset_session()
        self.mode = "scan"
        if not self.ordinal and self.format_name not in PTS_FORMATS:
            self.ordinal = not self._pts_follow_display_order()
        if self.truncated and self.ordinal and self.stream.codec_context.has_b_frames:
            # frame i is the i-th output: the last outputs of a cut stream with B-frames
            # may be frames shown after missing ones, and pts cannot tell which
            self.decodable = max(1, self.decodable - _MAX_REORDER)

    def _frame_step(self) -> float:
        """One frame's duration in stream time-base units (0 when unknown)."""
        rate, base = self.stream.guessed_rate or self.stream.average_rate, self.stream.time_base
        return float(1 / (rate * base)) if rate and base else 0.0

    def _declared_if_cut(self) -> int:
        """The header's frame count where it is evidence of missing frames. An AVI header
        also counts dropped (empty) frames, so there it only counts when the file is
        shorter than its RIFF header says."""
        src = self._source
        if self.format_name == "avi" and src is not None and riff_complete(src.read_at, src.size):
            return 0
        return self.declared_frames

    def _pts_follow_display_order(self) -> bool:
        """Decode the first frames: do their pts equal the table's first pts, in order?"""
        self._start_at(0)
        want = self._frame_pts[:_PTS_CHECK_FRAMES]
        got: list = []
        while len(got) < len(want):
            frame = self._next_frame()
            if frame is None:
                break
            got.append(frame.pts)
        self._open_container()
        return got[: len(want)] == want

    def _declared_by_duration(self, seen: int) -> int:
        """Frames implied by the video track's own ``DURATION`` tag (Matroska/WebM written
        by FFmpeg) when it ends clearly (> 0.5 s) after the last packet present: the
        track's time span at the average frame rate (exact for constant frame rates, an
        estimate otherwise), at least ``seen + 1``. 0 when there is no tag or nothing is
        missing."""
        vs = self.stream
        tag = vs.metadata.get("DURATION") or vs.metadata.get("duration")
        known = [p for p in self._pts if p is not None]
        if not tag or not self.fps or not known:
            return 0
        try:
            h, m, sec = tag.split(":")
            tag_s = int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            return 0
        seen_end = float(max(known) * vs.time_base) + 1.0 / self.fps
        if tag_s - seen_end <= 0.5:
            return 0
        span = tag_s - float(min(known) * vs.time_base)
        return max(seen + 1, int(round(span * self.fps)))

    @property
    def open_gop_keys(self) -> list[int]:
        """Decode indices of keyframes followed (in decode order) by frames displayed before
        them — open GOPs, where decord's seeks go wrong."""
        if self.ordinal:
            return []
        out, suffix_min = [], None
        for i in range(len(self._pts) - 1, -1, -1):
            p = self._pts[i]
            if self._key[i] and i > 0 and suffix_min is not None and suffix_min < p:
                out.append(i)
            suffix_min = p if suffix_min is None else min(suffix_min, p)
        return sorted(out)

    # ------------------------------------------------------------------ demux/decode loop

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def _read_packet(self) -> Any | None:
        if self._buffer:
            return self._buffer.popleft()
        return self._demux_one()

    def _demux_one(self) -> Any | None:
        while True:
            self._check_cancel()
            try:
                packet = next(self._demux)
            except StopIteration:
                return None
            except av.error.FFmpegError:
                return None  # unreadable tail: treat like the end of the stream
            if packet.size == 0:
                continue
            idx = self._idx_of_pos.get(packet.pos)
            if self._verify and (
                idx is None or packet.pts != self._pts[idx] or packet.dts != self._dts[idx]
            ):
                raise NeedScan()  # the index said otherwise: never trust it for this file
            if idx is not None:
                self._demux_next = idx + 1
            return packet

    def _feed(self) -> list:
        """Feed one packet (or the end-of-stream flush) and return decoded frames."""
        if self._eof:
            return []
        packet = self._read_packet()
        codec = self.stream.codec_context
        if packet is None:
            self._eof = True
            try:
                return list(codec.decode(None))
            except av.error.FFmpegError:
                return []
        idx = self._idx_of_pos.get(packet.pos)
        if self._next_idx is not None:
            self._next_idx = (idx if idx is not None else self._next_idx) + 1
        if self._needed is not None:
            # a frame no other frame references, and that nobody asked for, need not be
            # decoded at all (most B-frames): the decoder drops it, the rest are unchanged
            skip = idx is not None and idx not in self._needed
            codec.skip_frame = "NONREF" if skip else "DEFAULT"
            if skip:
                self._skipped.add(idx)
        try:
            return list(codec.decode(packet))
        except av.error.FFmpegError:
            return []  # a damaged packet: the decoder usually recovers at the next keyframe

    def _next_frame(self) -> Any | None:
        """The next frame the decoder outputs, or None at the end of the stream."""
        while not self._pending:
            frames = self._feed()
            self.frames_decoded += len(frames)
            self._pending.extend(frames)
            if self._eof and not frames:
                return None
        return self._pending.popleft()

    def _start_at(self, key_idx: int) -> None:
        """Position the demuxer at keyframe ``key_idx`` or earlier (checked), fresh decoder.

        The seek goes by the keyframe's pts first, then its dts: MP4's index is searched by
        presentation time, where the dts (earlier by the B-frame delay) lands a whole GOP
        early, i.e. twice the decoding. Where the demuxer really landed is checked by the
        byte position of the first packet; a landing after ``key_idx`` is never used. The
        first GOP is reached by a seek as well (reopening the container costs more than
        the decoding it saves); if no seek lands right, or a frame was not found after a
        seek, the container is reopened (``_get_one``'s last try).
        """
        keys = self._keys
        k = bisect.bisect_right(keys, key_idx) - 1
        while k >= 0:
            key = keys[k]
            stamps = [t for t in (self._pts[key], self._dts[key]) if t is not None]
            if self._pos[key] >= 0:
                for ts in dict.fromkeys(stamps):
                    if self._seek_lands(ts, key_idx):
                        return
            k -= 1  # landed somewhere unexpected: try the keyframe before
        self._start_fresh()

    def _start_fresh(self) -> None:
        """Reopen the container and decode from its very first packet: always right."""
        self._open_container()
        self._demux = self.container.demux(self.stream)
        self._next_idx = self._session_start = 0

    def _seek_lands(self, ts: int, key_idx: int) -> bool:
        """Seek to ``ts`` (backward, keyframes); True and ready to decode if the first packet
        is a keyframe (or the very first packet) at or before decode index ``key_idx``."""
        try:
            self.container.seek(ts, backward=True, any_frame=False, stream=self.stream)
        except av.error.FFmpegError:
            return False
        self.stream.codec_context.flush_buffers()
        self._demux = self.container.demux(self.stream)
        self._buffer.clear()
        self._pending.clear()
        first = self._demux_one()
        idx = self._idx_of_pos.get(first.pos) if first is not None else None
        if idx is None or idx > key_idx or not (self._key[idx] or idx == 0):
            return False
        self._buffer.append(first)
        self._eof = False
        self._next_idx = self._session_start = idx
        self._last_out = None
        self._skipped = set()
        return True

    def _prefetch(self, start: int, p: int) -> None:
        """Tell a ranged source the bytes of packets ``start`` .. the last one the decoder
        needs before it outputs the frame with pts ``p`` (one request instead of many)."""
        prefetch = getattr(self._source, "prefetch", None)
        if prefetch is None or not self._has_pos:
            return
        n, pts = len(self._pos), self._pts
        d = last = self._idx_of_pts[p]
        for k in range(d + 1, min(n, d + 64)):
            if pts[k] < p:
                last = k  # displayed before the frame but decoded after it (B-frames)
        last = min(n - 1, last + _REORDER_SLACK)
        first = min(start, last)
        span = range(first, last + 1)
        prefetch(min(self._pos[k] for k in span), max(self._pos[k] + self._size[k] for k in span))

    # ------------------------------------------------------------------ target resolution

    def _key_for(self, target_pts: int) -> int:
        """Latest keyframe before the target in decode order whose pts is not after it."""
        d = self._idx_of_pts[target_pts]
        k = bisect.bisect_right(self._keys, d) - 1
        while k > 0 and self._pts[self._keys[k]] > target_pts:
            k -= 1
        return self._keys[max(k, 0)]

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
        if getattr(self, "ordinal", True) or not hasattr(self, "_frame_pts"):
            self._wanted = {i: i for i in planned}
        else:
            fp = self._frame_pts
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
            out.update(self._decode_all(todo))
        self._served(indices, out)
        return out

    def _decode_all(self, todo: list[int]) -> dict[int, np.ndarray]:
        if self.ordinal:
            return self._get_ordinal(todo)
        out: dict[int, np.ndarray] = {}
        try:
            for i in todo:  # ascending index = ascending pts: forward decode
                if i in self._kept:  # passed while decoding an earlier one of this call
                    out[i] = self._kept[i]
                    continue
                p = self._frame_pts[i]
                out[i] = self._get_one(p, self._key_for(p), i)
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

    def _can_continue(self, p: int, key: int, s: dict[str, Any] | None = None) -> bool:
        """Can session ``s`` (default: the active one) decode on to pts ``p`` (keyframe
        ``key``) without a seek?"""
        s = self.__dict__ if s is None else s
        return (
            s["_demux"] is not None
            and not s["_eof"]
            and s["_session_start"] is not None
            and s["_session_start"] <= key
            and s["_next_idx"] is not None
            and s["_next_idx"] >= key
            and (s["_last_out"] is None or s["_last_out"] < p)
            and self._idx_of_pts[p] not in s["_skipped"]
        )

    # ------------------------------------------------------------------ sessions

    def _park(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _SESSION}

    def _resume(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def _drop_parked(self) -> None:
        for state in self._parked:
            state["container"].close()
        self._parked = []

    def _worth_parking(self, p: int, s: dict[str, Any]) -> bool:
        """Does a planned frame other than ``p`` lie ahead of session ``s`` in its GOP,
        far enough from the keyframe that going on beats seeking again?"""
        if s["_last_out"] is None:
            return False
        done = bisect.bisect_right(self._frame_pts, s["_last_out"])
        for q in self._wanted:
            key = self._key_for(q)
            start = bisect.bisect_left(self._frame_pts, self._pts[key])
            if q != p and done - start >= _PARK_MIN_FRAMES and self._can_continue(q, key, s):
                return True
        return False

    def _pick_session(self, p: int, key: int) -> None:
        """With a plan, several decoder sessions: go on with one that can reach ``p``
        without a seek; before seeking away from a GOP where later steps still need
        frames, park the session there and seek with another container."""
        if self._can_continue(p, key) or not self._wanted:
            return
        for k, state in enumerate(self._parked):
            if self._can_continue(p, key, state):
                active = self._park()
                self._resume(self._parked.pop(k))
                if self._worth_parking(p, active):
                    self._parked.append(active)
                else:
                    active["container"].close()
                return
        if self._demux is not None and self._worth_parking(p, self.__dict__):
            if len(self._parked) >= _MAX_PARKED:
                self._parked.pop(0)["container"].close()  # the longest parked
            self._parked.append(self._park())
            self.container = None  # parked: _open_container must not close it
            self._open_container()

    def _get_one(self, p: int, key: int, i: int) -> np.ndarray:
        self._pick_session(p, key)
        k = self._keys.index(key)
        retries = list(dict.fromkeys([key, self._keys[k - 1] if k > 0 else 0, 0]))
        starts: list[int | None] = [None] if self._can_continue(p, key) else []
        for n, start in enumerate(starts + retries):  # None: go on decoding from where we are
            self._prefetch(self._next_idx if start is None else start, p)
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
        at = self._idx_of_pts
        self._needed = {at[p], *(at[q] for q in self._wanted)}
        try:
            return self._decode_until(p)
        finally:
            self._needed = None
            self.stream.codec_context.skip_frame = "DEFAULT"

    def _decode_until(self, p: int) -> np.ndarray | None:
        while True:
            frame = self._next_frame()
            if frame is None:
                return None
            fp = frame.pts if frame.pts is not None else frame.dts
            if fp is None:
                continue
            if self._last_out is not None and fp <= self._last_out:
                raise NeedOrdinal()  # output not in increasing pts: labels are unusable
            self._last_out = fp
            if fp == p:
                return self._rgb(frame)
            if fp > p:
                return None  # passed it: the seek or the decoder skipped the frame
            if fp in self._wanted:
                self._keep(fp, frame)

    def _get_ordinal(self, indices: list[int]) -> dict[int, np.ndarray]:
        """Sequential decode counting output frames (files without usable pts)."""
        out: dict[int, np.ndarray] = {}
        if self._demux is None or self._ordinal >= indices[0]:
            self._open_container()
            self._demux = self.container.demux(self.stream)
        want = set(indices)
        while want:
            frame = self._next_frame()
            if frame is None:
                break
            self._ordinal += 1
            if self._ordinal in want:
                out[self._ordinal] = self._rgb(frame)
                want.discard(self._ordinal)
            elif self._ordinal in self._wanted:
                self._keep(self._ordinal, frame)
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
        every frame, which costs more than decoding a small frame."""
        return self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()

    def close(self) -> None:
        self._kept.clear()
        self._drop_parked()
        if self.container is not None:
            self.container.close()
            self.container = None


def _displayed_after_a_gap(
    pts: list, discard: list[bool], step: float = 0.0, window: int = 32
) -> set[int]:
    """Packets (decode indices) of a cut stream whose frames are shown after a frame that
    is missing: with B-frames, the packets present are a prefix in decode order, not in
    display order (``I P B B`` cut after ``P`` holds frames 0 and 3, not 0 and 1). Seen as
    the first gap wider than the frame step among the last ``window`` shown frames; the
    frames after it are hidden so that frame i is still the video's i-th frame. ``step``:
    the frame duration from the stream's rate; 0 = the median step of the shown frames."""
    shown = sorted((p, i) for i, (p, d) in enumerate(zip(pts, discard, strict=True)) if not d)
    if len(shown) < 2:
        return set()
    steps = np.diff([p for p, _ in shown])
    if step <= 0 and len(shown) >= 3 and (steps > 0).any():
        step = float(np.median(steps[steps > 0]))
    if step <= 0:
        return set()
    tail = max(0, len(steps) - window)
    gaps = [j for j in range(tail, len(steps)) if steps[j] > 1.5 * step]
    return {i for _, i in shown[gaps[0] + 1 :]} if gaps else set()
