"""The frame table of one video stream: which packet holds which frame, and where.

Per packet, in decode order: byte position, dts, pts, keyframe flag, size, and whether
FFmpeg discards it (edit lists). Frame ``i`` is the packet with the ``i``-th smallest pts
among those not discarded, which is what a plain sequential decode outputs as its
``i``-th frame. A ``FrameTable`` is immutable: a table found not to be exact is replaced,
never patched.

How it is learnt (the decoder's ``mode``; ``auto`` = ``index`` where the container
allows it, else ``scan``):

``index`` (``index_table``) from the container's own sample index, without reading any
          packet: MP4/MOV (FFmpeg's index + the ``ctts`` composition offsets from the
          ``moov`` box, ``mp4_index``) and AVI with a valid ``idx1`` (complete file, a
          codec without frame reordering, so pts = dts). Open cost does not grow with
          the file's length, and a ranged source reads only the header. The decoder
          checks every packet it reads later against the table.
``scan``  (``scan_table``) demux every packet once (packet headers and payloads are
          read, nothing is decoded). Exact for any container (MKV/WebM, MPEG-TS,
          damaged files); for a cut file it also says how many frames are missing.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import av
import numpy as np

from frameexit.errors import VideoDecodeError
from frameexit.video.containers import AVI_CHUNK_HEADER, MP4_FORMAT, riff_complete
from frameexit.video.mp4_index import find_moov, sample_tables

# Packets past the frame that the decoder may need before it outputs that frame.
_REORDER_SLACK = 4


@dataclass(frozen=True)
class FrameTable:
    """Packets in decode order (one entry per packet in each column) and what they say
    about the video: ``num_frames`` (frames the video has: more than ``decodable`` when
    the file is cut) and ``truncated`` (the file holds fewer packets than the video).
    ``from_index``: learnt from the container's index, so every packet read later must
    be checked against it."""

    pos: tuple[int, ...]  # byte offset of the packet (-1: unknown)
    dts: tuple[int | None, ...]
    pts: tuple[int | None, ...]
    key: tuple[bool, ...]
    size: tuple[int, ...]
    discard: tuple[bool, ...]
    num_frames: int = -1  # -1: ``decodable``
    truncated: bool = False
    from_index: bool = False

    def __post_init__(self) -> None:
        if self.num_frames < 0:
            object.__setattr__(self, "num_frames", self.decodable)

    @functools.cached_property
    def decodable(self) -> int:
        """Frames present: packets not discarded."""
        return sum(not d for d in self.discard)

    @functools.cached_property
    def ordinal(self) -> bool:
        """True when pts cannot identify frames (missing or repeated): frames must be
        counted in a sequential decode."""
        return any(p is None for p in self.pts) or len(set(self.pts)) != len(self.pts)

    @functools.cached_property
    def frame_pts(self) -> tuple[int, ...]:
        """pts of frame ``i`` (empty when ``ordinal``)."""
        if self.ordinal:
            return ()
        return tuple(sorted(p for p, d in zip(self.pts, self.discard, strict=True) if not d))

    @functools.cached_property
    def idx_of_pts(self) -> Mapping[int, int]:
        """pts -> decode index (empty when ``ordinal``)."""
        return MappingProxyType({} if self.ordinal else {p: i for i, p in enumerate(self.pts)})

    @functools.cached_property
    def idx_of_pos(self) -> Mapping[int, int]:
        """Byte position -> decode index (packets whose position is known)."""
        return MappingProxyType({p: i for i, p in enumerate(self.pos) if p >= 0})

    @functools.cached_property
    def has_pos(self) -> bool:
        """Every packet's byte position is known."""
        return bool(self.pos) and min(self.pos) >= 0

    @functools.cached_property
    def keys(self) -> tuple[int, ...]:
        """Decode indices to start decoding at: the keyframes, and always packet 0."""
        keys = [i for i, k in enumerate(self.key) if k]
        return tuple(keys if keys and keys[0] == 0 else [0, *keys])

    def key_for(self, target_pts: int) -> int:
        """Latest keyframe before the target in decode order whose pts is not after it."""
        d = self.idx_of_pts[target_pts]
        k = bisect.bisect_right(self.keys, d) - 1
        while k > 0 and self.pts[self.keys[k]] > target_pts:
            k -= 1
        return self.keys[max(k, 0)]

    def byte_span(self, start: int, p: int) -> tuple[int, int] | None:
        """The bytes of packets ``start`` .. the last one a decoder needs before it
        outputs the frame with pts ``p`` (None when positions are unknown)."""
        if not self.has_pos:
            return None
        n, pts = len(self.pos), self.pts
        d = last = self.idx_of_pts[p]
        for k in range(d + 1, min(n, d + 64)):
            if pts[k] < p:
                last = k  # displayed before the frame but decoded after it (B-frames)
        last = min(n - 1, last + _REORDER_SLACK)
        span = range(min(start, last), last + 1)
        return min(self.pos[k] for k in span), max(self.pos[k] + self.size[k] for k in span)

    def open_gop_keys(self) -> list[int]:
        """Decode indices of keyframes followed (in decode order) by frames displayed
        before them: open GOPs."""
        out, suffix_min = [], None
        for i in range(len(self.pts) - 1, -1, -1):
            p = self.pts[i]
            if self.key[i] and i > 0 and suffix_min is not None and suffix_min < p:
                out.append(i)
            suffix_min = p if suffix_min is None else min(suffix_min, p)
        return sorted(out)

    def without_last(self) -> FrameTable:
        """The table without its last packet (cut short in the file)."""
        pos, dts, pts, key, size, discard = (c[:-1] for c in self.columns())
        return replace(self, pos=pos, dts=dts, pts=pts, key=key, size=size, discard=discard)

    def hiding(self, hidden: set[int]) -> FrameTable:
        """The table with the packets ``hidden`` (decode indices) discarded as well."""
        return replace(self, discard=tuple(d or i in hidden for i, d in enumerate(self.discard)))

    def columns(self) -> tuple[tuple, ...]:
        """``(pos, dts, pts, key, size, discard)``."""
        return self.pos, self.dts, self.pts, self.key, self.size, self.discard


