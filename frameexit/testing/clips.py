"""Small encoded clips for tests and benchmarks, written with PyAV (no ffmpeg binary).

Every frame is different (moving gradients and square, and the frame number as a bar
code in the top rows), so a wrong frame never looks like the right one.
``CLIP_SPECS`` lists the encodings the exactness tests run on, including the ones where
decord's random access is wrong (open GOPs, AVI, MPEG-TS, WebM without cues).
"""

from __future__ import annotations

import fractions
from collections.abc import Mapping
from typing import Any

import av
import numpy as np

F = fractions.Fraction


def frame_pattern(i: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 ``[height, width, 3]`` frame ``i``: unique per index, smooth enough to
    survive lossy coding."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(width - 1, 1) + i * 7) % 256
    img[..., 1] = (y * 255 // max(height - 1, 1) + i * 13) % 256
    img[..., 2] = ((x + y + i * 5) * 3) % 256
    bar = max(width // 8, 1)
    for b in range(8):
        img[: max(height // 6, 2), b * bar : (b + 1) * bar, :] = 255 if (i >> b) & 1 else 0
    side = max(min(width, height) // 5, 2)
    cx, cy = (i * 3) % max(width - side, 1), (i * 2) % max(height - side, 1)
    img[cy : cy + side, cx : cx + side] = (255, 0, 255)
    return img


def write_clip(
    path: str,
    *,
    codec: str = "libx264",
    num_frames: int = 48,
    width: int = 64,
    height: int = 48,
    fps: fractions.Fraction | int = 25,
    pix_fmt: str = "yuv420p",
    options: Mapping[str, str] | None = None,
    container_options: Mapping[str, str] | None = None,
    format: str | None = None,
    gop: int | None = None,
    bframes: int | None = None,
    time_base: fractions.Fraction | None = None,
    start_pts: int = 0,
    vfr: bool = False,
    seed: int = 0,
) -> str:
    """Encode ``num_frames`` pattern frames to ``path`` and return it. ``start_pts`` (in
    ``time_base``) shifts the first timestamp; ``vfr`` makes frame durations vary
    (1-3 frame periods, deterministic from ``seed``)."""
    rate = F(fps)
    out = av.open(path, "w", format=format, options=dict(container_options or {}))
    try:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = dict(options)
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        tb = stream.codec_context.time_base or 1 / rate
        step = max(int(round(1 / (rate * tb))), 1)
        rng = np.random.default_rng(seed)
        pts = start_pts
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
            if vfr or start_pts:
                frame.pts, frame.time_base = pts, tb
                pts += step * (int(rng.choice([1, 1, 2, 3])) if vfr else 1)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    finally:
        out.close()
    return path


def decode_all(path: str) -> np.ndarray:
    """Reference: a plain sequential PyAV decode of the first video stream, RGB uint8."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


_X264 = {"preset": "veryfast"}

# name -> write_clip kwargs. ``decord_exact``: whether decord's own random access returns
# the right frames on it (measured; the tests keep checking it).
CLIP_SPECS: dict[str, dict[str, Any]] = {
    "h264_bframes.mp4": dict(options={**_X264, "bf": "3", "g": "25"}, decord_exact=True),
    "h264_faststart.mp4": dict(
        options={**_X264, "bf": "3", "g": "25"},
        container_options={"movflags": "faststart"},
        decord_exact=True,
    ),
    "h264_29.97fps.mp4": dict(
        fps=F(30000, 1001), options={**_X264, "bf": "2", "g": "45"}, decord_exact=True
    ),
    "h264_12.5fps.mkv": dict(
        fps=F(25, 2), options={**_X264, "bf": "2", "g": "20"}, decord_exact=True
    ),
    "h264_97x61_yuv444.mp4": dict(
        width=97,
        height=61,
        pix_fmt="yuv444p",
        options={**_X264, "bf": "2", "g": "20"},
        decord_exact=True,
    ),
    "h264_start2s_vfr.mp4": dict(
        options={**_X264, "bf": "2", "g": "12"},
        time_base=F(1, 12800),
        start_pts=25600,
        vfr=True,
        decord_exact=True,
    ),
    "h264_opengop.mp4": dict(
        options={
            "x264-params": "open-gop=1:bframes=3:b-adapt=0:b-pyramid=none:keyint=12:"
            "min-keyint=12:scenecut=0"
        },
        decord_exact=False,
    ),
    "hevc_opengop.mp4": dict(
        codec="libx265",
        options={"x265-params": "bframes=3:keyint=12:log-level=error"},
        decord_exact=False,
    ),
    "mpeg4_bframes.avi": dict(codec="mpeg4", bframes=2, gop=12, decord_exact=False),
    "mpeg4_97x61.avi": dict(
        codec="mpeg4", width=97, height=61, bframes=2, gop=12, decord_exact=False
    ),
    "h264_bframes.avi": dict(options={**_X264, "bf": "2", "g": "12"}, decord_exact=False),
    "mpeg2_bframes.ts": dict(codec="mpeg2video", bframes=2, gop=12, decord_exact=False),
    "vp9.webm": dict(
        codec="libvpx-vp9",
        options={"g": "12", "deadline": "realtime", "cpu-used": "8"},
        decord_exact=True,
    ),
    "vp8_live_nocues.webm": dict(
        codec="libvpx",
        options={"g": "12"},
        container_options={"live": "1"},
        decord_exact=False,
    ),
}


def write_spec_clip(directory: str, name: str) -> str:
    """Write ``CLIP_SPECS[name]`` into ``directory``; returns the path."""
    kwargs = {k: v for k, v in CLIP_SPECS[name].items() if k != "decord_exact"}
    return write_clip(f"{directory}/{name}", **kwargs)
