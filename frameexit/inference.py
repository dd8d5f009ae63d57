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

The device path (:func:`device_plan`, from ``label.*``): on a GPU the model runs in bf16
autocast with channels_last, frames go through pinned memory with non-blocking copies,
and while step t computes, the decode threads already decode step t+1's frames of the
videos still running and copy them to the device on a side stream; what a video that
exits at t was given for t+1 is dropped (counted, never reported as its error). On CPU
none of this is on by default (decode and compute share the cores), and each part can be
switched on for tests.

Memory: each video's frames are brought to the model's input size as soon as they are
decoded (:func:`model_input_frame`, through ``VideoReader.transform_frames``), so the
planned frames a reader keeps for later steps are small whatever the source's resolution;
:func:`labeling_memory_bytes` is what an actor needs on that basis.

No Ray here: a Ray Data actor (``pipelines/labeling``) or any other driver calls
:func:`label_videos` on its batches.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from frameexit.config import Config
from frameexit.errors import VideoDecodeError
from frameexit.policy import video_seed
from frameexit.sampling import open_window, read_steps, step_indices, step_input_shape
from frameexit.transforms import resize_size

Opener = Callable[[str], Any]  # uri -> an open frameexit.video.VideoReader


@dataclass(frozen=True)
class DevicePlan:
    """How a labeling model runs on its device (see the module docstring)."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None  # None: full precision
    channels_last: bool = False
    pin_memory: bool = False  # page-locked host frames, non-blocking copies (CUDA only)
    prefetch_next_step: bool = False

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of the model's forward passes (a no-op at fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def device_plan(cfg: Config, device: str | torch.device = "cpu") -> DevicePlan:
    """The :class:`DevicePlan` of ``label.precision``, ``label.channels_last`` and
    ``label.prefetch_next_step`` on ``device`` (``auto``/None: on for CUDA, off for CPU)."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    label = cfg.label
    if label.precision == "bf16" or (label.precision == "auto" and gpu):
        dtype: torch.dtype | None = torch.bfloat16
    else:
        dtype = None
    return DevicePlan(
        device=device,
        autocast_dtype=dtype,
        channels_last=gpu if label.channels_last is None else bool(label.channels_last),
        pin_memory=gpu,
        prefetch_next_step=gpu if label.prefetch_next_step is None else label.prefetch_next_step,
    )


def prepare_model(model: torch.nn.Module, plan: DevicePlan) -> torch.nn.Module:
    """``model`` on the plan's device, in eval mode, in channels_last when planned (the
    3D memory format for 3D backbones: their conv weights are 5-D)."""
    model = model.to(plan.device).eval()
    if plan.channels_last:
        three_d = any(p.dim() == 5 for p in model.parameters())
        model = model.to(memory_format=torch.channels_last_3d if three_d else torch.channels_last)
    return model


def _memory_format(frames: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if frames.dim() == 5 else torch.channels_last


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
    warning: str | None = None  # something odd about the file that did not stop it
    step_scores: torch.Tensor | None = None  # [T] exit score per step (record_steps)
    step_logits: torch.Tensor | None = None  # [T, K] f_t's logits per step (record_steps)

    @property
    def ok(self) -> bool:
        return self.error is None and self.scores is not None


def as_decode_error(uri: str, error: BaseException) -> VideoDecodeError:
    """Any failure while reading a video as a typed ``VideoDecodeError`` (``unreadable``
    unless it already is one): ``frameexit.video.errors.classify_failure``."""
    from frameexit.video.errors import classify_failure

    return classify_failure(uri, error)


def model_input_frame(frame: np.ndarray, image_size: int) -> np.ndarray:
    """A decoded uint8 ``[H, W, 3]`` frame reduced to what the eval transform
    (``frames_to_tensor``, centre view) uses of it: resized exactly as it resizes (shorter
    side to ``resize_size(image_size)``, antialiased bilinear on uint8), then the centred
    square of that side. ``frames_to_tensor`` of the result equals ``frames_to_tensor`` of
    the full frame, bit for bit, and it holds ``resize_size(image_size)² · 3`` bytes
    (196 KB at 224) whatever the source's resolution."""
    import torch.nn.functional as F

    height, width = frame.shape[:2]
    short = resize_size(image_size)
    if height <= width:
        new_h, new_w = short, max(short, int(round(width * short / height)))
    else:
        new_h, new_w = max(short, int(round(height * short / width))), short
    x = torch.from_numpy(np.ascontiguousarray(frame)).unsqueeze(0).permute(0, 3, 1, 2)
    if (new_h, new_w) != (height, width):
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    # the crop frames_to_tensor takes of (new_h, new_w) starts at (new - S) // 2; of the
    # short×short square at (short - S) // 2: cut the square where the two agree
    top = (new_h - image_size) // 2 - (short - image_size) // 2
    left = (new_w - image_size) // 2 - (short - image_size) // 2
    x = x[:, :, top : top + short, left : left + short]
    return np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())


