"""Exact random access with PyAV: frames are found by presentation timestamp, not by count.

Frame ``i`` is the frame with the ``i``-th smallest pts among the video stream's packets,
which is what a plain sequential decode outputs as its ``i``-th frame. To get it we seek
to a keyframe at or before it, check where the demuxer really landed (by the byte
position of the first packet), and decode forward until a frame with that pts comes out.
A seek that lands too late, or a decoder that drops the frame (open-GOP leading
pictures), is noticed and retried from an earlier keyframe, finally from the start.

Two ways to learn the frame table (``mode``):

``scan``  demux every packet once at open (packet headers and payloads are read, nothing
          is decoded): pts, dts, keyframe flag and byte position of every packet. Exact
          for any container. Used for local files and whole-object fetches.
``index`` use the container's own sample index (MP4/MOV ``stbl``, AVI ``idx1``: position,
          dts and keyframe flag of every sample) and learn pts per GOP when that GOP is
          first read. Nothing but the header and the GOPs that are asked for is read, so
          with ranged fetches only those bytes travel. Positions assume closed GOPs; each
          GOP that is read is checked (no frame before its keyframe, none after the next
          keyframe, no leading frames after the next keyframe), and any violation switches
          to ``scan``. Not checked: GOPs never read (a frame displayed after a keyframe that
          follows it in decode order — not produced by common encoders).
Frames identified by pts need unique pts; files without them are decoded sequentially
and frames counted (``ordinal``), which is exact but slow for random access.
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from frameexit.errors import VideoDecodeError

# Demuxers that accept almost anything (text as ANSI art, single images): not videos.
_NOT_VIDEO_FORMATS = {"tty", "bin", "xbin", "adf", "idf", "image2", "lavfi"}
_NOT_VIDEO_CODECS = {"ansi", "bintext", "xbin", "idf"}


# Containers that store presentation timestamps. Elsewhere (AVI, raw streams) packet
# "pts" may be decode-order labels, so the frame table is checked by decoding the start.
_PTS_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")
_PTS_CHECK_FRAMES = 16


class Cancelled(Exception):
    """Raised inside a decode loop when the watchdog has given up on this video."""


class NeedScan(Exception):
    """Index mode met something it cannot position exactly; rebuild with a full scan."""


class NeedOrdinal(Exception):
    """Decoded timestamps do not follow display order; count frames instead."""


class PyAVDecoder:
    """Exact decoder for one video. Not thread-safe; the reader serialises calls."""

    def __init__(
        self,
        opener: Callable[[], Any],
        uri: str,
        *,
        mode: str = "scan",
        threads: int = 1,
        cancel: threading.Event | None = None,
    ) -> None:
        if mode not in ("scan", "index"):
            raise ValueError(f"mode must be 'scan' or 'index', got {mode!r}")
        self.uri = uri
        self._opener = opener
        self._threads = threads
        self._cancel = cancel or threading.Event()
        self.container: Any = None
        self._reformatter = VideoReformatter()
        self._open_container()
        vs = self.stream
        self.format_name: str = self.container.format.name
        self.codec_name: str = vs.codec_context.name
        self.width: int = vs.codec_context.width
        self.height: int = vs.codec_context.height
        rate = vs.average_rate or vs.guessed_rate
        self.fps: float = float(rate) if rate else 0.0
        self.declared_frames: int = int(vs.frames or 0)
        self.has_seek_index: bool = len(vs.index_entries) > 0
        self.mode = "index" if mode == "index" and self._load_index() else "scan"
        if self.mode == "scan":
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
            if (
                container.format.name in _NOT_VIDEO_FORMATS
                or container.format.name.endswith("_pipe")  # a single image (png_pipe, ...)
                or vs.codec_context.name in _NOT_VIDEO_CODECS
            ):
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
        self._buffer: collections.deque = collections.deque()
        self._next_idx: int | None = None  # decode index of the next packet to feed
        self._session_start: int | None = None  # decode index where decoding (re)started
        self._last_out: int | None = None  # pts of the last frame the decoder output
        self._eof = False
        self._demux_next = 0  # decode index just after the last packet demuxed
        self._ordinal = -1  # frames output since the start (ordinal mode)

    def _set_packets(self, pos: list[int], dts: list, pts: list, key: list[bool]) -> None:
        self._pos, self._dts, self._pts, self._key = pos, dts, pts, key
        self._idx_of_pos = {p: i for i, p in enumerate(pos) if p >= 0}
        self._keys = [i for i, k in enumerate(key) if k]
        if not self._keys or self._keys[0] != 0:
            self._keys.insert(0, 0)  # decoding from the very first packet always works

    def _load_index(self) -> bool:
        if self.format_name not in _PTS_FORMATS[:1]:
            return False  # only MP4/MOV keep a complete sample table with real timestamps
        entries = self.stream.index_entries
        n = len(entries)
        if n == 0 or n != self.declared_frames:
            return False
        pos, dts, key = [], [], []
        for e in entries:
            if e.is_discard:
                return False
            pos.append(e.pos)
            dts.append(e.timestamp)
            key.append(bool(e.is_keyframe))
        if len(set(pos)) != n or not key[0]:
            return False
        self._set_packets(pos, dts, [None] * n, key)
        self._gop_pts: dict[int, list[int]] = {}
        self.num_frames = n
        self.decodable = n
        self.truncated = False
        self.ordinal = False
        return True

    def _scan(self, reopen: bool = True) -> None:
        """Demux every packet of the stream (no decoding) and build the frame table."""
        if reopen:
            self._open_container()
        pos, dts, pts, key = [], [], [], []
        error = None
        try:
            for packet in self.container.demux(self.stream):
                self._check_cancel()
                if packet.size == 0:
                    continue
                pos.append(packet.pos if packet.pos is not None else -1)
                dts.append(packet.dts)
                pts.append(packet.pts)
                key.append(bool(packet.is_keyframe))
        except av.error.FFmpegError as exc:  # damaged data: keep what was readable
            error = exc
        if not pos:
            reason = f"no decodable video packets ({error})" if error else "no video packets"
            raise VideoDecodeError(self.uri, "truncated" if error else "not_video", reason)
        if len(set(p for p in pos if p >= 0)) != sum(p >= 0 for p in pos):
            pos = [-1] * len(pos)  # positions are unusable as packet identities
        self._set_packets(pos, dts, pts, key)
        n = len(pos)
        self.ordinal = any(p is None for p in pts) or len(set(pts)) != n
        if not self.ordinal:
            self._frame_pts = sorted(pts)
            self._idx_of_pts = {p: i for i, p in enumerate(pts)}
        declared = max(self.declared_frames, self._declared_by_duration(n))
        self.truncated = error is not None or declared > n
        self.num_frames = max(n, declared)
        self.decodable = n
        self._reset_session()
        self.mode = "scan"
        if not self.ordinal and self.format_name not in _PTS_FORMATS:
            self.ordinal = not self._pts_follow_display_order()

    def _pts_follow_display_order(self) -> bool:
        """Decode the first frames: do their pts equal the table's first pts, in order?"""
        self._start_at(0)
        want = self._frame_pts[:_PTS_CHECK_FRAMES]
        got: list = []
        while len(got) < len(want):
            frames = self._feed()
            got += [f.pts for f in frames]
            if self._eof and not frames:
                break
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
        them — open GOPs, where decord's seeks go wrong. Needs a scan."""
        if self.mode != "scan" or self.ordinal:
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
            if idx is not None:
                self._demux_next = idx + 1
                if self._pts[idx] is None:
                    self._pts[idx] = packet.pts  # index mode learns pts as it reads
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
        if self._next_idx is not None:
            idx = self._idx_of_pos.get(packet.pos)
            self._next_idx = (idx if idx is not None else self._next_idx) + 1
        try:
            return list(codec.decode(packet))
        except av.error.FFmpegError:
            return []  # a damaged packet: the decoder usually recovers at the next keyframe

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
        first = self._demux_one()
        idx = self._idx_of_pos.get(first.pos) if first is not None else None
        if idx is None or idx > key_idx or not (self._key[idx] or idx == 0):
            return False
        self._buffer.append(first)
        self._eof = False
        self._next_idx = self._session_start = idx
        self._last_out = None
        return True

    # ------------------------------------------------------------------ target resolution

    def _key_for(self, target_pts: int) -> int:
        """Latest keyframe before the target in decode order whose pts is not after it."""
        d = self._idx_of_pts[target_pts]
        k = bisect.bisect_right(self._keys, d) - 1
        while k > 0 and self._pts[self._keys[k]] > target_pts:
            k -= 1
        return self._keys[max(k, 0)]

    def _resolve_gop(self, g: int) -> list[int]:
        """Index mode: sorted pts of GOP ``g``'s frames, read and checked on first use."""
        if g in self._gop_pts:
            return self._gop_pts[g]
        k0 = self._keys[g]
        k1 = self._keys[g + 1] if g + 1 < len(self._keys) else None
        n = len(self._pos)
        if any(p is None for p in self._pts[k0 : (k1 if k1 is not None else n)]):
            if not (
                self._demux is not None
                and not self._eof
                and self._session_start is not None
                and self._session_start <= k0 <= self._demux_next
            ):
                self._start_at(k0)
            # read ahead (without decoding) to the first trailing frame after the next key
            while True:
                packet = self._demux_one()
                if packet is None:
                    break
                self._buffer.append(packet)
                idx = self._idx_of_pos.get(packet.pos)
                if idx is None:
                    raise NeedScan()
                if packet.pts is None:
                    raise NeedScan()
                if k1 is not None and idx > k1 and packet.pts > self._pts[k1]:
                    break
        pts = self._pts[k0 : (k1 if k1 is not None else n)]
        if any(p is None for p in pts) or len(set(pts)) != len(pts):
            raise NeedScan()
        if min(pts) != self._pts[k0]:
            raise NeedScan()  # frames displayed before this keyframe: open GOP
        if k1 is not None:
            nxt = self._pts[k1]
            if nxt is None or max(pts) >= nxt:
                raise NeedScan()
            tail = [p for p in self._pts[k1 + 1 :] if p is not None]
            for p in tail:  # leading frames of the next GOP come right after its keyframe
                if p > nxt:
                    break
                raise NeedScan()
        self._gop_pts[g] = sorted(pts)
        return self._gop_pts[g]

    def _target(self, i: int) -> tuple[int, int]:
        """``(pts, keyframe decode index to start from)`` of frame ``i``."""
        if self.mode == "index":
            g = bisect.bisect_right(self._keys, i) - 1
            return self._resolve_gop(g)[i - self._keys[g]], self._keys[g]
        p = self._frame_pts[i]
        return p, self._key_for(p)

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
        if self.ordinal:
            return self._get_ordinal(sorted(set(indices)))
        out: dict[int, np.ndarray] = {}
        try:
            for i in sorted(set(indices)):  # ascending index = ascending pts: forward decode
                p, key = self._target(i)
                out[i] = self._get_one(p, key, i)
        except NeedScan:
            self._scan()
            return self.get(indices)
        except NeedOrdinal:
            self.ordinal = True
            self._open_container()
            return self.get(indices)
        return out

    def _can_continue(self, p: int, key: int) -> bool:
        return (
            self._demux is not None
            and not self._eof
            and self._session_start is not None
            and self._session_start <= key
            and self._next_idx is not None
            and self._next_idx >= key
            and (self._last_out is None or self._last_out < p)
        )

    def _get_one(self, p: int, key: int, i: int) -> np.ndarray:
        k = self._keys.index(key)
        retries = list(dict.fromkeys([key, self._keys[k - 1] if k > 0 else 0, 0]))
        starts: list[int | None] = [None] if self._can_continue(p, key) else []
        for n, start in enumerate(starts + retries):  # None: go on decoding from where we are
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
        while True:
            frames = self._feed()
            for frame in frames:
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
            if self._eof and not frames:
                return None

    def _get_ordinal(self, indices: list[int]) -> dict[int, np.ndarray]:
        """Sequential decode counting output frames (files without usable pts)."""
        out: dict[int, np.ndarray] = {}
        if self._demux is None or self._ordinal >= indices[0]:
            self._open_container()
            self._demux = self.container.demux(self.stream)
        want = set(indices)
        while want:
            frames = self._feed()
            for frame in frames:
                self._ordinal += 1
                if self._ordinal in want:
                    out[self._ordinal] = self._rgb(frame)
                    want.discard(self._ordinal)
            if self._eof and not frames:
                break
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
        if self.container is not None:
            self.container.close()
            self.container = None
