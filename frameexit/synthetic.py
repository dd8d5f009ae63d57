"""The synthetic benchmark corpus: real H.264 videos built so that early exit matters.

Each class k has a visual *signature* — a shape × colour × texture patch that a small CNN
can recognise in a single frame. A video of class k shows that signature, moving over a
cluttered scrolling background, only in its *evidence* frames: one or a few contiguous
segments at random places in time. The fraction of evidence frames is the difficulty::

    easy    ████████░░████████████░░░   60–90 % evidence, 1–2 segments
    medium  ░░░████░░░░░░░████░░░░░░░   25–45 %, 1–3 segments
    hard    ░░░░░░░░░░░░░░███░░░░░░░░    8–18 %, 1 segment
            (█ evidence, ░ background; distractors live in ░)

Non-evidence frames are background, or hold distractors: *partial* signatures of random
classes (``occluded``: only 25–45 % of the patch visible; ``gray``: shape and texture
without the colour) and, in single-label videos, *brief* full signatures of another
class, at most half as long as the shortest evidence segment (and 4 frames). So one frame can be
decisive (evidence), misleading (brief) or uninformative (the rest): coarse-to-fine
sampling finds randomly placed evidence sooner than sequential sampling, easy videos are
solved from one or two frames and hard ones need more. Multi-label mode gives a video
several classes, each in its own segments (distractors are then partial only).

Class signatures depend on the number of classes only (not on the seed), so corpora made
with different seeds share classes. Everything else is drawn from ``seed``: the same
arguments give the same labels, timelines and decoded frames.

Output under ``out_uri`` (any fsspec URI; remote targets are written to a local temp
dir first, then uploaded)::

    videos/syn_00000.mp4 ...   H.264 (libx264, yuv420p, +faststart), a keyframe every
                               1–2 s (GOP = fps × interval), B-frames as x264 decides
    manifest.parquet           the canonical manifest (frameexit.manifests) + extras:
                               difficulty, evidence_fraction, evidence_segments,
                               distractor_segments, fps, width, height, keyframe_interval
    classes.json               class names (position = label id)
    corpus.json                generation arguments and counts per split × difficulty

Segments are ``{label_id, start, end}`` structs over 0-based frame indices, ``end``
exclusive (distractors add ``kind``). Command line::

    python -m frameexit.synthetic --out /tmp/corpus --videos 200 --classes 10 --seed 0
    python -m frameexit.synthetic --out s3://bucket/corpus --videos 50 --multi-label
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import product
from typing import Any

import numpy as np
import pandas as pd

from frameexit.manifests import CLASS_MAP_NAME, write_class_names, write_manifest
from frameexit.storage import is_local, join_uri, upload_dir, write_bytes

__all__ = [
    "COLOURS",
    "DIFFICULTIES",
    "SHAPES",
    "TEXTURES",
    "Segment",
    "Signature",
    "VideoPlan",
    "class_signatures",
    "encode_mp4",
    "evidence_mask",
    "frame_labels",
    "generate_corpus",
    "main",
    "plan_corpus",
    "render_video",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = "frameexit-synthetic-v1"
MANIFEST_NAME = "manifest.parquet"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 215, 40),
    "magenta": (215, 50, 215),
    "cyan": (40, 210, 225),
    "orange": (245, 135, 25),
}
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker")

# difficulty → (min evidence fraction, max evidence fraction, min segments, max segments)
DIFFICULTIES: dict[str, tuple[float, float, int, int]] = {
    "easy": (0.60, 0.90, 1, 2),
    "medium": (0.25, 0.45, 1, 3),
    "hard": (0.08, 0.18, 1, 1),
}
DEFAULT_DIFFICULTY_MIX: dict[str, float] = {"easy": 0.4, "medium": 0.3, "hard": 0.3}
DEFAULT_SPLITS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}

_MIN_SEGMENT = 2  # frames of evidence per segment, at least
_SIGNATURE_SIZE = (0.42, 0.55)  # fraction of min(width, height)
_PARTIAL_COVER = (0.3, 0.6)  # fraction of non-evidence frames holding partial signatures
_PARTIAL_LENGTH = (2, 8)
_BRIEF_PROBABILITY = 0.5


# --------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class Signature:
    """The look of one class: ``shape`` filled with ``colour`` in ``texture``."""

    name: str
    shape: str
    colour: str
    texture: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as 8-bit RGB."""
        return COLOURS[self.colour]


