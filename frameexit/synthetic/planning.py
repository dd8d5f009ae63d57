"""Corpus planning: labels, splits, difficulties and evidence/distractor timelines.

A plan is pure data, drawn from the seed alone, so it can be checked (and the manifest
written) without drawing a single frame. ``VideoPlan.seed`` then seeds the drawing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from frameexit.synthetic.signatures import class_signatures, complementary_family

__all__ = [
    "DEFAULT_DIFFICULTY_MIX",
    "DEFAULT_SPLITS",
    "DIFFICULTIES",
    "Segment",
    "VideoPlan",
    "plan_corpus",
]

# difficulty → (min evidence fraction, max evidence fraction, min segments, max segments)
DIFFICULTIES: dict[str, tuple[float, float, int, int]] = {
    "easy": (0.60, 0.90, 1, 2),
    "medium": (0.25, 0.45, 1, 3),
    "hard": (0.08, 0.18, 1, 1),
}
DEFAULT_DIFFICULTY_MIX: dict[str, float] = {"easy": 0.4, "medium": 0.3, "hard": 0.3}
DEFAULT_SPLITS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}

_MIN_SEGMENT = 2  # frames of evidence per segment, at least
_PARTIAL_COVER = (0.3, 0.6)  # fraction of non-evidence frames holding partial signatures
_PARTIAL_LENGTH = (2, 8)
_BRIEF_PROBABILITY = 0.5


@dataclass(frozen=True)
class Segment:
    """Frames ``[start, end)`` (0-based) showing class ``label_id`` as ``kind``.

    ``kind``: ``evidence``, ``brief`` (another class's full signature), ``occluded`` or
    ``gray`` (partial signatures). ``cue``: empty for a full signature, else the one
    sub-signature of a complementary class the segment draws (``shape:circle``,
    ``colour:red``)."""

    label_id: int
    start: int
    end: int
    kind: str = "evidence"
    cue: str = ""

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
    owners: Sequence[tuple[int, str]],
    num_single: int,
    multi_label: bool,
) -> tuple[Segment, ...]:
    """Evidence segments for every ``(label_id, cue)`` owner (a single-cue label has one,
    cue ``""``; a complementary label one per cue), then distractors of single-cue
    classes (``num_single``: their count; ids below it) in the free frames."""
    label_ids = sorted({label for label, _ in owners})
    lo, hi, seg_lo, seg_hi = DIFFICULTIES[difficulty]
    fraction = rng.uniform(lo, hi)
    seg_counts = [int(rng.integers(seg_lo, seg_hi + 1)) for _ in owners]
    # evidence frames: at least _MIN_SEGMENT per segment; all segments plus a one-frame
    # gap between neighbours must fit (plan_corpus guarantees min_frames allows it)
    evidence_total = max(_MIN_SEGMENT * sum(seg_counts), int(round(fraction * num_frames)))
    while evidence_total + sum(seg_counts) - 1 > num_frames and max(seg_counts) > 1:
        seg_counts[int(np.argmax(seg_counts))] -= 1
        evidence_total = max(_MIN_SEGMENT * sum(seg_counts), evidence_total)
    evidence_total = min(evidence_total, num_frames - (sum(seg_counts) - 1))
    spare = evidence_total - _MIN_SEGMENT * sum(seg_counts)
    extra = _random_parts(rng, spare, len(owners), 0)
    lengths: list[int] = []
    drawn_by: list[tuple[int, str]] = []
    for owner, count, more in zip(owners, seg_counts, extra, strict=True):
        for length in _random_parts(rng, _MIN_SEGMENT * count + more, count, _MIN_SEGMENT):
            lengths.append(length)
            drawn_by.append(owner)
    starts = _place(rng, num_frames, lengths)
    if starts is None:  # unreachable: sized above
        raise AssertionError("evidence does not fit")
    segments = [
        Segment(label, s, s + n, cue=cue)
        for (label, cue), s, n in zip(drawn_by, starts, lengths, strict=True)
    ]
    occupied = np.zeros(num_frames, bool)
    for seg in segments:
        occupied[seg.start : seg.end] = True

    distractors: list[tuple[int, int, str]] = []  # (label, length, kind)
    others = [c for c in range(num_single) if c not in label_ids]
    if not multi_label and others and rng.random() < _BRIEF_PROBABILITY:
        longest_brief = max(1, min(4, min(lengths) // 2))
        for _ in range(int(rng.integers(1, 3))):
            brief = int(rng.integers(1, longest_brief + 1))
            distractors.append((int(rng.choice(others)), brief, "brief"))
    budget = int(round(rng.uniform(*_PARTIAL_COVER) * (num_frames - evidence_total)))
    while num_single and budget >= _PARTIAL_LENGTH[0]:
        length = int(rng.integers(_PARTIAL_LENGTH[0], min(_PARTIAL_LENGTH[1], budget) + 1))
        kind = "occluded" if rng.random() < 0.6 else "gray"
        distractors.append((int(rng.integers(num_single)), length, kind))
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
    complementary_classes: int = 0,
) -> list[VideoPlan]:
    """Plan a corpus (labels, splits, difficulties, timelines) without drawing anything.

    Difficulty counts follow ``difficulty_mix``; within each difficulty the videos are
    divided among ``splits`` (every split gets each difficulty when there are enough
    videos), and within each split classes are dealt round-robin, so every split holds
    a mix of difficulties and classes. The last ``complementary_classes`` class ids are
    complementary (:func:`~frameexit.synthetic.signatures.complementary_family`): their
    evidence is one set of segments per cue, the difficulty's evidence fraction shared
    among the cues; distractors only ever show single-cue classes. 0 (the default) plans
    exactly what earlier versions planned.
    """
    mix = dict(DEFAULT_DIFFICULTY_MIX if difficulty_mix is None else difficulty_mix)
    split_fractions = dict(DEFAULT_SPLITS if splits is None else splits)
    _check_fractions("difficulty_mix", mix, list(DIFFICULTIES))
    _check_fractions("splits", split_fractions, None)
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    class_signatures(num_classes)  # validates num_classes
    family = complementary_family(num_classes, complementary_classes)
    num_single = num_classes - len(family)
    cues = [("",)] * num_single + [c.cues for c in family]  # what each label's evidence draws
    # room for each label's evidence: per cue a 2-frame segment and a gap
    per_label = 6 if family else 3
    shortest = per_label * max_labels if multi_label else max(4, per_label)
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
        owners = [(label, cue) for label in labels for cue in cues[label]]
        segments = _plan_timeline(
            timeline_rng, num_frames, difficulty, owners, num_single, multi_label
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
