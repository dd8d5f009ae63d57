"""Early-exit inference over a batch of videos: a frame source that decodes lazily, in
policy order, only for the videos still running, and label selection.

::

    requests (uri, [start, end)) ──open (thread pool)──► reader + window + step indices
        failures (missing, corrupt, ...) are recorded per video; the rest run
    FrameExit.early_exit(source, B)
        step t: source(t, active) decodes frame π_t of each active video (thread pool),
                transforms it; a video that fails now is fed a blank and marked failed
        exited videos leave the batch and are never read again (compaction)
    ──► one VideoOutcome per request: exit step, scores, frames decoded, or the error

No Ray here: a Ray Data actor (``pipelines/labeling``) or any other driver calls
:func:`label_videos` on its batches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from frameexit.config import Config
from frameexit.errors import VideoDecodeError
from frameexit.sampling import open_window, read_steps, step_indices, step_input_shape

Opener = Callable[[str], Any]  # uri -> an open frameexit.video.VideoReader


@dataclass
class VideoRequest:
    """One video (or ``[start, end)`` segment, seconds; NaN = whole file) to label."""

    uri: str
    start: float = math.nan
    end: float = math.nan


@dataclass
class VideoOutcome:
    """What early exit gave one request: an answer (``scores``, 1-based ``exit_step``)
    or an ``error``; ``frames_decoded`` counts frames (clip frames for 3D backbones)."""

    uri: str
    num_frames: int | None = None
    frames_decoded: int = 0
    exit_step: int | None = None
    scores: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    error: VideoDecodeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.scores is not None


def as_decode_error(uri: str, error: BaseException) -> VideoDecodeError:
    """Any failure while reading a video as a typed ``VideoDecodeError`` (``unreadable``
    unless it already is one)."""
    if isinstance(error, VideoDecodeError):
        return error
    return VideoDecodeError(uri, "unreadable", f"{type(error).__name__}: {error}")


def reader_opener(cfg: Config) -> Opener:
    """``uri -> VideoReader`` with the run's decode settings (backend, time budget) and
    ``data.storage_options`` for remote URIs."""
    from frameexit.storage import options_for
    from frameexit.video import open_video

    d = cfg.data

    def open_reader(uri: str) -> Any:
        return open_video(
            uri,
            storage_options=options_for(uri, d.storage_options) or None,
            timeout_s=d.decode_timeout_s,
            backend=d.decode_backend,
        )

    return open_reader


@dataclass
class _Video:
    request: VideoRequest
    outcome: VideoOutcome
    reader: Any = None
    indices: list[int] = field(default_factory=list)


class BatchFrameSource:
    """The ``frame_source`` of ``FrameExit.early_exit`` for a batch of videos.

    :meth:`open` opens every video (in ``pool``); ``running`` lists the positions of the
    requests that opened, in order — ``early_exit`` runs over those. A video that fails
    at a later step keeps its place in the batch with a blank input (so the others are not
    disturbed), its outcome records the error and its answer is discarded.
    """

    def __init__(
        self,
        requests: Sequence[VideoRequest],
        cfg: Config,
        *,
        open_reader: Opener,
        pool: Executor,
    ) -> None:
        from frameexit.backbones import backbone_spec
        from frameexit.policy import get_policy

        m = cfg.model
        self.cfg = cfg
        self.pool = pool
        self.open_reader = open_reader
        self.policy = get_policy(m.policy)
        spec = backbone_spec(m.backbone)
        self.mean, self.std = spec.mean, spec.std
        self.blank = torch.zeros(step_input_shape(m.image_size, m.clip_length))
        self.videos = [_Video(r, VideoOutcome(r.uri)) for r in requests]
        self.running: list[int] = []

    def open(self) -> None:
        """Open every video and plan its T step indices (failures become outcomes)."""
        list(self.pool.map(self._open, self.videos))
        self.running = [i for i, v in enumerate(self.videos) if v.outcome.error is None]

    def _open(self, v: _Video) -> None:
        try:
            v.reader = self.open_reader(v.request.uri)
            window = open_window(v.reader, v.request.uri, v.request.start, v.request.end)
            v.outcome.num_frames = window.num_frames
            v.indices = step_indices(window, self.policy, self.cfg.model.num_steps)
        except Exception as error:  # noqa: BLE001 - every failure becomes this video's outcome
            self._fail(v, error)

    def _frame(self, v: _Video, step: int) -> torch.Tensor:
        from frameexit.transforms import frames_to_tensor

        if v.outcome.error is not None:
            return self.blank
        m = self.cfg.model
        try:
            raw = read_steps(v.reader, [v.indices[step]], m.clip_length)
            v.outcome.frames_decoded += m.clip_length
            return frames_to_tensor(raw, image_size=m.image_size, mean=self.mean, std=self.std)
        except Exception as error:  # noqa: BLE001 - a failure at step t > 1 is this video's
            self._fail(v, error)
            return self.blank

    def _fail(self, v: _Video, error: BaseException) -> None:
        v.outcome.error = as_decode_error(v.request.uri, error)
        self._close(v)

    def __call__(self, step: int, active: torch.Tensor) -> torch.Tensor:
        """Step ``step``'s inputs of the running videos at positions ``active``."""
        chosen = [self.videos[self.running[i]] for i in active.tolist()]
        return torch.cat(list(self.pool.map(lambda v: self._frame(v, step), chosen)))

    @staticmethod
    def _close(v: _Video) -> None:
        if v.reader is not None:
            with contextlib.suppress(Exception):  # closing a broken reader must not fail
                v.reader.close()
            v.reader = None

    def close(self) -> None:
        """Release every reader (idempotent)."""
        for v in self.videos:
            self._close(v)


def label_videos(
    model: Any,
    requests: Sequence[VideoRequest],
    cfg: Config,
    *,
    pool: Executor,
    open_reader: Opener | None = None,
    threshold: float | None = None,
    exit: bool = True,
) -> list[VideoOutcome]:
    """Batched early exit over ``requests``: one :class:`VideoOutcome` per request, in
    order. ``exit=False`` runs every video for all T steps."""
    source = BatchFrameSource(
        requests, cfg, open_reader=open_reader or reader_opener(cfg), pool=pool
    )
    try:
        source.open()
        if source.running:
            result = model.early_exit(
                source,
                len(source.running),
                threshold=cfg.model.exit_threshold if threshold is None else threshold,
                exit=exit,
            )
            scores, logits = result.scores.float().cpu(), result.logits.float().cpu()
            for i, position in enumerate(source.running):
                outcome = source.videos[position].outcome
                if outcome.error is None:
                    outcome.exit_step = int(result.exit_step[i])
                    outcome.scores, outcome.logits = scores[i], logits[i]
    finally:
        source.close()
    return [v.outcome for v in source.videos]


def select_labels(
    scores: Any, *, multi_label: bool, top_k: int, threshold: float
) -> tuple[list[int], list[float]]:
    """Label ids and scores, best first: top-k (single-label) or all ≥ threshold (multi)."""
    values = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-values, kind="stable")
    if multi_label:
        order = order[values[order] >= threshold]
    else:
        order = order[: min(top_k, len(order))]
    return [int(i) for i in order], [float(values[i]) for i in order]
