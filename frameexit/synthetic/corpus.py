"""Corpus generation: plan, render and encode every video, then write the manifest.

Videos are written first (to a local staging folder uploaded afterwards when the target
is remote), then ``classes.json`` and ``corpus.json``, and the manifest last, so a
manifest's presence means the corpus is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from frameexit.manifests import CLASS_MAP_NAME, write_class_names, write_manifest
from frameexit.storage import absolute_uri, is_local, join_uri, upload_dir, write_bytes
from frameexit.synthetic.encoding import encode_mp4
from frameexit.synthetic.planning import (
    DEFAULT_DIFFICULTY_MIX,
    DEFAULT_SPLITS,
    Segment,
    VideoPlan,
    plan_corpus,
)
from frameexit.synthetic.rendering import render_video
from frameexit.synthetic.signatures import ComplementaryClass, corpus_classes

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "evidence_mask",
    "frame_labels",
    "generate_corpus",
]

GENERATOR_VERSION = "frameexit-synthetic-v1"
MANIFEST_NAME = "manifest.parquet"


def _segments_records(
    segments: Sequence[Segment], *, with_kind: bool, with_cue: bool = False
) -> list[dict[str, Any]]:
    """Segments as ``{label_id, start, end[, kind][, cue]}`` dicts (manifest struct columns)."""
    out = []
    for s in segments:
        record: dict[str, Any] = {"label_id": s.label_id, "start": s.start, "end": s.end}
        if with_kind:
            record["kind"] = s.kind
        if with_cue:
            record["cue"] = s.cue
        out.append(record)
    return out


def _manifest_frame(
    plans: Sequence[VideoPlan], root: str, num_classes: int, complementary: int = 0
) -> pd.DataFrame:
    """The manifest table: canonical columns plus the synthetic extras, one row per plan.
    Evidence segments of a corpus with complementary classes also carry their ``cue``."""
    names = [c.name for c in corpus_classes(num_classes, complementary)]
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
                "evidence_segments": _segments_records(
                    p.evidence, with_kind=False, with_cue=complementary > 0
                ),
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


# one video's work, as a picklable tuple for the process pool:
# (plan, num_classes, local output path, crf, preset)
_Job = tuple[VideoPlan, int, str, int, str]


def _render_and_encode(job: _Job) -> str:
    """Render and encode one video to its local path (runs in a worker process)."""
    plan, num_classes, path, crf, preset = job
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
    complementary_classes: int = 0,
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
    0.7/0.15/0.15). ``complementary_classes`` of the ``num_classes`` are complementary
    (identified by cues in separate frames; see the package docstring), the rest
    single-cue; 0 gives exactly the files earlier versions gave. ``workers`` > 1 encodes
    in that many processes (same output). The manifest is written last, so its presence
    means the corpus is complete.
    """
    w = width or image_size
    h = height or image_size
    if w is None or h is None:
        raise ValueError("give image_size or both width and height")
    # also recorded in corpus.json, in this order
    plan_args: dict[str, Any] = {
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
        "difficulty_mix": difficulty_mix,
        "splits": splits,
    }
    if complementary_classes:  # absent otherwise: corpus.json as earlier versions wrote it
        plan_args["complementary_classes"] = complementary_classes
    plans = plan_corpus(**plan_args)
    root = absolute_uri(out_uri)
    local = is_local(root)
    staging = root if local else tempfile.mkdtemp(prefix="frameexit-synthetic-")
    try:
        videos = os.path.join(staging, "videos")
        os.makedirs(videos, exist_ok=True)
        jobs = [
            (p, num_classes, os.path.join(videos, f"{p.video_id}.mp4"), crf, preset) for p in plans
        ]
        started = time.perf_counter()
        _run_jobs(jobs, workers, progress)
        elapsed = time.perf_counter() - started
        if not local:
            upload_dir(
                videos,
                join_uri(root, "videos"),
                storage_options=storage_options,
            )
    finally:
        if not local:
            shutil.rmtree(staging, ignore_errors=True)

    classes = corpus_classes(num_classes, complementary_classes)
    names = [c.name for c in classes]
    write_class_names(names, join_uri(root, CLASS_MAP_NAME), storage_options=storage_options)
    frame = _manifest_frame(plans, root, num_classes, complementary_classes)
    info = {
        "generator": GENERATOR_VERSION,
        "arguments": {
            **plan_args,  # the defaults spelled out, where None stood for them:
            "difficulty_mix": dict(difficulty_mix or DEFAULT_DIFFICULTY_MIX),
            "splits": dict(splits or DEFAULT_SPLITS),
            "crf": crf,
            "preset": preset,
        },
        "classes": [_class_record(c) for c in classes],
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


def _class_record(cls) -> dict[str, Any]:
    """A class as corpus.json lists it: its signature's attributes, or its cues."""
    if isinstance(cls, ComplementaryClass):
        return {"name": cls.name, "cues": list(cls.cues)}
    return {"name": cls.name, "shape": cls.shape, "colour": cls.colour, "texture": cls.texture}


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> None:
    """Run the jobs in this process or in ``workers`` processes (the files are the same)."""
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
