"""The part of an MP4/MOV sample table that FFmpeg's index does not expose: composition
offsets (``ctts``), so a frame's presentation time is known without reading its packet.

FFmpeg keeps, per sample, position, size, decode timestamp and keyframe flag in the
stream's index (``stream.index_entries`` in PyAV), but not the ``ctts`` offset that turns
a decode timestamp into a presentation timestamp. With it, the whole frame table (frame
``i`` = the sample with the ``i``-th smallest pts) is known at open from the header alone,
as a full packet scan would give it, whatever the file's length.

Only the ``moov`` box is read (through ``read_at``, so a ranged source fetches nothing
but the header). ``sample_tables`` returns None for anything it does not fully
understand; the caller then scans. It never guesses: the decoder checks every packet it
reads against the table it built from these offsets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from frameexit.video.containers import ReadAt, mp4_boxes

_MAX_MOOV_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SampleTable:
    """One track's ``stts`` deltas and ``ctts`` offsets, one value per sample (decode order)."""

    track_id: int
    deltas: np.ndarray  # int64 [n]: dts[k+1] - dts[k] (stts)
    offsets: np.ndarray  # int64 [n]: pts[k] - dts[k] before FFmpeg's shifts (ctts; 0 if none)


def _boxes(
    data: memoryview, start: int = 0, end: int | None = None
) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload_start, payload_end)`` of the boxes in ``data[start:end]`` (up to the
    first one that does not fit)."""
    end = len(data) if end is None else end
    for box in mp4_boxes(lambda offset, n: data[offset : offset + n], end, start):
        if box.problem is not None:
            return
        yield box.kind, box.payload, box.end


def _child(data: memoryview, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, a, b in _boxes(data, start, end):
        if k == kind:
            return a, b
    return None


def find_moov(read_at: ReadAt, size: int) -> bytes | None:
    """The payload of the top-level ``moov`` box, wherever it is (start or end); None if
    the boxes before it do not fit in ``size`` bytes or it is over 256 MiB."""
    for box in mp4_boxes(read_at, size):
        if box.problem is not None:
            return None
        if box.kind == b"moov":
            if box.size > _MAX_MOOV_BYTES:
                return None
            data = read_at(box.payload, box.end - box.payload)
            return data if len(data) == box.end - box.payload else None
    return None


def _expand(table: np.ndarray, signed: bool) -> np.ndarray | None:
    counts = table[:, 0].astype(np.int64)
    values = table[:, 1].view(np.int32) if signed else table[:, 1]
    if counts.sum() > 50_000_000:
        return None
    return np.repeat(values.astype(np.int64), counts)


def _run_table(data: bytes | memoryview, a: int, b: int) -> tuple[int, np.ndarray] | None:
    """A full box of ``(count, value)`` pairs (stts, ctts): version and the pairs."""
    if b - a < 8:
        return None
    version = data[a]
    count = struct.unpack_from(">I", data, a + 4)[0]
    if a + 8 + 8 * count > b:
        return None
    table = np.frombuffer(bytes(data[a + 8 : a + 8 + 8 * count]), ">u4").reshape(count, 2)
    return version, table.astype(np.uint32)


def sample_tables(moov: bytes) -> dict[int, SampleTable]:
    """``track_ID -> SampleTable`` for every video track of a ``moov`` payload whose tables
    parse cleanly (tracks that do not are left out)."""
    out: dict[int, SampleTable] = {}
    view = memoryview(moov)
    for kind, a, b in _boxes(view):
        if kind != b"trak":
            continue
        table = _track(view, a, b)
        if table is not None:
            out[table.track_id] = table
    return out


def _track(data: memoryview, a: int, b: int) -> SampleTable | None:
    tkhd = _child(data, a, b, b"tkhd")
    mdia = _child(data, a, b, b"mdia")
    if tkhd is None or mdia is None:
        return None
    version = data[tkhd[0]]
    track_id = struct.unpack_from(">I", data, tkhd[0] + (20 if version == 1 else 12))[0]
    hdlr = _child(data, *mdia, b"hdlr")
    if hdlr is None or bytes(data[hdlr[0] + 8 : hdlr[0] + 12]) != b"vide":
        return None
    minf = _child(data, *mdia, b"minf")
    stbl = _child(data, *minf, b"stbl") if minf else None
    if stbl is None:
        return None
    stts = _child(data, *stbl, b"stts")
    stsz = _child(data, *stbl, b"stsz")
    if stts is None or stsz is None:
        return None
    parsed = _run_table(data, *stts)
    if parsed is None:
        return None
    deltas = _expand(parsed[1], signed=False)
    n = struct.unpack_from(">I", data, stsz[0] + 8)[0]
    if deltas is None or len(deltas) != n:
        return None
    ctts = _child(data, *stbl, b"ctts")
    if ctts is None:
        offsets = np.zeros(n, np.int64)
    else:
        parsed = _run_table(data, *ctts)
        # FFmpeg reads both versions as signed 32-bit offsets
        offsets = _expand(parsed[1], signed=True) if parsed is not None else None
        if offsets is None or len(offsets) != n:
            return None
    return SampleTable(track_id, deltas, offsets)