def index_table(
    stream: Any, format_name: str, declared_frames: int, source: Any
) -> FrameTable | str:
    """The table from the container's sample index (``source``: ``size`` and
    ``read_at``), or why it is not known to be exact."""
    entries = stream.index_entries
    n = len(entries)
    if format_name not in (MP4_FORMAT, "avi"):
        return f"container {format_name!r} has no per-frame index"
    if n == 0 or source is None:
        return "no sample index" if n == 0 else "no byte access to the file"
    if any(e.is_discard for e in entries):
        return "edit list discards samples"
    pos = [int(e.pos) for e in entries]
    dts = [int(e.timestamp) for e in entries]
    size = [int(e.size) for e in entries]
    key = [bool(e.is_keyframe) for e in entries]
    if format_name == "avi":
        if stream.codec_context.has_b_frames:
            return "AVI with frame reordering: packet pts are not in the index"
        if not riff_complete(source.read_at, source.size):
            return "AVI shorter than its RIFF header says"
        pos = [p + AVI_CHUNK_HEADER for p in pos]
        pts = list(dts)
    else:
        if n != declared_frames:
            return "sample count differs from the index"
        moov = find_moov(source.read_at, source.size)
        table = sample_tables(moov).get(stream.id) if moov is not None else None
        if table is None or len(table.offsets) != n:
            return "sample table not understood"
        if not np.array_equal(np.diff(dts), table.deltas[:-1]):
            return "index timestamps do not follow the sample table"
        # FFmpeg shifts dts by the most negative composition offset (ctts version 1)
        shift = max(0, -int(table.offsets.min()))
        pts = [d + int(o) + shift for d, o in zip(dts, table.offsets, strict=True)]
    if len(set(pos)) != n or not key[0]:
        return "sample positions are not unique"
    if max(p + s for p, s in zip(pos, size, strict=True)) > source.size:
        return "samples past the end of the file (cut)"
    columns = tuple(pos), tuple(dts), tuple(pts), tuple(key), tuple(size), (False,) * n
    return FrameTable(*columns, from_index=True)


