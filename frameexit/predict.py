"""What is in a video: early-exit inference on files or folders, in this process (no Ray),
on CPU or GPU.

::

    frameexit predict clip.mp4 videos/ --checkpoint runs/x/checkpoints/stage2.pt
    frameexit predict clip.mp4 --checkpoint M --json            # one JSON object per video
    frameexit predict clip.mp4 --checkpoint M --visualize figs/  # Fig. 7 per video (PNG)

    from frameexit.predict import load_predictor
    predictor = load_predictor("runs/x/checkpoints/stage2.pt")
    predictor.predict("clip.mp4")    # Prediction(video=..., label='jumping', score=0.93, ...)
    predictor.predict_many(["a.mp4", "b.mp4"])

The answers are ``frameexit label``'s for the same checkpoint, config and exit rule: the
config is resolved the same way (:func:`frameexit.checkpoint.checkpoint_config`), videos
go through the same batched early exit (:func:`frameexit.inference.label_videos`, in
batches of ``label.batch_size``) and labels are chosen by the same
:func:`frameexit.inference.select_labels`. Exits follow the checkpoint's operating point;
``threshold`` is the paper's rule at that τ; ``early_exit=False`` runs all T steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from frameexit.config import Config
from frameexit.inference import (
    VideoOutcome,
    VideoRequest,
    device_plan,
    label_videos,
    named_answer,
    prepare_model,
)
from frameexit.storage import absolute_uri, list_files, options_for, scrub, url_to_fs

log = logging.getLogger("frameexit.predict")

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+=")


@dataclass
class Prediction:
    """One video's answer. ``status`` is ``ok`` or the kind of failure (``missing``,
    ``corrupt``, ``not_video``, ...) with ``error``; ``labels``/``label_ids``/``scores``
    best first (``label``/``score`` the first); ``exit_step`` of ``num_steps`` (1-based),
    ``frames_decoded`` (clip frames for 3D backbones), ``gflops`` spent on the video."""

    video: str
    status: str = "ok"
    label: str | None = None
    score: float | None = None
    labels: list[str] = field(default_factory=list)
    label_ids: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    exit_step: int | None = None
    num_steps: int = 0
    frames_decoded: int = 0
    gflops: float | None = None
    operating_point: str = ""
    error: str | None = None
    warning: str | None = None
    figure: str | None = None  # the Fig. 7 PNG written for it (``--visualize``)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return asdict(self)

    def describe(self) -> str:
        """One line for a person."""
        if not self.ok:
            return f"{self.video}: {self.status.upper()}: {self.error}"
        shown = ", ".join(f"{n} ({s:.3f})" for n, s in zip(self.labels, self.scores, strict=True))
        return (
            f"{self.video}: {shown or 'no label above the threshold'} | exit at step "
            f"{self.exit_step} of {self.num_steps} | {self.frames_decoded} frames decoded | "
            f"{self.gflops:.2f} GFLOPs" + (f" | note: {self.warning}" if self.warning else "")
        )


class Predictor:
    """A loaded model that answers videos (:func:`load_predictor` builds one). ``point``
    is the exit rule (None: all T steps); ``class_names`` name the K outputs."""

    def __init__(
        self,
        model: Any,
        cfg: Config,
        class_names: Sequence[str],
        *,
        device: str = "auto",
        decode_threads: int = 4,
    ) -> None:
        from frameexit.flops import step_gflops

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cfg = cfg
        self.class_names = list(class_names)
        self.step_gflops = float(step_gflops(model.cpu().eval(), cfg.model.image_size).total)
        self.plan = device_plan(cfg, device)
        self.model = prepare_model(model, self.plan)
        # labeling's rule (pipelines/labeling/job.py resolve_operating_point)
        self.point = self.model.default_operating_point() if cfg.label.early_exit else None
        self.pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="fe-predict")

    @property
    def rule(self) -> str:
        """The exit rule in words."""
        if self.point is None:
            return f"no early exit: all {self.model.num_steps} steps"
        return self.point.describe()

    def predict(
        self, video: str, start: float | None = None, end: float | None = None
    ) -> Prediction:
        """The answer for one video (or its ``[start, end)`` seconds)."""
        return self.predict_many([video], segments=[(start, end)])[0]

    def predict_many(
        self,
        videos: Sequence[str],
        *,
        segments: Sequence[tuple[float | None, float | None]] | None = None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per video, in order, in batches of ``label.batch_size``;
        a video that cannot be read gets its status and the others go on."""
        bounds = list(segments) if segments is not None else [(None, None)] * len(videos)
        requests = [
            VideoRequest(absolute_uri(v), _seconds(s), _seconds(e))
            for v, (s, e) in zip(videos, bounds, strict=True)
        ]
        size = max(1, int(self.cfg.label.batch_size))
        out: list[Prediction] = []
        for first in range(0, len(requests), size):
            outcomes = label_videos(
                self.model,
                requests[first : first + size],
                self.cfg,
                pool=self.pool,
                operating_point=self.point,
                exit=self.point is not None,
                plan=self.plan,
            )
            out += [self._prediction(o) for o in outcomes]
        return out

    def _prediction(self, outcome: VideoOutcome) -> Prediction:
        base = dict(
            video=outcome.uri,
            num_steps=self.model.num_steps,
            frames_decoded=outcome.frames_decoded,
            operating_point=self.rule,
            warning=outcome.warning,
        )
        if not outcome.ok:
            kind = outcome.error.kind if outcome.error is not None else "unreadable"
            message = scrub(str(outcome.error or "no answer"), self.cfg.data.storage_options)
            return Prediction(**base, status=kind, error=message)
        answer = named_answer(outcome, self.cfg, self.class_names, self.step_gflops)
        values = answer["scores"]
        return Prediction(**base, score=values[0] if values else None, **answer)

    def policy_frames(
        self, video: str, start: float | None = None, end: float | None = None
    ) -> tuple[list[int], np.ndarray]:
        """The file frame indices the policy visits (step order) and those frames (uint8
        ``[T, H, W, 3]``), as the model is given them (labeling's seed for random ones)."""
        from frameexit.policy import get_policy, video_seed
        from frameexit.sampling import open_window, step_indices
        from frameexit.video import open_video

        uri = absolute_uri(video)
        m = self.cfg.model
        options = self.cfg.data.storage_options
        with open_video(uri, self.cfg.data.decode, storage_options=options) as reader:
            window = open_window(reader, uri, _seconds(start), _seconds(end))
            seed = video_seed(self.cfg.train.seed, uri)
            indices = step_indices(window, get_policy(m.policy), m.num_steps, seed=seed)
            return indices, np.asarray(reader.get(indices))

    def visualize(self, prediction: Prediction, path: str) -> str:
        """Write the paper's Fig. 7 of an answered video to the local ``path`` (PNG)."""
        from frameexit.exit_strip import write_strip

        indices, frames = self.policy_frames(prediction.video)
        title = (
            f"{prediction.label or 'no label'} ({prediction.score or 0:.2f}) · exit at step "
            f"{prediction.exit_step} of {prediction.num_steps} · {prediction.gflops:.2f} GFLOPs"
        )
        return write_strip(path, frames, int(prediction.exit_step), title, frame_indices=indices)

    def close(self) -> None:
        """Stop the decode threads."""
        self.pool.shutdown(wait=True)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_predictor(
    checkpoint: str,
    *,
    device: str = "auto",
    threshold: float | None = None,
    early_exit: bool = True,
    config: str | None = None,
    overrides: Sequence[str] = (),
    classes: str | Sequence[str] | None = None,
    decode_threads: int = 4,
) -> Predictor:
    """A :class:`Predictor` for ``checkpoint`` (any URI). ``threshold``: the paper's rule
    at τ instead of the checkpoint's operating point; ``early_exit=False``: all T steps;
    ``config``/``overrides``: ``label.*``/``data.*`` settings as for ``frameexit label``;
    ``classes``: names (a list, or a ``classes.json`` URI) over the checkpoint's own."""
    from frameexit.checkpoint import checkpoint_config, model_from_state, operating_point_of

    checkpoint = absolute_uri(checkpoint)
    overrides = list(overrides)
    if threshold is not None:
        overrides.append(f"model.exit_threshold={threshold}")
    if not early_exit:
        overrides.append("label.early_exit=false")
    cfg, state, extra = checkpoint_config(checkpoint, config, overrides)
    model = model_from_state(cfg.model, state, source=checkpoint)
    model.operating_point = operating_point_of(extra, source=checkpoint)
    if cfg.label.early_exit and cfg.model.exit_threshold is None and model.operating_point is None:
        log.warning(
            "the checkpoint carries no operating point: exiting by the paper's rule (gate "
            "probability >= 0.5); nothing bounds how many answers differ from all T steps"
        )
    names = _class_names(cfg, extra, classes, checkpoint)
    return Predictor(model, cfg, names, device=device, decode_threads=decode_threads)