@lru_cache(maxsize=16)
def class_signatures(num_classes: int) -> tuple[Signature, ...]:
    """The signatures of classes ``0..num_classes-1`` (independent of any seed).

    Chosen greedily so each new class differs from every earlier one in as many of the
    three attributes as possible (ties: the least-used attribute values first). Names
    are ``NN_colour_shape_texture``, zero-padded so sorting names keeps class order.
    """
    combos = np.array(list(product(range(len(SHAPES)), range(len(COLOURS)), range(len(TEXTURES)))))
    if not 1 <= num_classes <= len(combos):
        raise ValueError(f"num_classes must be in 1..{len(combos)}, got {num_classes}")
    distance = np.full(len(combos), 3)  # to the nearest chosen class, in attributes
    usage = np.zeros(len(combos), dtype=np.int64)  # how often its values are already used
    taken = np.zeros(len(combos), dtype=bool)
    chosen: list[tuple[int, int, int]] = []
    for _ in range(num_classes):
        score = np.where(taken, -(10**9), distance * 10**6 - usage)
        best = combos[int(np.argmax(score))]  # first best in product order
        chosen.append((int(best[0]), int(best[1]), int(best[2])))
        taken |= (combos == best).all(axis=1)
        distance = np.minimum(distance, (combos != best).sum(axis=1))
        usage += (combos == best).sum(axis=1)
    width = len(str(num_classes - 1))
    colour_names = list(COLOURS)
    return tuple(
        Signature(
            name=f"{k:0{width}d}_{colour_names[c]}_{SHAPES[s]}_{TEXTURES[t]}",
            shape=SHAPES[s],
            colour=colour_names[c],
            texture=TEXTURES[t],
        )
        for k, (s, c, t) in enumerate(chosen)
    )


@lru_cache(maxsize=512)
def _signature_patch(shape: str, rgb: tuple[int, int, int], texture: str, size: int):
    """``(rgb float32 [s, s, 3], alpha float32 [s, s])`` with anti-aliased edges."""
    sub = 2 * size  # 2× supersampling for the shape edge
    coords = (np.arange(sub, dtype=np.float32) + 0.5) / sub * 2.0 - 1.0
    v, u = np.meshgrid(coords, coords, indexing="ij")  # v: down, u: right, in [-1, 1]
    r = np.sqrt(u * u + v * v)
    if shape == "circle":
        inside = r <= 0.92
    elif shape == "square":
        inside = (np.abs(u) <= 0.78) & (np.abs(v) <= 0.78)
    elif shape == "triangle":
        inside = (v <= 0.8) & (v >= -0.9 + 2 * np.abs(u) * 1.0) & (np.abs(u) <= 0.95)
    elif shape == "diamond":
        inside = np.abs(u) + np.abs(v) <= 0.98
    elif shape == "cross":
        inside = ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (
            np.maximum(np.abs(u), np.abs(v)) <= 0.92
        )
    elif shape == "ring":
        inside = (r <= 0.95) & (r >= 0.5)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    alpha = inside.astype(np.float32).reshape(size, 2, size, 2).mean(axis=(1, 3))
    pix = (np.arange(size, dtype=np.float32) + 0.5) / size
    py, px = np.meshgrid(pix, pix, indexing="ij")
    if texture == "solid":
        light = np.ones((size, size), np.float32)
    elif texture == "stripes":  # diagonal stripes, ~4.5 periods across the patch
        light = np.where(((px + py) * 4.5) % 1.0 < 0.5, 1.0, 0.35).astype(np.float32)
    elif texture == "checker":  # 5 × 5 cells
        light = np.where((np.floor(px * 5) + np.floor(py * 5)) % 2 == 0, 1.0, 0.35)
        light = light.astype(np.float32)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    colour = np.asarray(rgb, np.float32)
    return light[..., None] * colour, alpha


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Segment:
    """Frames ``[start, end)`` (0-based) showing class ``label_id`` as ``kind``.

    ``kind``: ``evidence``, ``brief`` (another class's full signature), ``occluded`` or
    ``gray`` (partial signatures)."""

    label_id: int
    start: int
    end: int
    kind: str = "evidence"

    @property
    def length(self) -> int:
        """Number of frames."""
        return self.end - self.start


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video; pure data, deterministic from the seed."""

    index: int
    video_id: str
    split: str
    difficulty: str
    label_ids: tuple[int, ...]
    num_frames: int
    width: int
    height: int
    fps: float
    keyframe_interval: int  # GOP length in frames
    segments: tuple[Segment, ...]
    seed: tuple[int, ...]  # seeds the drawing (background, motion, sizes)

    @property
    def evidence(self) -> tuple[Segment, ...]:
        """The evidence segments."""
        return tuple(s for s in self.segments if s.kind == "evidence")

    @property
    def distractors(self) -> tuple[Segment, ...]:
        """The distractor segments."""
        return tuple(s for s in self.segments if s.kind != "evidence")

    @property
    def evidence_fraction(self) -> float:
        """Fraction of the video's frames that carry evidence."""
        return sum(s.length for s in self.evidence) / self.num_frames