def labeling_memory_bytes(
    *,
    weights_bytes: int,
    videos_in_flight: int,
    decode_threads: int,
    decode: Any,
    image_size: int,
    clip_length: int,
    num_steps: int,
) -> int:
    """Bytes a labeling actor needs, counted from what it holds with frames kept at the
    model's input size (:func:`model_input_frame`) and the decode limits of ``decode``
    (``data.decode``, a ``DecodeOptions``):

    * a 512 MiB interpreter/library base and the model twice (weights, working copy);
    * per video in flight (``batch_size`` × batches in flight): its planned frames at
      model-input size (``num_steps × clip_length`` uint8 squares of
      ``resize_size(image_size)``) and the decoder sessions it may keep between reads,
      at most ``decode.idle_decoder_bytes`` (larger ones are closed after each read);
    * per decode thread, a frame of the largest size allowed (``decode.max_pixels``;
      8K when unlimited) being decoded: one session's reference frames
      (``limits.session_bytes``), its RGB conversion and the resize's scratch (3 B/pixel
      each);
    * the step inputs as float32 tensors, four times over (input, pinned/device copy,
      activations).
    """
    from frameexit.video.limits import session_bytes
    from frameexit.video.options import DEFAULT_MAX_PIXELS
    from frameexit.video.pyav_backend import MAX_SESSIONS

    short = resize_size(image_size)
    kept = num_steps * clip_length * short * short * 3
    pixels = decode.max_pixels or DEFAULT_MAX_PIXELS
    largest_session = session_bytes(pixels, 1, decode.threads)
    idle = decode.idle_decoder_bytes
    held = MAX_SESSIONS * largest_session
    held = held if idle is None else min(idle, held)
    per_thread = largest_session + 6 * pixels
    inputs = 4 * videos_in_flight * 3 * clip_length * image_size * image_size * 4
    return int(
        512 * 1024**2
        + 2 * weights_bytes
        + videos_in_flight * (kept + held)
        + decode_threads * per_thread
        + inputs
    )


def _reader_of(cfg: Config) -> Opener:
    """``uri -> VideoReader`` with the run's ``data.decode`` options and credentials."""
    from frameexit.video import open_video

    return lambda uri: open_video(uri, cfg.data.decode, storage_options=cfg.data.storage_options)


@dataclass(eq=False)
class _Video:
    request: VideoRequest
    outcome: VideoOutcome
    reader: Any = None
    indices: list[int] = field(default_factory=list)
    ahead: Any = None  # (step, Future of _Decoded) decoded ahead of its step
    lock: threading.Lock = field(default_factory=threading.Lock)  # one decode at a time