def scan_table(
    container: Any,
    stream: Any,
    *,
    uri: str,
    format_name: str,
    declared_frames: int,
    fps: float,
    source: Any,
    check_cancel: Callable[[], None],
    max_frames: int | None = None,
) -> FrameTable:
    """Demux every packet of ``stream`` (no decoding) into a table. For a damaged or cut
    file: what was readable, a last packet cut short dropped, frames shown after a
    missing one hidden (so frame ``i`` is still the video's ``i``-th frame), and
    ``num_frames`` from what the header declares. More than ``max_frames`` packets
    (``data.decode.max_frames``) fail as ``too_large`` (the table would be too)."""
    columns: tuple[list, ...] = ([], [], [], [], [], [])
    pos, dts, pts, key, size, discard = columns
    error, last_corrupt = None, False
    try:
        for packet in container.demux(stream):
            check_cancel()
            if packet.size == 0:
                continue
            if max_frames is not None and len(pos) >= max_frames:
                raise VideoDecodeError(
                    uri,
                    "too_large",
                    f"more than {max_frames} packets, over data.decode.max_frames = {max_frames}",
                )
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
        for column in columns:
            column.pop()
        error = error or "the last packet is cut short"
    if not pos:
        reason = f"no decodable video packets ({error})" if error else "no video packets"
        raise VideoDecodeError(uri, "truncated" if error else "not_video", reason)
    if len(set(p for p in pos if p >= 0)) != sum(p >= 0 for p in pos):
        columns = ([-1] * len(pos), *columns[1:])  # positions are unusable as identities
    seen = FrameTable(*(tuple(c) for c in columns))
    n = seen.decodable
    declared = _declared_if_cut(format_name, declared_frames, source)
    missing = max(declared - len(pos), _declared_by_duration(stream, fps, seen.pts, n) - n, 0)
    table = replace(seen, num_frames=n + missing, truncated=error is not None or missing > 0)
    if not table.truncated:
        return table
    end = getattr(source, "size", None)
    header = AVI_CHUNK_HEADER if format_name == "avi" else 0  # AVI: pos of the chunk
    last = len(table.pos) - 1
    if (
        last > 0
        and end
        and table.pos[last] >= 0
        and table.pos[last] + header + table.size[last] >= end
    ):
        # the last packet runs to the end of a cut file: its data is cut (demuxers do
        # not always flag it corrupt, AVI's does not)
        table = table.without_last()
    if not table.ordinal:
        hidden = _displayed_after_a_gap(table.pts, table.discard, _frame_step(stream))
        if hidden:  # frames shown after a missing one: not a prefix of the video
            table = table.hiding(hidden)
    return table


def _frame_step(stream: Any) -> float:
    """One frame's duration in stream time-base units (0 when unknown)."""
    rate, base = stream.guessed_rate or stream.average_rate, stream.time_base
    return float(1 / (rate * base)) if rate and base else 0.0


def _declared_if_cut(format_name: str, declared_frames: int, source: Any) -> int:
    """The header's frame count where it is evidence of missing frames. An AVI header
    also counts dropped (empty) frames, so there it only counts when the file is shorter
    than its RIFF header says."""
    if format_name == "avi" and source is not None and riff_complete(source.read_at, source.size):
        return 0
    return declared_frames


def _declared_by_duration(stream: Any, fps: float, pts: tuple, seen: int) -> int:
    """Frames implied by the video track's own ``DURATION`` tag (Matroska/WebM written by
    FFmpeg) when it ends clearly (> 0.5 s) after the last packet present: the track's
    time span at the average frame rate (exact for constant frame rates, an estimate
    otherwise), at least ``seen + 1``. 0 when there is no tag or nothing is missing."""
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    known = [p for p in pts if p is not None]
    if not tag or not fps or not known:
        return 0
    try:
        h, m, sec = tag.split(":")
        tag_s = int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0
    seen_end = float(max(known) * stream.time_base) + 1.0 / fps
    if tag_s - seen_end <= 0.5:
        return 0
    span = tag_s - float(min(known) * stream.time_base)
    return max(seen + 1, int(round(span * fps)))


def _displayed_after_a_gap(
    pts: tuple, discard: tuple[bool, ...], step: float = 0.0, window: int = 32
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