def _class_names(
    cfg: Config, extra: dict[str, Any], classes: str | Sequence[str] | None, checkpoint: str
) -> list[str]:
    """``classes``, else the checkpoint's names, else the class map beside its training
    manifest, else ``class_<i>`` with a loud warning."""
    from frameexit.checkpoint import checked_class_names, class_names_of, placeholder_class_names
    from frameexit.manifests import class_map_uri_for, read_class_names

    k = cfg.model.num_classes
    if isinstance(classes, str):
        options = options_for(classes, cfg.data.storage_options) or None
        classes = read_class_names(classes, storage_options=options)
    if classes is not None:
        return checked_class_names(classes, k, source="--classes")
    stored = class_names_of(extra, k, source=checkpoint)
    if stored is not None:
        return stored
    why = f"the checkpoint {checkpoint} stores none"
    if cfg.data.manifest:
        beside = class_map_uri_for(cfg.data.manifest)
        try:
            names = read_class_names(
                beside, storage_options=options_for(beside, cfg.data.storage_options) or None
            )
        except Exception as error:  # noqa: BLE001 - said in the warning below
            why += f", and its training class map {beside} is unreadable ({error})"
        else:
            if len(names) == k:
                log.info("class names from the training class map %s", beside)
                return names
            why += f", and its training class map {beside} has {len(names)} names, not {k}"
    return placeholder_class_names(k, why, logger=log)


