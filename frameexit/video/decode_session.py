"""One decoder session: a container with its own demuxer position and codec state, fed
packet by packet.

``pyav_backend.PyAVDecoder`` decodes through one active session and parks others
mid-GOP for later steps; a session is the whole of what is parked and resumed. A session
is positioned by a seek whose landing is checked (``start_at``): the first packet after
the seek must be a keyframe at or before the one asked for, identified by its byte
position in the ``FrameTable``. Where the table came from the container's index, every
packet demuxed is checked against it (position, pts, dts): a mismatch raises
``NeedScan`` and the decoder rebuilds the table from a scan.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av

from frameexit.video.errors import Cancelled
from frameexit.video.frame_table import FrameTable

__all__ = ["Cancelled", "DecodeSession", "NeedScan"]


class NeedScan(Exception):
    """Index mode met something it cannot position exactly; rebuild with a full scan."""


@dataclass(eq=False)
class DecodeSession:
    """A container (``container``, its video ``stream``) and how far decoding has got.

    ``check_cancel`` raises ``Cancelled`` once the watchdog has given up; it is called
    for every packet demuxed."""

    container: Any
    stream: Any
    check_cancel: Callable[[], None]
    demux: Any = None  # the packet iterator; None: not positioned yet
    buffer: collections.deque = field(default_factory=collections.deque)  # demuxed, not fed
    pending: collections.deque = field(default_factory=collections.deque)  # decoded, not seen
    next_idx: int | None = None  # decode index of the next packet to feed
    start: int | None = None  # decode index where decoding (re)started
    last_out: int | None = None  # pts of the last frame looked at
    eof: bool = False
    ordinal: int = -1  # frames output since the start (ordinal mode)
    needed: set[int] | None = None  # decode indices to decode; None: all
    skipped: set[int] = field(default_factory=set)  # decode indices fed with NONREF

    def fresh(self) -> DecodeSession:
        """A new session on the same container (its demuxer state is not used again)."""
        return DecodeSession(self.container, self.stream, self.check_cancel)

    def can_continue(self, table: FrameTable, p: int, key: int) -> bool:
        """Can this session decode on to pts ``p`` (keyframe ``key``) without a seek?"""
        return (
            self.demux is not None
            and not self.eof
            and self.start is not None
            and self.start <= key
            and self.next_idx is not None
            and self.next_idx >= key
            and (self.last_out is None or self.last_out < p)
            and table.idx_of_pts[p] not in self.skipped
        )

    def begin(self) -> None:
        """Decode from the container's very first packet (on a freshly opened one)."""
        self.demux = self.container.demux(self.stream)
        self.next_idx = self.start = 0

    def feed(self, table: FrameTable) -> list:
        """Feed one packet (or the end-of-stream flush) and return the decoded frames."""
        if self.eof:
            return []
        packet = self._read_packet(table)
        codec = self.stream.codec_context
        if packet is None:
            self.eof = True
            try:
                return list(codec.decode(None))
            except av.error.FFmpegError:
                return []
        idx = table.idx_of_pos.get(packet.pos)
        if self.next_idx is not None:
            self.next_idx = (idx if idx is not None else self.next_idx) + 1
        if self.needed is not None:
            # a frame no other frame references, and that nobody asked for, need not be
            # decoded at all (most B-frames): the decoder drops it, the rest are unchanged
            skip = idx is not None and idx not in self.needed
            codec.skip_frame = "NONREF" if skip else "DEFAULT"
            if skip:
                self.skipped.add(idx)
        try:
            return list(codec.decode(packet))
        except av.error.FFmpegError:
            return []  # a damaged packet: the decoder usually recovers at the next keyframe

    def _read_packet(self, table: FrameTable) -> Any | None:
        if self.buffer:
            return self.buffer.popleft()
        return self._demux_one(table)

    def _demux_one(self, table: FrameTable) -> Any | None:
        while True:
            self.check_cancel()
            try:
                packet = next(self.demux)
            except StopIteration:
                return None
            except av.error.FFmpegError:
                return None  # unreadable tail: treat like the end of the stream
            if packet.size == 0:
                continue
            if table.from_index:
                idx = table.idx_of_pos.get(packet.pos)
                if idx is None or packet.pts != table.pts[idx] or packet.dts != table.dts[idx]:
                    raise NeedScan()  # the index said otherwise: never trust it for this file
            return packet

    def start_at(self, table: FrameTable, key_idx: int) -> bool:
        """Position the demuxer at keyframe ``key_idx`` or earlier (checked), with a fresh
        decoder; False if no seek lands right (then only a reopened container is).

        The seek goes by the keyframe's pts first, then its dts: MP4's index is searched by
        presentation time, where the dts (earlier by the B-frame delay) lands a whole GOP
        early, i.e. twice the decoding. Where the demuxer really landed is checked by the
        byte position of the first packet; a landing after ``key_idx`` is never used. The
        first GOP is reached by a seek as well (reopening the container costs more than
        the decoding it saves).
        """
        k = bisect.bisect_right(table.keys, key_idx) - 1
        while k >= 0:
            key = table.keys[k]
            stamps = [ts for ts in (table.pts[key], table.dts[key]) if ts is not None]
            if table.pos[key] >= 0:
                for ts in dict.fromkeys(stamps):
                    if self._seek_lands(table, ts, key_idx):
                        return True
            k -= 1  # landed somewhere unexpected: try the keyframe before
        return False

    def _seek_lands(self, table: FrameTable, ts: int, key_idx: int) -> bool:
        """Seek to ``ts`` (backward, keyframes); True and ready to decode if the first packet
        is a keyframe (or the very first packet) at or before decode index ``key_idx``."""
        try:
            self.container.seek(ts, backward=True, any_frame=False, stream=self.stream)
        except av.error.FFmpegError:
            return False
        self.stream.codec_context.flush_buffers()
        self.demux = self.container.demux(self.stream)
        self.buffer.clear()
        self.pending.clear()
        first = self._demux_one(table)
        idx = table.idx_of_pos.get(first.pos) if first is not None else None
        if idx is None or idx > key_idx or not (table.key[idx] or idx == 0):
            return False
        self.buffer.append(first)
        self.eof = False
        self.next_idx = self.start = idx
        self.last_out = None
        self.skipped = set()
        return True

    def close(self) -> None:
        self.container.close()
