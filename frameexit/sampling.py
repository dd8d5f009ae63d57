"""From a video (or a ``[start, end)`` segment of it) to what each step feeds the backbone.

One place for the arithmetic that training ingestion, feature caching, labeling and
FLOPs counting all need::

    container: N frames at fps ──segment [start, end) s──► FrameWindow(first, num_frames)
        window.num_frames ──policy π(n, T)──► offsets ──+ first──► step_indices [T]
        reader.get(indices)  or  reader.get_clips(indices, k)        (raw uint8 frames)
        one step's input: [B, 3, S, S] (2D backbone)  or  [B, 3, k, S, S] (k-frame clips)

Segment bounds are seconds (NaN / None = the file's own start or end); the first frame is
``floor(start · fps)`` and the window ends at ``ceil(end · fps)``, clamped so that it
always holds at least one frame of the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from frameexit.errors import VideoDecodeError


@dataclass(frozen=True)
class FrameWindow:
    """The frames of a video that a row uses: ``first`` and ``num_frames`` of the file;
    ``warning`` says what was odd (a header declaring more frames than the file holds)."""

    first: int
    num_frames: int
    warning: str | None = None

    def indices(self, offsets: Sequence[int]) -> list[int]:
        """File frame indices of window-relative ``offsets``."""
        return [self.first + int(i) for i in offsets]


def _bound(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def segment_window(
    num_frames: int, fps: float, start: float | None = None, end: float | None = None
) -> FrameWindow:
    """The window of frames ``[start, end)`` seconds select in a file of ``num_frames``
    frames at ``fps`` (NaN/None bounds: the whole file on that side). Raises ``ValueError``
    for a file without frames."""
    n = int(num_frames)
    if n < 1:
        raise ValueError(f"a video without frames has no window (num_frames={num_frames})")
    start, end = _bound(start), _bound(end)
    if start is None and end is None:
        return FrameWindow(0, n)
    fps = float(fps)
    first = min(n - 1, max(0, int(start * fps))) if start is not None else 0
    last = min(n, max(first + 1, int(math.ceil(end * fps)))) if end is not None else n
    return FrameWindow(first, last - first)


def step_indices(
    window: FrameWindow, policy: Any, num_steps: int, *, seed: int | None = None
) -> list[int]:
    """The T file frame indices the policy visits in ``window`` (step order); a random
    policy draws them from ``seed`` (``frameexit.policy.video_seed``)."""
    from frameexit.policy import takes_seed

    if seed is not None and takes_seed(policy):
        return window.indices(policy(window.num_frames, num_steps, seed=seed))
    return window.indices(policy(window.num_frames, num_steps))


def open_window(
    reader: Any,
    uri: str,
    start: float | None = None,
    end: float | None = None,
    *,
    known_frames: int | None = None,
) -> FrameWindow:
    """The window of an open ``VideoReader`` for ``[start, end)`` over the frames the
    file really holds: a header that overstates the length (common in real downloads)
    gives a window over the decodable frames and a ``warning``, not an error. A container
    without frames is a ``VideoDecodeError`` of kind ``empty``; one whose frames are all
    missing, ``truncated``. ``known_frames`` (a checked manifest's ``num_frames``) caps
    the frames used when it is smaller."""
    table = int(reader.num_frames)
    if table < 1:
        raise VideoDecodeError(uri, "empty", "the container holds no frames")
    present = int(getattr(reader, "decodable_frames", table))
    if known_frames is not None and 0 < int(known_frames) < present:
        present = int(known_frames)
    declared = max(table, int(getattr(reader, "declared_frames", 0) or 0))
    if present < 1:
        raise VideoDecodeError(uri, "truncated", f"declares {declared} frames, none is present")
    window = segment_window(present, float(reader.fps or 0.0), start, end)
    if present < declared:
        note = f"the header declares {declared} frames, {present} are present: labeled from those"
        return FrameWindow(window.first, window.num_frames, note)
    return window


def read_steps(reader: Any, indices: Sequence[int], clip_length: int) -> np.ndarray:
    """Raw frames of the given steps: uint8 ``[n, H, W, 3]``, or clips ``[n, k, H, W, 3]``
    around each index when ``clip_length`` k > 1 (a 3D backbone's "frame")."""
    if clip_length > 1:
        return np.asarray(reader.get_clips(list(indices), clip_length))
    return np.asarray(reader.get(list(indices)))


def step_input_shape(image_size: int, clip_length: int, batch: int = 1) -> tuple[int, ...]:
    """Shape of one step's backbone input for ``batch`` videos: ``[B, 3, S, S]`` or, for
    clips of k > 1 frames, ``[B, 3, k, S, S]``."""
    s = int(image_size)
    if clip_length > 1:
        return (batch, 3, int(clip_length), s, s)
    return (batch, 3, s, s)


def video_input_shape(image_size: int, clip_length: int, num_steps: int) -> tuple[int, ...]:
    """Shape of one video's input over all T steps: ``[T, 3, S, S]`` or ``[T, 3, k, S, S]``."""
    return step_input_shape(image_size, clip_length, batch=num_steps)
