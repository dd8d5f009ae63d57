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

from frameexit.synthetic.cli import main
from frameexit.synthetic.corpus import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    evidence_mask,
    frame_labels,
    generate_corpus,
)
from frameexit.synthetic.encoding import encode_mp4
from frameexit.synthetic.planning import (
    DEFAULT_DIFFICULTY_MIX,
    DEFAULT_SPLITS,
    DIFFICULTIES,
    Segment,
    VideoPlan,
    plan_corpus,
)
from frameexit.synthetic.rendering import render_video
from frameexit.synthetic.signatures import COLOURS, SHAPES, TEXTURES, Signature, class_signatures

__all__ = [
    "COLOURS",
    "DEFAULT_DIFFICULTY_MIX",
    "DEFAULT_SPLITS",
    "DIFFICULTIES",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
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