@dataclass
class _Decoded:
    """One video's inputs for one step, decoded (and, planned, on the device already)."""

    frames: torch.Tensor | None = None
    error: BaseException | None = None
    ready: Any = None  # CUDA event: the side-stream copy is done


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
        pool: Executor,
        open_reader: Opener | None = None,
        plan: DevicePlan | None = None,
    ) -> None:
        from frameexit.backbones import backbone_spec
        from frameexit.policy import get_policy

        m = cfg.model
        self.cfg = cfg
        self.pool = pool
        # default: frameexit.video.open_video with the run's data.decode and credentials
        self.open_reader = open_reader or _reader_of(cfg)
        self.policy = get_policy(m.policy)
        spec = backbone_spec(m.backbone)
        self.mean, self.std = spec.mean, spec.std
        self.blank = torch.zeros(step_input_shape(m.image_size, m.clip_length))
        self.videos = [_Video(r, VideoOutcome(r.uri)) for r in requests]
        self.running: list[int] = []
        self.plan = plan or DevicePlan(torch.device("cpu"))
        self.frames_ahead_unused = 0  # decoded ahead for a step the video never reached
        self._streams = threading.local()

    def open(self) -> None:
        """Open every video and plan its T step indices (failures become outcomes)."""
        list(self.pool.map(self._open, self.videos))
        self.running = [i for i, v in enumerate(self.videos) if v.outcome.error is None]

    def _open(self, v: _Video) -> None:
        try:
            v.reader = self.open_reader(v.request.uri)
            transform = getattr(v.reader, "transform_frames", None)
            if transform is not None:  # planned frames kept at the model's input size
                transform(
                    functools.partial(model_input_frame, image_size=self.cfg.model.image_size)
                )
            window = open_window(v.reader, v.request.uri, v.request.start, v.request.end)
            v.outcome.num_frames = window.num_frames
            v.outcome.warning = window.warning
            seed = video_seed(self.cfg.train.seed, v.request.uri)  # random policies only
            v.indices = step_indices(window, self.policy, self.cfg.model.num_steps, seed=seed)
            v.reader.plan(v.indices)  # keep later steps' frames passed while decoding
        except Exception as error:  # noqa: BLE001 - every failure becomes this video's outcome
            self._fail(v, error)

    def _decode(self, v: _Video, step: int) -> _Decoded:
        """Step ``step``'s input of ``v`` (no side effect on its outcome: a step decoded
        ahead may never be used). Planned: pinned and copied to the device on this
        thread's side stream."""
        from frameexit.transforms import frames_to_tensor

        m = self.cfg.model
        try:
            with v.lock:
                if v.reader is None:
                    raise RuntimeError("the video was closed")
                raw = read_steps(v.reader, [v.indices[step]], m.clip_length)
            frames = frames_to_tensor(raw, image_size=m.image_size, mean=self.mean, std=self.std)
        except Exception as error:  # noqa: BLE001 - a failure at step t > 1 is this video's
            return _Decoded(error=error)
        if not self.plan.pin_memory:
            return _Decoded(frames=frames)
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(self.plan.device)
        with torch.cuda.stream(stream):
            frames = frames.pin_memory().to(self.plan.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        return _Decoded(frames=frames, ready=ready)

    def _take(self, v: _Video, step: int) -> torch.Tensor:
        """``v``'s input for ``step``: decoded ahead when it was, else now; a failure
        becomes the video's outcome and a blank input."""
        if v.outcome.error is not None:
            return self._blank()
        ahead, v.ahead = v.ahead, None
        decoded = ahead[1].result() if ahead is not None else self._decode(v, step)
        if decoded.error is not None:
            self._fail(v, decoded.error)
            return self._blank()
        v.outcome.frames_decoded += self.cfg.model.clip_length
        if decoded.ready is not None:
            torch.cuda.current_stream(self.plan.device).wait_event(decoded.ready)
            decoded.frames.record_stream(torch.cuda.current_stream(self.plan.device))
        return decoded.frames

    def _blank(self) -> torch.Tensor:
        return self.blank.to(self.plan.device) if self.plan.pin_memory else self.blank

    def _fail(self, v: _Video, error: BaseException) -> None:
        v.outcome.error = as_decode_error(v.request.uri, error)
        self._close(v)

    def __call__(self, step: int, active: torch.Tensor) -> torch.Tensor:
        """Step ``step``'s inputs of the running videos at positions ``active`` (on the
        plan's device, in its memory format); with ``prefetch_next_step``, step + 1 of the
        same videos starts decoding before this returns."""
        chosen = [self.videos[self.running[i]] for i in active.tolist()]
        running = {id(v) for v in chosen}
        for v in self.videos:  # decoded ahead for a video that has exited since: dropped
            if v.ahead is not None and (id(v) not in running or v.ahead[0] != step):
                self._drop_ahead(v)
        frames = torch.cat(list(self.pool.map(lambda v: self._take(v, step), chosen)))
        if self.plan.prefetch_next_step and step + 1 < self.cfg.model.num_steps:
            for v in chosen:
                if v.outcome.error is None:
                    v.ahead = (step + 1, self.pool.submit(self._decode, v, step + 1))
        if self.plan.pin_memory and frames.device.type == "cpu":
            frames = frames.pin_memory().to(self.plan.device, non_blocking=True)
        if self.plan.channels_last:
            frames = frames.contiguous(memory_format=_memory_format(frames))
        return frames

    def _drop_ahead(self, v: _Video) -> None:
        _, future = v.ahead
        v.ahead = None
        with contextlib.suppress(Exception):
            future.result()  # let it finish before the reader is closed or reused
        self.frames_ahead_unused += self.cfg.model.clip_length

    @staticmethod
    def _close(v: _Video) -> None:
        if v.reader is not None:
            with contextlib.suppress(Exception):  # closing a broken reader must not fail
                v.reader.close()
            v.reader = None

    def close(self) -> None:
        """Release every reader (idempotent); steps decoded ahead are waited for first."""
        for v in self.videos:
            if v.ahead is not None:
                self._drop_ahead(v)
            self._close(v)


def label_videos(
    model: Any,
    requests: Sequence[VideoRequest],
    cfg: Config,
    *,
    pool: Executor,
    open_reader: Opener | None = None,
    threshold: float | None = None,
    operating_point: Any = None,
    exit: bool = True,
    record_steps: bool = False,
    plan: DevicePlan | None = None,
    stats: dict[str, int] | None = None,
) -> list[VideoOutcome]:
    """Batched early exit over ``requests``: one :class:`VideoOutcome` per request, in
    order. Exits follow ``operating_point`` (a ``frameexit.operating_point.OperatingPoint``),
    else the paper's rule at ``threshold``, else the model's default
    (``FrameExit.default_operating_point``). ``exit=False`` runs every video for all T
    steps; ``record_steps`` keeps every step's exit score and logits (calibration, with
    ``exit=False``). ``plan``: the device path
    (default: full precision on the model's device, nothing ahead); the model must be on
    ``plan.device`` (:func:`prepare_model`). ``stats`` (if given) gains
    ``frames_ahead_unused``: frames decoded ahead for steps their videos never reached."""
    if plan is None:
        plan = DevicePlan(next(model.parameters()).device)
    source = BatchFrameSource(requests, cfg, open_reader=open_reader, pool=pool, plan=plan)
    try:
        source.open()
        if source.running:
            with plan.autocast():
                result = model.early_exit(
                    source,
                    len(source.running),
                    threshold=cfg.model.exit_threshold if threshold is None else threshold,
                    operating_point=operating_point,
                    exit=exit,
                    record_steps=record_steps,
                )
            scores, logits = result.scores.float().cpu(), result.logits.float().cpu()
            for i, position in enumerate(source.running):
                outcome = source.videos[position].outcome
                if outcome.error is None:
                    outcome.exit_step = int(result.exit_step[i])
                    outcome.scores, outcome.logits = scores[i], logits[i]
                    if record_steps:
                        outcome.step_scores = result.step_scores[i].float().cpu()
                        outcome.step_logits = result.step_logits[i].float().cpu()
    finally:
        source.close()
        if stats is not None:
            stats["frames_ahead_unused"] = (
                stats.get("frames_ahead_unused", 0) + source.frames_ahead_unused
            )
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


def named_answer(
    outcome: Any, cfg: Any, class_names: Sequence[str], step_gflops: float
) -> dict[str, Any]:
    """An answered video's ``label, labels, label_ids, scores, exit_step, gflops`` (the
    selection of ``label.top_k`` / ``label.multi_label_threshold``, named; an output
    without a name is ``class_<i>``): the one answer ``label`` and ``predict`` both give."""
    from frameexit.flops import video_gflops

    ids, values = select_labels(
        outcome.scores,
        multi_label=cfg.model.multi_label,
        top_k=cfg.label.top_k,
        threshold=cfg.label.multi_label_threshold,
    )
    names = [class_names[i] if i < len(class_names) else f"class_{i}" for i in ids]
    return dict(
        label=names[0] if names else None, labels=names, label_ids=ids, scores=values,
        exit_step=outcome.exit_step, gflops=video_gflops(step_gflops, outcome.exit_step),
    )  # fmt: skip
