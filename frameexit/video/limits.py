"""What a video declares about its size, read cheaply, and the limits it must stay within.

FFmpeg builds a container's whole sample index while it opens it: an MP4 of 1 KB whose
``stsz`` box declares 20 M samples costs GBs of memory inside ``av.open``, before any
check after it could run. So the declared sizes are read first, from the bytes:

* MP4/MOV (``mp4_declared``): the ``moov`` box's headers only, through ``read_at`` (a
  ranged source fetches nothing else): per track the sample counts of ``stsz``/``stz2``,
  ``stts`` and ``ctts`` (FFmpeg allocates per sample from these), the frame size of
  ``tkhd`` and the visual sample entry in ``stsd``, the durations of ``mvhd``/``mdhd``.
* other containers (``stream_declared``): what FFmpeg read from the header at open (their
  indexes are as large as the bytes that hold them), before any frame table or decode.

``check_declared`` then refuses a video beyond ``DecodeOptions.max_frames`` /
``max_pixels`` / ``max_duration_s`` with a final ``too_large`` error naming the limit and
the declared value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from frameexit.errors import VideoDecodeError
from frameexit.video.containers import MAX_BOXES, ReadAt, mp4_boxes
from frameexit.video.options import DecodeOptions

# Frames a decoder session holds (reference frames and the one being output) besides one
# per extra codec thread: H.264 at 4K/8K levels keeps 4-6 (measured: a 4096x4096 session
# holds ~73 MB between reads, ~3 YUV 4:2:0 frames; 1080p ~14 MB).
DECODER_FRAMES = 6
_UNKNOWN_DURATIONS = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)  # "not known" in mvhd / mdhd
_CONTAINERS = {b"trak", b"mdia", b"minf", b"stbl"}  # boxes whose children are read


@dataclass(frozen=True)
class Declared:
    """The largest sizes a video declares (None: not declared). ``frames``: samples of
    its largest track (what FFmpeg indexes); ``width`` × ``height``: its largest frame;
    ``duration_s``: its longest duration. ``problem``: why the declaration could not be
    read to the end (the walk was refused), else None."""

    frames: int | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    problem: str | None = None

    @property
    def pixels(self) -> int | None:
        if self.width is None or self.height is None:
            return None
        return self.width * self.height


def check_declared(uri: str, declared: Declared, options: DecodeOptions) -> None:
    """Raise ``VideoDecodeError(kind="too_large")`` when ``declared`` is beyond a limit of
    ``options`` (``data.decode.max_frames`` / ``max_pixels`` / ``max_duration_s``)."""
    limit = options.max_frames
    if limit is not None and declared.frames is not None and declared.frames > limit:
        raise VideoDecodeError(
            uri,
            "too_large",
            f"declares {declared.frames} frames, over data.decode.max_frames = {limit}",
        )
    limit = options.max_pixels
    pixels = declared.pixels
    if limit is not None and pixels is not None and pixels > limit:
        raise VideoDecodeError(
            uri,
            "too_large",
            f"declares {declared.width}x{declared.height} frames ({pixels} pixels), over "
            f"data.decode.max_pixels = {limit}",
        )
    seconds = options.max_duration_s
    if seconds is not None and declared.duration_s is not None and declared.duration_s > seconds:
        raise VideoDecodeError(
            uri,
            "too_large",
            f"declares {declared.duration_s:.6g} s, over data.decode.max_duration_s = {seconds:g}",
        )


def check_frame(uri: str, width: int, height: int, options: DecodeOptions) -> None:
    """Raise ``too_large`` for a decoded frame over ``max_pixels`` (a stream whose header
    declared a small size and whose frames are not)."""
    if options.max_pixels is not None and width * height > options.max_pixels:
        raise VideoDecodeError(
            uri,
            "too_large",
            f"decoded a {width}x{height} frame ({width * height} pixels), over "
            f"data.decode.max_pixels = {options.max_pixels}",
        )


def session_bytes(width: int, height: int, threads: int = 1) -> int:
    """Memory one decoder session holds for frames of ``width`` × ``height``: its
    reference frames in YUV 4:2:0 (1.5 bytes a pixel), ``DECODER_FRAMES`` plus one per
    extra decode thread."""
    return width * height * 3 // 2 * (DECODER_FRAMES + max(threads, 1) - 1)


def stream_declared(container: Any, stream: Any) -> Declared:
    """What FFmpeg read from the header of an open ``container`` about its video
    ``stream``: frame count, coded size, duration (stream's, else the container's)."""
    cc = stream.codec_context
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    return Declared(
        frames=int(stream.frames or 0) or None,
        width=int(cc.width or 0) or None,
        height=int(cc.height or 0) or None,
        duration_s=duration,
    )


# ----------------------------------------------------------------------------- MP4


def mp4_declared(read_at: ReadAt, size: int) -> Declared:
    """The sizes the ``moov`` box of an MP4/MOV of ``size`` bytes declares (headers
    only). Nothing declared when there is no ``moov`` or the boxes before it do not fit
    (FFmpeg then fails to open it and the failure is diagnosed as usual); ``problem``
    when the walk met more than ``MAX_BOXES`` boxes before ``moov``."""
    for box in mp4_boxes(read_at, size):
        if box.problem == "too_many":
            return Declared(problem=f"more than {MAX_BOXES} MP4 boxes before 'moov'")
        if box.problem is not None:
            return Declared()
        if box.kind == b"moov":
            return _moov(read_at, box.payload, box.end)
    return Declared()


def _u32(read_at: ReadAt, offset: int) -> int | None:
    data = read_at(offset, 4)
    return struct.unpack(">I", data)[0] if len(data) == 4 else None


def _time(read_at: ReadAt, payload: int, end: int) -> float | None:
    """Duration in seconds of an ``mvhd`` / ``mdhd`` payload (None: unknown)."""
    head = read_at(payload, min(32, end - payload))
    if len(head) < 4:
        return None
    if head[0] == 1:
        if len(head) < 32:
            return None
        scale, duration = struct.unpack_from(">IQ", head, 20)
    else:
        if len(head) < 20:
            return None
        scale, duration = struct.unpack_from(">II", head, 12)
    if not scale or duration in _UNKNOWN_DURATIONS:
        return None
    return duration / scale


def _run_sum(read_at: ReadAt, payload: int, end: int) -> int:
    """The total sample count of an ``stts`` / ``ctts`` payload: the sum of its entries'
    counts (only entries inside the box are read)."""
    count = _u32(read_at, payload + 4) or 0
    count = min(count, max(end - payload - 8, 0) // 8)
    data = read_at(payload + 8, 8 * count)
    table = np.frombuffer(data[: len(data) // 8 * 8], ">u4").reshape(-1, 2)
    return int(table[:, 0].astype(np.int64).sum())


def _moov(read_at: ReadAt, start: int, end: int) -> Declared:
    frames = width = height = 0
    duration = 0.0
    for box in mp4_boxes(read_at, end, start):
        if box.problem is not None:
            break
        if box.kind == b"mvhd":
            duration = max(duration, _time(read_at, box.payload, box.end) or 0.0)
        elif box.kind == b"trak":
            t = _track(read_at, box.payload, box.end)
            frames = max(frames, t.frames or 0)
            width, height = max((width, height), (t.width or 0, t.height or 0), key=_area)
            duration = max(duration, t.duration_s or 0.0)
    return Declared(frames or None, width or None, height or None, duration or None)


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _track(read_at: ReadAt, start: int, end: int) -> Declared:
    """What one ``trak`` declares: its boxes (``tkhd``, ``mdhd``, ``hdlr``, the sample
    table's counts, ``stsd``'s visual entry), found by walking its container boxes."""
    found: dict[bytes, tuple[int, int]] = {}
    stack = [(start, end)]
    while stack:
        a, b = stack.pop()
        for box in mp4_boxes(read_at, b, a):
            if box.problem is not None:
                break
            if box.kind in _CONTAINERS:
                stack.append((box.payload, box.end))
            else:
                found.setdefault(box.kind, (box.payload, box.end))
    frames = 0
    for kind, offset in ((b"stsz", 8), (b"stz2", 8)):
        if kind in found:
            frames = max(frames, _u32(read_at, found[kind][0] + offset) or 0)
    for kind in (b"stts", b"ctts"):
        if kind in found:
            frames = max(frames, _run_sum(read_at, *found[kind]))
    width = height = 0
    if b"hdlr" in found and read_at(found[b"hdlr"][0] + 8, 4) == b"vide":
        width, height = _frame_size(read_at, found)
    duration = _time(read_at, *found[b"mdhd"]) if b"mdhd" in found else None
    return Declared(frames or None, width or None, height or None, duration)


def _frame_size(read_at: ReadAt, found: dict[bytes, tuple[int, int]]) -> tuple[int, int]:
    """The larger of the sizes ``tkhd`` (display, 16.16 fixed point) and the first
    visual sample entry of ``stsd`` (coded) declare."""
    sizes = [(0, 0)]
    if b"tkhd" in found:
        a, b = found[b"tkhd"]
        at = a + (88 if read_at(a, 1) == b"\x01" else 76)
        data = read_at(at, 8)
        if at + 8 <= b and len(data) == 8:
            w, h = struct.unpack(">II", data)
            sizes.append((w >> 16, h >> 16))
    if b"stsd" in found:
        a, b = found[b"stsd"]
        entry = a + 8  # version/flags, entry count; then the first entry (a box)
        data = read_at(entry + 32, 4)
        if entry + 36 <= b and len(data) == 4:
            sizes.append(struct.unpack(">HH", data))
    return max(sizes, key=_area)
