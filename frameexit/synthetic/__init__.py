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

**Complementary classes** (``complementary_classes=C``, off by default). In the corpus
above every evidence frame is decisive on its own, so nothing is gained by combining
frames: averaging per-frame predictions does as well as pooling features (measured:
92.0 vs 88.3 % top-1, the wrong way round for the paper's 67.8 vs 76.1 mAP). Real
classes are often a combination — a pool and a ball is water polo, the pool alone is
swimming. So the last C class ids are made of *cues*, each drawn in its own segments:
a **shape cue** (a black-and-white checkered circle or cross, a look no other patch has)
and a **colour cue** (three bars in one colour). With two shapes and C/2 − 1 colours,
each shape has a *shape-only* class and one *pair* class per colour::

    C = 6:   cue_circle     cue_circle_red    cue_circle_green        (circle alone, or
             cue_cross      cue_cross_red     cue_cross_green          circle + a colour)

    pair video   ░░▓▓▓▓▓░░░░░░▒▒░░░▓▓▓▓▓░░    ▓ shape cue, ▒ colour cue (any order)

A shape frame is ambiguous among C/2 classes and a colour frame between 2: no single
frame decides. Pooled features do — max pooling keeps "this shape was seen" and "this
colour was seen", and the classifier reads the pair (or the absence of any colour) off
the pooled vector. Averaging per-frame predictions cannot: a shape frame votes mostly
for the shape-only class (the class whose videos show that shape most), so a pair video
whose shape is seen more often than its colour is averaged into the shape-only class;
only the combination says otherwise. The evidence fraction of the difficulty is shared
among the cues (each with the difficulty's segment count), and distractors (brief,
occluded, gray) only ever show single-cue classes, so every cue seen is evidence. The
single-cue classes stay in the mix (ids first): easy single-cue videos still exit after
a frame or two, while a pair needs both cues and a shape-only video needs enough frames
to trust that no colour comes — what the gates have to learn to wait for. Evidence
segments of such a corpus carry their ``cue`` (``shape:circle``, ``colour:red``) in the
manifest; ``classes.json`` names them ``NN_cue_<shape>[_<colour>]``.

Class signatures and cues depend on the number of classes only (not on the seed), so
corpora made with different seeds share classes. Without complementary classes the
generator gives exactly the plans, frames and files it gave before they existed. Everything else is drawn from ``seed``: the same
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
    python -m frameexit.synthetic --out /tmp/mixed --videos 600 --classes 10 --complementary 6
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
from frameexit.synthetic.signatures import (
    COLOURS,
    CUE_SHAPES,
    SHAPES,
    TEXTURES,
    ComplementaryClass,
    Signature,
    class_signatures,
    complementary_family,
    corpus_classes,
    cue_patch,
)

__all__ = [
    "COLOURS",
    "CUE_SHAPES",
    "DEFAULT_DIFFICULTY_MIX",
    "DEFAULT_SPLITS",
    "DIFFICULTIES",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "SHAPES",
    "TEXTURES",
    "ComplementaryClass",
    "Segment",
    "Signature",
    "VideoPlan",
    "class_signatures",
    "complementary_family",
    "corpus_classes",
    "cue_patch",
    "encode_mp4",
    "evidence_mask",
    "frame_labels",
    "generate_corpus",
    "main",
    "plan_corpus",
    "render_video",
]
