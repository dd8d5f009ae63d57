"""Command line: ``python -m frameexit.synthetic --out URI --videos N [options]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import frameexit.synthetic
from frameexit.synthetic.corpus import generate_corpus

__all__ = ["main"]


def _weights(text: str) -> dict[str, float]:
    """Parse ``name=weight[,name=weight...]`` (``--difficulty-mix``, ``--splits``)."""
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
        prog="python -m frameexit.synthetic",
        description=frameexit.synthetic.__doc__.split("\n\n")[0],  # what the corpus is
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
    parser.add_argument(
        "--complementary", type=int, default=0, metavar="C",
        help="the last C classes are complementary (cues in separate frames; even, >= 4)",
    )  # fmt: skip
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
        complementary_classes=args.complementary,
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