def expand_inputs(
    inputs: Sequence[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Files as given; a directory (or prefix) becomes its video files, recursively, in
    name order (names starting with ``.`` left out)."""
    from frameexit.manifests.prepare import VIDEO_SUFFIXES

    videos: list[str] = []
    for item in inputs:
        options = options_for(item, storage_options)
        fs, path = url_to_fs(item, options)
        if not fs.isdir(path):
            videos.append(item)
            continue
        found = [
            f
            for f in list_files(item, suffixes=VIDEO_SUFFIXES, storage_options=options)
            if not f.rsplit("/", 1)[-1].startswith(".")
        ]
        if not found:
            log.warning("%s: no video files (%s) in it", item, ", ".join(VIDEO_SUFFIXES))
        videos += found
    return videos


def _seconds(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _figure_path(directory: str, video: str, taken: set[str]) -> str:
    import os

    stem = os.path.splitext(video.rstrip("/").rsplit("/", 1)[-1])[0] or "video"
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return os.path.join(directory, name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="frameexit predict",
        description="What is in a video: FrameExit early exit on files or folders, in "
        "this process (no Ray), on CPU or GPU. One line per video (--json: one JSON object).",
        epilog="exit codes: 0 done (a video that cannot be read is a row with its status), "
        "2 bad arguments/config/checkpoint, 3 runtime failure",
    )
    parser.add_argument("videos", nargs="+", help="video files or folders (any URI); "
                        "key.sub=value config overrides (label.*, data.*) may follow")  # fmt: skip
    parser.add_argument("--checkpoint", required=True, help="model checkpoint URI")
    parser.add_argument("--config", help="YAML config (label.*, data.*)")
    parser.add_argument("--classes", help="classes.json naming the outputs (default: the "
                        "checkpoint's own names)")  # fmt: skip
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="the paper's rule at this τ instead of "
                      "the checkpoint's operating point")  # fmt: skip
    rule.add_argument("--no-exit", action="store_true", help="use all T steps (no early exit)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per video")
    parser.add_argument("--visualize", metavar="DIR", help="write Fig. 7 of each video (PNG)")
    parser.add_argument("--decode-threads", type=int, default=4, help="decode threads")
    args = parser.parse_intermixed_args(argv)  # videos, options, overrides in any order
    args.overrides = [v for v in args.videos if _OVERRIDE.match(v)]
    args.videos = [v for v in args.videos if not _OVERRIDE.match(v)]
    if not args.videos:
        parser.error("no video or folder given")
    return args


def _setup_logging() -> None:
    """Warnings and this package's notes on stderr (stdout holds only the answers)."""
    from frameexit.secrets import install_secret_filter

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("frameexit").setLevel(logging.INFO)
    install_secret_filter()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """``frameexit predict``: print one answer per video; return them as dicts."""
    import os

    args = parse_args(argv)
    _setup_logging()
    with load_predictor(
        args.checkpoint,
        device=args.device,
        threshold=args.threshold,
        early_exit=not args.no_exit,
        config=args.config,
        overrides=args.overrides,
        classes=args.classes,
        decode_threads=args.decode_threads,
    ) as predictor:
        videos = expand_inputs(args.videos, predictor.cfg.data.storage_options)
        if not args.json:
            print(f"operating point: {predictor.rule}", flush=True)
        predictions = predictor.predict_many(videos)
        taken: set[str] = set()
        if args.visualize:
            os.makedirs(args.visualize, exist_ok=True)
        for p in predictions:
            if args.visualize and p.ok:
                try:
                    p.figure = predictor.visualize(p, _figure_path(args.visualize, p.video, taken))
                except Exception as error:  # noqa: BLE001 - the answer stands without it
                    log.warning("%s: no figure (%s)", p.video, error)
            print(json.dumps(p.to_dict()) if args.json else p.describe(), flush=True)
    return [p.to_dict() for p in predictions]


if __name__ == "__main__":
    main(sys.argv[1:])
