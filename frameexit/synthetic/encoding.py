"""H.264 encoding: frames to a deterministic, streamable MP4."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

__all__ = ["encode_mp4"]

# x264's AVX-512 kernels read uninitialised memory on small frames: with them, encoding
# the same frames twice can give different bitstreams (seen with the x264 in PyAV's
# wheels on AMD EPYC). Up to AVX2 the output is reproducible (and identical from SSE4.2
# to AVX2), so on CPUs with AVX-512 we hand x264 the AVX2 feature set explicitly. Every
# CPU with AVX-512F also has all of these.
_X264_AVX2_CPU = "MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,LZCNT,AVX,FMA3,BMI1,BMI2,AVX2"


@lru_cache(maxsize=1)
def _x264_params() -> str:
    """Extra ``x264-params`` that keep encoding deterministic on this CPU ('' if none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return f"asm={_X264_AVX2_CPU}" if "avx512f" in line.split() else ""
    except OSError:
        pass
    return ""


def encode_mp4(
    frames: np.ndarray,
    path: str,
    *,
    fps: float,
    keyframe_interval: int,
    crf: int = 20,
    preset: str = "medium",
) -> None:
    """Encode uint8 RGB ``[n, H, W, 3]`` as H.264 (libx264, yuv420p) MP4 at a local path.

    GOP = ``keyframe_interval`` frames (x264 may add a keyframe at a scene cut, never
    fewer), B-frames as the preset decides, one encoder thread and no AVX-512 kernels
    (deterministic output), ``+faststart`` so the index comes first (cheap range reads
    from object stores). RGB → YUV is swscale's BT.601 limited range, which is what
    decoders assume for untagged SD video.
    """
    import av

    n, h, w, _ = frames.shape
    container = av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"})
    try:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = int(keyframe_interval)
        options = {"crf": str(crf), "preset": preset, "threads": "1"}
        if _x264_params():
            options["x264-params"] = _x264_params()
        stream.options = options
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