def _largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    weights = np.asarray(weights, dtype=np.float64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder counts; every split with a fraction > 0 gets one when n allows."""
    counts = _largest_remainder(n, fractions)
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _check_fractions(name: str, values: Mapping[str, float], allowed: Sequence[str] | None) -> None:
    if not values or any(v < 0 or not math.isfinite(v) for v in values.values()):
        raise ValueError(f"{name} must be non-negative numbers, got {dict(values)}")
    if sum(values.values()) <= 0:
        raise ValueError(f"{name} must not all be zero, got {dict(values)}")
    if allowed is not None and set(values) - set(allowed):
        raise ValueError(f"{name}: unknown keys {sorted(set(values) - set(allowed))}")


def _random_parts(rng: np.random.Generator, total: int, parts: int, minimum: int) -> list[int]:
    """Split ``total`` into ``parts`` random positive sizes, each >= ``minimum``."""
    free = total - parts * minimum
    cuts = np.sort(rng.integers(0, free + 1, size=parts - 1))
    sizes = np.diff(np.concatenate([[0], cuts, [free]])) + minimum
    return [int(s) for s in sizes]


def _place(rng: np.random.Generator, num_frames: int, lengths: list[int]) -> list[int] | None:
    """Random non-overlapping starts for segments of ``lengths`` (in the given order of
    a random permutation), at least one frame apart; None when they do not fit."""
    m = len(lengths)
    free = num_frames - sum(lengths) - (m - 1)
    if free < 0:
        return None
    order = rng.permutation(m)
    cuts = np.sort(rng.integers(0, free + 1, size=m))
    gaps = np.diff(np.concatenate([[0], cuts]))
    starts = [0] * m
    position = 0
    for rank, i in enumerate(order):
        position += int(gaps[rank]) + (1 if rank else 0)
        starts[i] = position
        position += lengths[i]
    return starts


def _plan_timeline(
    rng: np.random.Generator,
    num_frames: int,
    difficulty: str,
    label_ids: Sequence[int],
    num_classes: int,
    multi_label: bool,
) -> tuple[Segment, ...]:
    lo, hi, seg_lo, seg_hi = DIFFICULTIES[difficulty]
    fraction = rng.uniform(lo, hi)
    seg_counts = [int(rng.integers(seg_lo, seg_hi + 1)) for _ in label_ids]
    # evidence frames: at least _MIN_SEGMENT per segment; all segments plus a one-frame
    # gap between neighbours must fit (plan_corpus guarantees min_frames allows it)
    evidence_total = max(_MIN_SEGMENT * sum(seg_counts), int(round(fraction * num_frames)))
    while evidence_total + sum(seg_counts) - 1 > num_frames and max(seg_counts) > 1:
        seg_counts[int(np.argmax(seg_counts))] -= 1
        evidence_total = max(_MIN_SEGMENT * sum(seg_counts), evidence_total)
    evidence_total = min(evidence_total, num_frames - (sum(seg_counts) - 1))
    spare = evidence_total - _MIN_SEGMENT * sum(seg_counts)
    extra = _random_parts(rng, spare, len(label_ids), 0)
    lengths: list[int] = []
    owners: list[int] = []
    for label_id, count, more in zip(label_ids, seg_counts, extra, strict=True):
        for length in _random_parts(rng, _MIN_SEGMENT * count + more, count, _MIN_SEGMENT):
            lengths.append(length)
            owners.append(label_id)
    starts = _place(rng, num_frames, lengths)
    if starts is None:  # unreachable: sized above
        raise AssertionError("evidence does not fit")
    segments = [Segment(o, s, s + n) for o, s, n in zip(owners, starts, lengths, strict=True)]
    occupied = np.zeros(num_frames, bool)
    for seg in segments:
        occupied[seg.start : seg.end] = True

    distractors: list[tuple[int, int, str]] = []  # (label, length, kind)
    others = [c for c in range(num_classes) if c not in label_ids]
    if not multi_label and others and rng.random() < _BRIEF_PROBABILITY:
        longest_brief = max(1, min(4, min(lengths) // 2))
        for _ in range(int(rng.integers(1, 3))):
            brief = int(rng.integers(1, longest_brief + 1))
            distractors.append((int(rng.choice(others)), brief, "brief"))
    budget = int(round(rng.uniform(*_PARTIAL_COVER) * (num_frames - evidence_total)))
    while budget >= _PARTIAL_LENGTH[0]:
        length = int(rng.integers(_PARTIAL_LENGTH[0], min(_PARTIAL_LENGTH[1], budget) + 1))
        kind = "occluded" if rng.random() < 0.6 else "gray"
        distractors.append((int(rng.integers(num_classes)), length, kind))
        budget -= length
    for label_id, length, kind in distractors:  # at a random free place, or not at all
        starts_free = _free_starts(occupied, length)
        if len(starts_free) == 0:
            continue
        start = int(rng.choice(starts_free))
        segments.append(Segment(label_id, start, start + length, kind))
        occupied[start : start + length] = True
    return tuple(sorted(segments, key=lambda s: s.start))


def _free_starts(occupied: np.ndarray, length: int) -> np.ndarray:
    """Starts s where frames [s - 1, s + length] (clipped to the video) are all free, so a
    new segment keeps a one-frame gap to its neighbours."""
    if length > len(occupied):
        return np.zeros(0, dtype=np.int64)
    padded = np.concatenate([[False], occupied, [False]])
    busy = np.lib.stride_tricks.sliding_window_view(padded, length + 2).any(axis=1)
    return np.flatnonzero(~busy)


def plan_corpus(
    *,
    num_videos: int,
    num_classes: int = 10,
    seed: int = 0,
    multi_label: bool = False,
    max_labels: int = 3,
    width: int = 64,
    height: int = 64,
    min_frames: int = 40,
    max_frames: int = 200,
    fps: float = 12.0,
    keyframe_interval_s: float | tuple[float, float] = (1.0, 2.0),
    difficulty_mix: Mapping[str, float] | None = None,
    splits: Mapping[str, float] | None = None,
) -> list[VideoPlan]:
    """Plan a corpus (labels, splits, difficulties, timelines) without drawing anything.

    Difficulty counts follow ``difficulty_mix``; within each difficulty the videos are
    divided among ``splits`` (every split gets each difficulty when there are enough
    videos), and within each split classes are dealt round-robin, so every split holds
    a mix of difficulties and classes.
    """
    mix = dict(DEFAULT_DIFFICULTY_MIX if difficulty_mix is None else difficulty_mix)
    split_fractions = dict(DEFAULT_SPLITS if splits is None else splits)
    _check_fractions("difficulty_mix", mix, list(DIFFICULTIES))
    _check_fractions("splits", split_fractions, None)
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    class_signatures(num_classes)  # validates num_classes
    shortest = 3 * max_labels if multi_label else 4  # room for each label's evidence
    if not shortest <= min_frames <= max_frames:
        raise ValueError(
            f"need {shortest} <= min_frames <= max_frames, got {min_frames}, {max_frames}"
        )
    for name, value in (("width", width), ("height", height)):
        if value < 16 or value % 2:
            raise ValueError(f"{name} must be an even number >= 16 (yuv420p), got {value}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    interval = (
        (float(keyframe_interval_s), float(keyframe_interval_s))
        if isinstance(keyframe_interval_s, (int, float))
        else (float(keyframe_interval_s[0]), float(keyframe_interval_s[1]))
    )
    if not 0 < interval[0] <= interval[1]:
        raise ValueError(f"keyframe_interval_s must be > 0 (lo <= hi), got {keyframe_interval_s}")
    if max_labels < 1:
        raise ValueError(f"max_labels must be >= 1, got {max_labels}")

    rng = np.random.default_rng([seed, 0])
    names = [d for d in DIFFICULTIES if mix.get(d, 0) > 0]
    per_difficulty = _largest_remainder(num_videos, [mix[d] for d in names])
    split_names = list(split_fractions)
    slots: list[tuple[str, str]] = []  # (split, difficulty)
    for difficulty, count in zip(names, per_difficulty, strict=True):
        counts = _split_counts(count, [split_fractions[s] for s in split_names])
        for split, n in zip(split_names, counts, strict=True):
            slots.extend([(split, difficulty)] * n)
    first_labels = [0] * len(slots)
    for split in split_names:  # deal classes round-robin within each split
        offset = int(rng.integers(num_classes))
        members = [i for i, (s, _) in enumerate(slots) if s == split]
        for rank, slot in enumerate(members):
            first_labels[slot] = (offset + rank) % num_classes
    order = rng.permutation(len(slots))
    width_digits = max(5, len(str(num_videos - 1)))
    plans: list[VideoPlan] = []
    for index, slot in enumerate(order):
        split, difficulty = slots[slot]
        labels = [first_labels[slot]]
        if multi_label and num_classes > 1:
            extra = int(rng.integers(0, min(max_labels, num_classes)))
            others = [c for c in range(num_classes) if c != labels[0]]
            labels += [int(c) for c in rng.choice(others, size=extra, replace=False)]
        labels = sorted(labels)
        num_frames = int(rng.integers(min_frames, max_frames + 1))
        gop = max(1, int(round(fps * rng.uniform(*interval))))
        video_seed = (seed, 1, index)
        timeline_rng = np.random.default_rng([seed, 2, index])
        segments = _plan_timeline(
            timeline_rng, num_frames, difficulty, labels, num_classes, multi_label
        )
        plans.append(
            VideoPlan(
                index=index,
                video_id=f"syn_{index:0{width_digits}d}",
                split=split,
                difficulty=difficulty,
                label_ids=tuple(labels),
                num_frames=num_frames,
                width=width,
                height=height,
                fps=float(fps),
                keyframe_interval=gop,
                segments=segments,
                seed=video_seed,
            )
        )
    return plans


# --------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (2H, 2W, 3) uint8 toroidal canvas: smooth low-saturation gray plus clutter."""
    ch, cw = 2 * height, 2 * width
    grid = 5
    coarse = rng.uniform(70, 170, size=(grid, grid, 1)) * rng.uniform(0.92, 1.08, size=3)
    yy = np.arange(ch) * grid / ch
    xx = np.arange(cw) * grid / cw
    y0, x0 = np.floor(yy).astype(int), np.floor(xx).astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    y1, x1 = (y0 + 1) % grid, (x0 + 1) % grid
    base = (
        coarse[y0][:, x0] * (1 - fy) * (1 - fx)
        + coarse[y0][:, x1] * (1 - fy) * fx
        + coarse[y1][:, x0] * fy * (1 - fx)
        + coarse[y1][:, x1] * fy * fx
    )
    scale = min(height, width) / 64.0
    count = int(rng.integers(25, 45) * (ch * cw) / (128 * 128) / max(scale, 1.0))
    f32 = np.float32
    cy = rng.uniform(0, ch, count).astype(f32)[:, None, None]
    cx = rng.uniform(0, cw, count).astype(f32)[:, None, None]
    hy = (rng.uniform(1.5, 8.0, count) * scale).astype(f32)[:, None, None]
    hx = (rng.uniform(1.5, 8.0, count) * scale).astype(f32)[:, None, None]
    ellipse = rng.random(count)[:, None, None] < 0.5
    gray = rng.uniform(30, 220, count)[:, None]
    colours = np.clip(gray + rng.uniform(-12, 12, size=(count, 3)), 0, 255)
    ys = np.arange(ch)[None, :, None].astype(np.float32)
    xs = np.arange(cw)[None, None, :].astype(np.float32)
    dy = np.abs(ys - cy)
    dy = np.minimum(dy, ch - dy)  # wrap around: the canvas tiles seamlessly
    dx = np.abs(xs - cx)
    dx = np.minimum(dx, cw - dx)
    in_rect = (dy <= hy) & (dx <= hx)
    in_ellipse = (dy / hy) ** 2 + (dx / hx) ** 2 <= 1.0
    masks = np.where(ellipse, in_ellipse, in_rect)  # [count, ch, cw]
    covered = masks.any(axis=0)
    top = count - 1 - np.argmax(masks[::-1], axis=0)  # painter's order: last drawn wins
    canvas = np.where(covered[..., None], colours[top], base)
    canvas += rng.normal(0, 3.0, size=canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _bounce(start: float, velocity: float, steps: np.ndarray, span: int) -> np.ndarray:
    """Positions of a point moving at ``velocity`` px/frame, reflecting inside [0, span]."""
    if span <= 0:
        return np.zeros(len(steps), dtype=np.int64)
    period = 2 * span
    position = np.mod(start + velocity * steps, period)
    position = np.where(position > span, period - position, position)
    return np.rint(position).astype(np.int64)


def _occlude(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep only 25–45 % of the patch: cut it along a random line through it."""
    size = alpha.shape[0]
    pix = (np.arange(size) + 0.5) / size - 0.5
    py, px = np.meshgrid(pix, pix, indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    projection = px * np.cos(angle) + py * np.sin(angle)
    keep = rng.uniform(0.25, 0.45)
    inside = alpha > 0.5
    threshold = np.quantile(projection[inside], 1.0 - keep) if inside.any() else 0.0
    return alpha * (projection >= threshold)


def render_video(plan: VideoPlan, num_classes: int) -> np.ndarray:
    """Draw the frames of ``plan``: uint8 ``[num_frames, height, width, 3]`` (RGB)."""
    rng = np.random.default_rng(list(plan.seed))
    h, w, n = plan.height, plan.width, plan.num_frames
    scale = min(h, w) / 64.0
    canvas = _background(rng, h, w)
    ch, cw = canvas.shape[:2]
    t = np.arange(n)
    velocity = rng.uniform(-1.5, 1.5, size=2) * scale
    origin = rng.uniform(0, [ch, cw])
    rows = (np.rint(origin[0] + velocity[0] * t)[:, None].astype(np.int64) + np.arange(h)) % ch
    cols = (np.rint(origin[1] + velocity[1] * t)[:, None].astype(np.int64) + np.arange(w)) % cw
    frames = canvas[rows[:, :, None], cols[:, None, :]].astype(np.float32)  # [n, h, w, 3]

    signatures = class_signatures(num_classes)
    for seg in plan.segments:
        sig = signatures[seg.label_id]
        size = int(round(min(h, w) * rng.uniform(*_SIGNATURE_SIZE)))
        size = max(4, min(size, h, w))
        rgb, alpha = _signature_patch(sig.shape, sig.rgb, sig.texture, size)
        if seg.kind == "occluded":
            alpha = _occlude(alpha, rng)
        elif seg.kind == "gray":
            luma = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
            rgb = np.repeat((0.5 * luma + 60.0)[..., None], 3, axis=-1)
        steps = np.arange(seg.length)
        ys = _bounce(rng.uniform(0, h - size), rng.uniform(-1.2, 1.2) * scale, steps, h - size)
        xs = _bounce(rng.uniform(0, w - size), rng.uniform(-1.2, 1.2) * scale, steps, w - size)
        index = np.arange(seg.start, seg.end)[:, None, None]
        ry = ys[:, None, None] + np.arange(size)[None, :, None]
        rx = xs[:, None, None] + np.arange(size)[None, None, :]
        region = frames[index, ry, rx]  # [L, size, size, 3]
        a = alpha[None, :, :, None]
        frames[index, ry, rx] = region * (1.0 - a) + rgb[None] * a
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- encoding


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


# --------------------------------------------------------------------------- manifest


def _segments_records(segments: Sequence[Segment], *, with_kind: bool) -> list[dict[str, Any]]:
    out = []
    for s in segments:
        record: dict[str, Any] = {"label_id": s.label_id, "start": s.start, "end": s.end}
        if with_kind:
            record["kind"] = s.kind
        out.append(record)
    return out


def _manifest_frame(plans: Sequence[VideoPlan], root: str, num_classes: int) -> pd.DataFrame:
    names = [s.name for s in class_signatures(num_classes)]
    rows = []
    for p in plans:
        rows.append(
            {
                "video": join_uri(root, f"videos/{p.video_id}.mp4"),
                "labels": [names[i] for i in p.label_ids],
                "label_ids": list(p.label_ids),
                "split": p.split,
                "start": None,
                "end": None,
                "duration": p.num_frames / p.fps,
                "num_frames": p.num_frames,
                "difficulty": p.difficulty,
                "evidence_fraction": p.evidence_fraction,
                "evidence_segments": _segments_records(p.evidence, with_kind=False),
                "distractor_segments": _segments_records(p.distractors, with_kind=True),
                "fps": p.fps,
                "width": p.width,
                "height": p.height,
                "keyframe_interval": p.keyframe_interval,
            }
        )
    return pd.DataFrame(rows)


def evidence_mask(row: Mapping[str, Any], label_id: int | None = None) -> np.ndarray:
    """Bool ``[num_frames]``: which frames of a manifest row carry evidence (of ``label_id``,
    or of any of its labels)."""
    mask = np.zeros(int(row["num_frames"]), dtype=bool)
    for seg in row["evidence_segments"]:
        if label_id is None or int(seg["label_id"]) == label_id:
            mask[int(seg["start"]) : int(seg["end"])] = True
    return mask


def frame_labels(row: Mapping[str, Any]) -> np.ndarray:
    """Int ``[num_frames]``: the label id whose evidence a frame shows, or -1."""
    labels = np.full(int(row["num_frames"]), -1, dtype=np.int64)
    for seg in row["evidence_segments"]:
        labels[int(seg["start"]) : int(seg["end"])] = int(seg["label_id"])
    return labels


# --------------------------------------------------------------------------- corpus


def _root(uri: str) -> str:
    """Local roots become absolute paths (video URIs in the manifest must not depend on
    the working directory); other URIs lose a trailing slash."""
    if is_local(uri):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return os.path.abspath(path)
    return uri.rstrip("/")


def _render_and_encode(args: tuple[VideoPlan, int, str, int, str]) -> str:
    plan, num_classes, path, crf, preset = args
    frames = render_video(plan, num_classes)
    encode_mp4(
        frames, path, fps=plan.fps, keyframe_interval=plan.keyframe_interval, crf=crf, preset=preset
    )
    return path


def generate_corpus(
    out_uri: str,
    *,
    num_videos: int,
    num_classes: int = 10,
    seed: int = 0,
    multi_label: bool = False,
    max_labels: int = 3,
    image_size: int | None = 64,
    width: int | None = None,
    height: int | None = None,
    min_frames: int = 40,
    max_frames: int = 200,
    fps: float = 12.0,
    keyframe_interval_s: float | tuple[float, float] = (1.0, 2.0),
    difficulty_mix: Mapping[str, float] | None = None,
    splits: Mapping[str, float] | None = None,
    crf: int = 20,
    preset: str = "medium",
    workers: int = 1,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Generate the synthetic corpus under ``out_uri``; return the manifest URI.

    ``width``/``height`` override ``image_size`` (square by default). ``keyframe_interval_s``
    is a fixed value or a ``(lo, hi)`` range drawn per video. ``difficulty_mix`` weights
    ``easy``/``medium``/``hard``; ``splits`` weights split names (default train/val/test
    0.7/0.15/0.15). ``workers`` > 1 encodes in that many processes (same output). The
    manifest is written last, so its presence means the corpus is complete.
    """
    w = width or image_size
    h = height or image_size
    if w is None or h is None:
        raise ValueError("give image_size or both width and height")
    plans = plan_corpus(
        num_videos=num_videos,
        num_classes=num_classes,
        seed=seed,
        multi_label=multi_label,
        max_labels=max_labels,
        width=w,
        height=h,
        min_frames=min_frames,
        max_frames=max_frames,
        fps=fps,
        keyframe_interval_s=keyframe_interval_s,
        difficulty_mix=difficulty_mix,
        splits=splits,
    )
    root = _root(out_uri)
    local = is_local(root)
    staging = root if local else tempfile.mkdtemp(prefix="frameexit-synthetic-")
    try:
        os.makedirs(os.path.join(staging, "videos"), exist_ok=True)
        jobs = [
            (p, num_classes, os.path.join(staging, "videos", f"{p.video_id}.mp4"), crf, preset)
            for p in plans
        ]
        started = time.perf_counter()
        _run_jobs(jobs, workers, progress)
        elapsed = time.perf_counter() - started
        if not local:
            upload_dir(
                os.path.join(staging, "videos"),
                join_uri(root, "videos"),
                storage_options=storage_options,
            )
    finally:
        if not local:
            shutil.rmtree(staging, ignore_errors=True)

    names = [s.name for s in class_signatures(num_classes)]
    write_class_names(names, join_uri(root, CLASS_MAP_NAME), storage_options=storage_options)
    frame = _manifest_frame(plans, root, num_classes)
    info = {
        "generator": GENERATOR_VERSION,
        "arguments": {
            "num_videos": num_videos,
            "num_classes": num_classes,
            "seed": seed,
            "multi_label": multi_label,
            "max_labels": max_labels,
            "width": w,
            "height": h,
            "min_frames": min_frames,
            "max_frames": max_frames,
            "fps": fps,
            "keyframe_interval_s": keyframe_interval_s,
            "difficulty_mix": dict(difficulty_mix or DEFAULT_DIFFICULTY_MIX),
            "splits": dict(splits or DEFAULT_SPLITS),
            "crf": crf,
            "preset": preset,
        },
        "classes": [
            {"name": s.name, "shape": s.shape, "colour": s.colour, "texture": s.texture}
            for s in class_signatures(num_classes)
        ],
        "counts": {
            f"{split}/{difficulty}": int(n)
            for (split, difficulty), n in sorted(
                Counter((p.split, p.difficulty) for p in plans).items()
            )
        },
        "encode_seconds": round(elapsed, 3),
    }
    write_bytes(
        join_uri(root, "corpus.json"),
        (json.dumps(info, indent=1) + "\n").encode(),
        storage_options=storage_options,
    )
    manifest_uri = join_uri(root, MANIFEST_NAME)
    write_manifest(frame, manifest_uri, storage_options=storage_options)
    return manifest_uri


def _run_jobs(jobs: list[tuple[VideoPlan, int, str, int, str]], workers: int, progress: bool):
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                _render_and_encode(job)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_render_and_encode, jobs, chunksize=4):
                    bar.update(1)
    finally:
        bar.close()


# --------------------------------------------------------------------------- command line


def _weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if not key or not value:
            raise argparse.ArgumentTypeError(f"expected name=weight[,name=weight...], got {text!r}")
        out[key.strip()] = float(value)
    return out


def main(argv: Sequence[str] | None = None) -> str:
    """Command line: generate a corpus and print its manifest URI."""
    parser = argparse.ArgumentParser(
        prog="python -m frameexit.synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="output folder (any fsspec URI)")
    parser.add_argument("--videos", type=int, required=True, help="number of videos")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--multi-label", action="store_true")
    parser.add_argument("--max-labels", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="square frame size")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--min-frames", type=int, default=40)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--fps", type=float, default=12.0)
    parser.add_argument(
        "--keyframe-interval", type=float, nargs="+", default=[1.0, 2.0], metavar="S",
        help="seconds between keyframes: one value, or lo hi (drawn per video)",
    )  # fmt: skip
    parser.add_argument("--difficulty-mix", type=_weights, default=None, help="easy=.4,hard=.6")
    parser.add_argument("--splits", type=_weights, default=None, help="train=.8,test=.2")
    parser.add_argument("--crf", type=int, default=20)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    interval = args.keyframe_interval
    if len(interval) not in (1, 2):
        parser.error("--keyframe-interval takes one or two values")
    started = time.perf_counter()
    uri = generate_corpus(
        args.out,
        num_videos=args.videos,
        num_classes=args.classes,
        seed=args.seed,
        multi_label=args.multi_label,
        max_labels=args.max_labels,
        image_size=args.size,
        width=args.width,
        height=args.height,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        fps=args.fps,
        keyframe_interval_s=interval[0] if len(interval) == 1 else (interval[0], interval[1]),
        difficulty_mix=args.difficulty_mix,
        splits=args.splits,
        crf=args.crf,
        preset=args.preset,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - started
    print(uri)
    print(
        f"{args.videos} videos in {seconds:.1f} s ({args.videos / seconds:.1f} videos/s)",
        file=sys.stderr,
    )
    return uri


if __name__ == "__main__":
    main()
