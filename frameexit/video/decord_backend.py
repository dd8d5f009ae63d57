"""decord (``backend="decord"``, blind), and the rule for when its random access is exact.

``backend="auto"`` no longer opens decord: the PyAV decoder that has to scan the file to
check this rule anyway decodes at least as fast as decord's random access once its seeks
land on the right keyframe (``reader`` module doc has the measurements), so a second
open would only add cost. The rule stays as the record of where decord can be trusted.

What we measured (decord 0.6.0, clips made with PyAV; ``tests/test_frameexit_video.py``
keeps these cases): decord's frame index is the packet list sorted by pts, and its
keyframe list is in *decode* order. ``SeekAccurate`` seeks to a keyframe, decodes one
frame, looks its pts up, then skips forward *counting* frames. Random access is wrong when

* a GOP is open — frames after a keyframe in decode order are displayed before it
  (MPEG-4 Part 2 and MPEG-2 with B-frames, x264 ``open-gop``, x265's default): after the
  seek those leading frames are dropped or the count starts at the wrong frame, so the
  result is off by a few frames (MP4 and MKV alike);
* the container is AVI: packets carry no real pts, decord's table is garbage
  (``get_frame_timestamp`` starts at -3.7e17) and frames come back a whole GOP off, even
  for H.264 without B-frames;
* the container is MPEG-TS: even a sequential ``get_batch(range(n))`` is off by ~a GOP;
* (dmlc/decord#91) a WebM/MKV without a seek index (live-muxed): decord refuses to open.

It was right on every closed-GOP H.264/HEVC/VP8/VP9/MJPEG file in MP4/MOV or MKV/WebM,
including B-frames, B-pyramids, VFR, non-zero start pts, odd frame rates (29.97, 12.5),
odd sizes and moov-at-end files. ``trust_decord`` encodes exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TRUSTED_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")


def trust_decord(probe: Any) -> str | None:
    """None if decord's random access is exact for this file (per the rule above), else
    the reason it is not. ``probe`` is a scanned ``PyAVDecoder``."""
    if probe.format_name not in TRUSTED_FORMATS:
        return f"container {probe.format_name!r}: decord seeks are wrong outside MP4/MKV"
    if probe.mode != "scan" or probe.ordinal:
        return "packets without unique timestamps"
    if probe.truncated:
        return "truncated file (decord would silently report fewer frames)"
    if not probe.has_seek_index:
        return "no seek index in the container"
    open_gops = probe.open_gop_keys
    if open_gops:
        return f"open GOP at packet(s) {open_gops[:5]}: decord would return neighbouring frames"
    return None


class DecordDecoder:
    """Thin wrapper over ``decord.VideoReader`` returning numpy arrays."""

    def __init__(self, src: Any, *, threads: int = 1) -> None:
        import decord

        self._vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=threads)
        self.num_frames: int = len(self._vr)
        self.fps: float = float(self._vr.get_avg_fps())

    def get(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """Decode unique sorted indices (fewest backward seeks); returns index -> RGB."""
        uniq = sorted(set(int(i) for i in indices))
        batch = self._vr.get_batch(uniq)
        arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        # decord's decoder thread goes on decoding the packets it was fed past the frame
        # asked for; with several readers read in turn (one frame per video per step) that
        # wasted work made interleaved reads 3-5x slower. seek(0) clears its queue (no
        # decoding) and the next get seeks to its keyframe anyway.
        self._vr.seek(0)
        return {i: arr[k] for k, i in enumerate(uniq)}

    def close(self) -> None:
        self._vr = None
