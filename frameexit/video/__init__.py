"""Decode frames at chosen indices from any fsspec URI, exactly, with typed errors.

    from frameexit.video import open_video, read_frames
    frames = read_frames("s3://bucket/v.mp4", [150, 0, 299])   # uint8 [3, H, W, 3]
    with open_video(uri) as video:                              # early exit: step by step
        video.plan(steps)                                       # all T steps' indices
        first = video.get([steps[0]])

See ``frameexit.video.reader`` for what is fetched when, exactness and the time bound.
Errors are ``VideoDecodeError`` (``frameexit.video.VideoDecodeError``, the same class as
``frameexit.errors.VideoDecodeError``); ``classify_failure`` makes one of any exception
raised while reading a video.
"""

# PyAV must be loaded before decord: decord loads its own FFmpeg (with libvpx inside)
# into the global symbol scope, and PyAV loaded after it fails to open libvpx encoders.
import av  # noqa: F401, I001

from frameexit.errors import VideoDecodeError
from frameexit.video.errors import classify_failure
from frameexit.video.reader import (
    BACKENDS,
    DEFAULT_RANGE_MIN_BYTES,
    DEFAULT_TIMEOUT_S,
    FETCH_MODES,
    DecodeOptions,
    VideoReader,
    clip_indices,
    open_video,
    read_frames,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_RANGE_MIN_BYTES",
    "DEFAULT_TIMEOUT_S",
    "FETCH_MODES",
    "DecodeOptions",
    "VideoDecodeError",
    "VideoReader",
    "classify_failure",
    "clip_indices",
    "open_video",
    "read_frames",
]
