"""What a container is, from its bytes and from FFmpeg's name for it: one home for every
container check.

* ``sniff``: which container the first bytes announce (MP4/MOV, AVI, Matroska/WebM,
  MPEG-TS), or None: not a video container at all.
* ``mp4_boxes``: the walk over a run of MP4 boxes (32-bit size, 64-bit ``largesize``,
  size 0 = "to the end"), stopping at the first box that does not fit or after
  ``MAX_BOXES`` boxes (a file of 8-byte boxes must not keep a walk busy for minutes); the
  top-level walk
  (``find_moov``, the open-failure diagnosis) and the walk inside ``moov``
  (``mp4_index``) are this one walk.
* ``riff_declared_size`` / ``riff_complete``: the size an AVI's RIFF header declares,
  i.e. whether the file was cut.
* ``structural_damage``: what the container's own framing says is wrong with a file
  that a demuxer refused (``truncated`` or ``unreadable``, and why).
* ``is_not_video``: demuxers and codecs that accept almost anything (text as ANSI art,
  single images) although the file is no video.

Bytes come through ``read_at(offset, n)`` (fewer at the end of the file), so a ranged
source fetches only the headers these checks look at.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

ReadAt = Callable[[int, int], bytes]

# FFmpeg's name for the MP4/MOV demuxer.
MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
# Containers that store presentation timestamps. Elsewhere (AVI, raw streams) packet
# "pts" may be decode-order labels.
PTS_FORMATS = (MP4_FORMAT, "matroska,webm")
# An AVI index entry points at the chunk header; the packet's payload follows it.
AVI_CHUNK_HEADER = 8

# Box types that stand at the top level of an MP4/MOV file (the first one names it).
MP4_TOP_LEVEL = frozenset(
    {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid", b"styp"}
)
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska/WebM
_TS_SYNC, _TS_PACKET = b"\x47", 188

# What ``sniff`` says -> the name used in messages.
CONTAINER_NAMES = {"mp4": "MP4", "avi": "AVI", "matroska": "Matroska/WebM", "mpegts": "MPEG-TS"}

# Demuxers that accept almost anything (text as ANSI art, single images): not videos.
_NOT_VIDEO_FORMATS = {"tty", "bin", "xbin", "adf", "idf", "image2", "lavfi"}
_NOT_VIDEO_CODECS = {"ansi", "bintext", "xbin", "idf"}

# Boxes one walk looks at, at most (~1 s of walking). Real files have a handful at the
# top level, ``moov`` among the first few (a fragmented MP4 has it before its two boxes
# per fragment); a walk that reaches the bound stops with ``problem="too_many"``.
MAX_BOXES = 200_000


def sniff(read_at: ReadAt) -> str | None:
    """The container the magic bytes announce: ``mp4``, ``avi``, ``matroska``, ``mpegts``,
    or None (not a video container)."""
    head = read_at(0, 16)
    if len(head) >= 8 and head[4:8] in MP4_TOP_LEVEL:
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if head[:4] == _EBML:
        return "matroska"
    if head[:1] == _TS_SYNC and read_at(_TS_PACKET, 1) == _TS_SYNC:
        return "mpegts"
    return None


def is_not_video(format_name: str, codec_name: str) -> bool:
    """True for what FFmpeg opens as a "video" although it is none: text as ANSI art,
    binary dumps, single images (``png_pipe``, ...)."""
    return (
        format_name in _NOT_VIDEO_FORMATS
        or format_name.endswith("_pipe")
        or codec_name in _NOT_VIDEO_CODECS
    )


# ----------------------------------------------------------------------------- MP4 boxes


@dataclass(frozen=True)
class Box:
    """One MP4 box: ``kind`` (4 bytes), where it starts, where its payload starts (after
    the 8- or 16-byte header) and where it ends (as declared). ``problem`` is set on the
    last item of a walk that stopped early: ``cut`` (the header runs past the end),
    ``corrupt`` (a size smaller than the header) or ``overrun`` (the declared size runs
    past the end; ``end`` is then where it would end) or ``too_many`` (``MAX_BOXES``
    boxes walked: the walk stops before this one)."""

    kind: bytes
    start: int
    payload: int
    end: int
    problem: str | None = None

    @property
    def size(self) -> int:
        return self.end - self.start


def mp4_boxes(
    read_at: ReadAt, end: int, start: int = 0, max_boxes: int = MAX_BOXES
) -> Iterator[Box]:
    """The boxes from ``start`` to ``end``, in order. Every header is read as it is
    reached (a walk that stops early reads nothing further); a box that does not fit
    is yielded with its ``problem`` and ends the walk, and so is a box past
    ``max_boxes`` (``too_many``)."""
    offset, seen = start, 0
    while offset < end:
        if seen >= max_boxes:
            yield Box(b"", offset, offset, end, "too_many")
            return
        seen += 1
        head = read_at(offset, min(16, end - offset))
        if len(head) < 8:
            yield Box(b"", offset, offset, end, "cut")
            return
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1:
            if len(head) < 16:  # a 64-bit size that is not there
                yield Box(kind, offset, offset, end, "corrupt")
                return
            size, header = struct.unpack_from(">Q", head, 8)[0], 16
        elif size == 0:  # the last box: it runs to the end
            size = end - offset
        if size < header:
            yield Box(kind, offset, offset + header, offset + size, "corrupt")
            return
        if offset + size > end:
            yield Box(kind, offset, offset + header, offset + size, "overrun")
            return
        yield Box(kind, offset, offset + header, offset + size)
        offset += size


def mp4_damage(read_at: ReadAt, size: int) -> tuple[str, str] | None:
    """``(kind, reason)`` when the top-level boxes of an MP4 of ``size`` bytes show damage:
    ``truncated`` when a box runs past the end of the file or the ``moov`` index is
    missing (a recording never finalised), ``unreadable`` for a corrupt box size; None
    when every box fits and ``moov`` is there."""
    seen = set()
    for box in mp4_boxes(read_at, size):
        if box.problem == "cut":
            return "truncated", f"MP4 box header cut at byte {box.start}"
        if box.problem == "corrupt":
            return "unreadable", f"corrupt MP4 box at byte {box.start}"
        if box.problem == "too_many":
            return "unreadable", f"more than {MAX_BOXES} MP4 boxes at the top level"
        if box.problem == "overrun":
            return "truncated", (
                f"MP4 box {box.kind.decode('latin-1')!r} at byte {box.start} declares "
                f"{box.size} bytes but the file ends at {size}"
            )
        seen.add(box.kind)
    if b"moov" not in seen:
        return "truncated", "MP4 without a 'moov' box (recording never finalised)"
    return None


# ----------------------------------------------------------------------------- RIFF (AVI)


def riff_declared_size(head: bytes) -> int | None:
    """The file size a RIFF header (the first 12 bytes) declares, or None if ``head`` is
    not one."""
    if len(head) < 12 or head[:4] != b"RIFF":
        return None
    return int.from_bytes(head[4:8], "little") + 8


def riff_complete(read_at: ReadAt, size: int) -> bool:
    """True if the file is RIFF and the size its header declares fits in its ``size``
    bytes (an AVI that was not cut)."""
    declared = riff_declared_size(read_at(0, 12))
    return declared is not None and declared <= size


def structural_damage(read_at: ReadAt, size: int, container: str) -> tuple[str, str] | None:
    """``(kind, reason)`` when the framing of ``container`` (what ``sniff`` said) shows
    that a file is cut or corrupt; None when it looks sound or cannot say (Matroska and
    MPEG-TS are not checked)."""
    if container == "mp4":
        return mp4_damage(read_at, size)
    if container == "avi":
        declared = riff_declared_size(read_at(0, 12))
        if declared is not None and declared > size:
            return "truncated", f"AVI declares {declared} bytes but the file has {size}"
    return None
