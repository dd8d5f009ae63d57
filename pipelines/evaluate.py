"""Evaluation of a stage-2 model on a cached split (no video is decoded).

::

    features/{split}/*.parquet ── z [N, T, D], targets ──► FrameExit.step_outputs
        ──► logits [N, T, K], exit probs [N, T] ──► frameexit.evaluation.evaluate_outputs
        ──► metrics + tables ──► pipelines.report.write_evaluation ──► {run}/eval/

Computing lives in ``frameexit.evaluation`` (plain arrays in, metrics and tables out);
writing the tables and figures in ``pipelines.report``. This module reads the cache and
joins the two. Outputs (see ``pipelines.report``): ``metrics.json``, Parquet tables
(predictions, exit histogram, exit matrix, per-class frames, step accuracy, post-hoc
threshold sweep) and the Fig. 3/4/5-style PNGs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from frameexit.config import Config
from frameexit.operating_point import OperatingPoint
from frameexit.storage import options_for, pyarrow_filesystem
from pipelines.common import RunPaths

log = logging.getLogger("frameexit.pipelines.evaluate")


def read_cache_outputs(
    model: torch.nn.Module,
    cache_uri: str,
    options: dict[str, Any] | None = None,
    *,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Stream a feature-cache split through the model's heads: per video ``video``,
    ``target``, ``logits [N, T, K]``, ``gate_probs [N, T]``, ``first_exits [N]`` or None.

    Only heads and gates run; features are read and dropped batch by batch (pyarrow
    record batches on the driver: no Ray Data job, whose start-up dominates for the few
    MB a validation cache holds), so memory holds N × T × K numbers, not N × T × D.
    """
    import pyarrow.dataset as pads

    cfg = model.cfg
    feature_shape, num_classes = (cfg.num_steps, -1), cfg.num_classes
    fs, path = pyarrow_filesystem(cache_uri, options)
    dataset = pads.dataset(path, format="parquet", filesystem=fs)
    videos, targets, logits, probs, firsts = [], [], [], [], []
    model.eval()
    for batch in dataset.to_batches(columns=["video", "target", "features"], batch_size=batch_size):
        if batch.num_rows == 0:
            continue
        z = torch.from_numpy(tensor_column(batch.column("features"), feature_shape))
        step_logits, gate_probs, first = model.step_outputs(z)
        videos.extend(str(v) for v in batch.column("video").to_pylist())
        target = batch.column("target")
        if pa.types.is_integer(target.type):
            targets.append(target.to_numpy())
        else:  # multi-hot [K] per video (a Ray tensor column, or a plain list)
            targets.append(tensor_column(target, (num_classes,)))
        logits.append(step_logits.numpy())
        probs.append(gate_probs.numpy())
        if first is not None:
            firsts.append(first.numpy())
    if not videos:
        raise ValueError(f"{cache_uri}: the feature cache is empty")
    return {
        "video": np.asarray(videos, dtype=object),
        "target": np.concatenate(targets),
        "logits": np.concatenate(logits),
        "gate_probs": np.concatenate(probs),
        "first_exits": np.concatenate(firsts) if firsts else None,
    }


def tensor_column(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor column of per-row ``shape`` (Ray's tensor extension type, or the plain
    nested/flattened ``large_list`` it is stored as) → float32 ``[rows, *shape]``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column.type, pa.ExtensionType):
        column = column.storage
    rows = len(column)
    values = column
    while isinstance(values.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32)  # writable: torch shares it
    known = int(np.prod([d for d in shape if d != -1]))
    if rows and (flat.size % (rows * known) or (-1 not in shape and flat.size != rows * known)):
        raise ValueError(f"tensor column of {flat.size} values is not {rows} × {list(shape)}")
    return flat.reshape(rows, *shape)


def evaluate(
    cfg: Config,
    model_uri: str,
    cache: dict[str, str],
    *,
    split: str | None = None,
    threshold: float | None = None,
    operating_point: OperatingPoint | None = None,
    thresholds: Sequence[float] | None = None,
    out: str | None = None,
    plots: bool = True,
    outputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_uri`` on ``cache[split]`` (default ``data.val_split``) at
    ``operating_point`` (else the paper's rule at ``threshold``, else the checkpoint's own
    rule: ``FrameExit.default_operating_point``), sweep the paper's τ over ``thresholds``
    post hoc, write everything to ``out`` (default ``{run}/eval``), return the metrics.
    ``outputs``: this model's :func:`read_cache_outputs` of that split, when the caller
    has read them already (several rules on one split read it once).

    Returned keys include ``accuracy`` (= ``top1``, or ``mAP`` when ``multi_label``;
    single-label runs also get ``mAP``, the ActivityNet metric), ``gflops``,
    ``mean_frames``, ``noexit_accuracy``, ``noexit_gflops``, ``gflops_saving``.
    """
    from frameexit.checkpoint import load_model_checkpoint
    from frameexit.evaluation import evaluate_outputs
    from frameexit.flops import step_gflops
    from pipelines.report import write_evaluation

    split = split or cfg.data.val_split
    out = out or RunPaths(cfg).eval
    cache_uri = cache[split]
    options = cfg.data.storage_options
    model, model_cfg = load_model_checkpoint(
        model_uri, storage_options=options_for(model_uri, options) or None
    )
    m = model_cfg.model
    point = model.exit_rule(threshold, operating_point)
    if outputs is None:
        outputs = read_cache_outputs(model, cache_uri, options_for(cache_uri, options))
    data = outputs
    result = evaluate_outputs(
        logits=data["logits"],
        gate_probs=data["gate_probs"],
        target=data["target"],
        step_cost=step_gflops(model, m.image_size),
        operating_point=point,
        multi_label=m.multi_label,
        multi_label_threshold=cfg.label.multi_label_threshold,
        first_exits=data["first_exits"],
        thresholds=thresholds,
        videos=data["video"],
        class_names=_class_names(cfg, model),
    )
    metrics = {
        "split": split,
        **result.metrics,
        "beta": float(cfg.train.beta),
        "model": model_uri,
    }
    write_evaluation(out, result, metrics, plots=plots, storage_options=options_for(out, options))
    log.info(
        "evaluation (%s, %d videos): %s %.3f at %.2f frames (w/o exit %.3f at %d) -> %s",
        split,
        metrics["num_videos"],
        metrics["metric"],
        metrics["accuracy"],
        metrics["mean_frames"],
        metrics["noexit_accuracy"],
        metrics["num_steps"],
        out,
    )
    return metrics


def calibrate_on_cache(
    cfg: Config,
    model_uri: str,
    cache: dict[str, str],
    *,
    shape_split: str,
    split: str,
    held: dict[str, Any] | None = None,
) -> OperatingPoint:
    """The operating point of ``exit.*``: Learn-then-Test on the cached ``split`` (held
    out; ``held``: its :func:`read_cache_outputs` when read already), over a family fitted
    on the cached ``shape_split`` (training videos) when ``exit.family=fitted``."""
    from frameexit.checkpoint import load_model_checkpoint
    from frameexit.operating_point import choose_operating_point

    options = cfg.data.storage_options
    model, model_cfg = load_model_checkpoint(
        model_uri, storage_options=options_for(model_uri, options) or None
    )
    shape = None
    if cfg.exit.family == "fitted":
        shape_uri = cache[shape_split]
        shape = read_cache_outputs(model, shape_uri, options_for(shape_uri, options))
    if held is None:
        held = read_cache_outputs(model, cache[split], options_for(cache[split], options))
    risk, bound = cfg.exit.risk
    point = choose_operating_point(
        score=cfg.exit.score_or(), risk=risk, bound=bound, delta=cfg.exit.delta,
        family_size=cfg.exit.family_size, family=cfg.exit.family, shape=shape,
        calibration=held,
        multi_label=model_cfg.model.multi_label,
        multi_label_threshold=cfg.label.multi_label_threshold,
        calibrated_on=f"split {split!r}"
        + (f" (family fitted on {shape_split!r})" if shape is not None else ""),
    )  # fmt: skip
    (log.warning if point.fallback else log.info)("operating point: %s", point.describe())
    return point


def _class_names(cfg: Config, model: Any = None) -> list[str]:
    """The class names the checkpoint stores, else the class map beside the training
    manifest (cosmetic: indices when neither is available)."""
    stored = getattr(model, "class_names", None)
    if stored:
        return list(stored)
    try:
        from frameexit.manifests import load_manifest

        return list(load_manifest(cfg.data.manifest).class_names)
    except Exception:  # noqa: BLE001 - names are cosmetic
        return []


# --- any checkpoint, any split, K views ---------------------------------------------------


def evaluate_checkpoint(
    cfg: Config,
    model_uri: str,
    *,
    split: str,
    views: int = 1,
    threshold: float | None = None,
    out: str,
    plots: bool = True,
) -> dict[str, Any]:
    """Decode ``split`` of ``data.manifest`` and evaluate the checkpoint ``model_uri`` on it
    with ``views`` spatial crops per video (no feature cache needed); writes ``out``. Exits
    follow the checkpoint's operating point unless ``threshold`` (the paper's rule) or
    ``model.exit_threshold`` says otherwise.

    Protocol. ``views=1`` is the paper's: one centre crop, the policy's T frames over the
    whole video (or segment). ``views=V`` (V = 3: left/centre/right along the longer side)
    is the multi-crop protocol common in video recognition, *not* the paper's: each view
    runs every step, and per step the class scores (softmax, or sigmoid when multi-label)
    and the exit probabilities are averaged over the views before the exit rule; a video
    then costs V × its exit step × the step's GFLOPs.
    """
    import ray.data

    from frameexit.checkpoint import read_model_checkpoint
    from frameexit.evaluation import evaluate_outputs
    from frameexit.flops import StepCost, step_gflops
    from pipelines.common import ensure_ray, shared
    from pipelines.data import video_dataset
    from pipelines.features import FeatureExtractor
    from pipelines.report import write_evaluation

    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    ensure_ray(cfg)
    options = options_for(model_uri, cfg.data.storage_options)
    _, model_cfg, _ = read_model_checkpoint(model_uri, storage_options=options or None)
    asked = cfg.model.exit_threshold  # model.exit_threshold=τ on the command line
    cfg.model = model_cfg.model  # the checkpoint decides what the model sees
    if asked is not None:
        cfg.model.exit_threshold = asked
    ds = video_dataset(cfg, split, train=False, views=views).map_batches(
        FeatureExtractor,
        fn_constructor_kwargs={
            "model_uri": model_uri,
            "storage_options": shared(options),
            "use_gpu": cfg.train.use_gpu,
            "steps_only": True,
        },
        batch_size=cfg.data.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cfg.train.num_workers)),
        num_cpus=cfg.train.cpus_per_worker,
        num_gpus=1 if cfg.train.use_gpu else 0,
    )
    frame = ds.to_pandas()
    if frame.empty:
        raise ValueError(f"{cfg.data.manifest}: no video of split {split!r} could be decoded")
    frame = frame.sort_values(["view", "row"], kind="stable")
    per_view = [group.reset_index(drop=True) for _, group in frame.groupby("view", sort=True)]
    m = model_cfg.model
    logits = np.stack([np.stack(f["logits"].map(np.asarray)) for f in per_view])
    probs = np.stack([np.stack(f["gate_probs"].map(np.asarray)) for f in per_view])
    num = logits.shape[-1]
    logits = logits.reshape(views, len(per_view[0]), m.num_steps, num).astype(np.float32)
    scores = (
        torch.sigmoid(torch.as_tensor(logits))
        if m.multi_label
        else torch.softmax(torch.as_tensor(logits), -1)
    )
    mean_scores = scores.mean(0).clamp(1e-7, 1 - 1e-7 if m.multi_label else 1.0)
    combined = (
        torch.logit(mean_scores) if m.multi_label else torch.log(mean_scores)
    ).numpy()  # softmax/sigmoid of these are the averaged scores
    first = None
    if "first_exits" in per_view[0]:
        first = np.mean([f["first_exits"].to_numpy(dtype=float) for f in per_view], 0) >= 0.5
    target = per_view[0]["target"]
    target = np.stack(target.map(np.asarray)) if m.multi_label else target.to_numpy()
    model = model_from(model_uri, options)
    model.cfg.exit_threshold = cfg.model.exit_threshold
    point = model.exit_rule(threshold)
    cost = step_gflops(model, m.image_size)
    view_cost = StepCost(*(views * value for value in dataclasses.astuple(cost)))
    result = evaluate_outputs(
        logits=combined,
        gate_probs=probs.reshape(views, -1, m.num_steps).mean(0),
        target=target,
        step_cost=view_cost,
        operating_point=point,
        multi_label=m.multi_label,
        multi_label_threshold=cfg.label.multi_label_threshold,
        first_exits=first,
        videos=per_view[0]["video"].tolist(),
        class_names=_class_names(cfg, model),
    )
    metrics = {
        "split": split,
        **result.metrics,
        "views": int(views),
        "protocol": "paper (1 centre crop)"
        if views == 1
        else f"{views} spatial crops (not the paper's)",
        "beta": float(cfg.train.beta),
        "model": model_uri,
    }
    write_evaluation(
        out,
        result,
        metrics,
        plots=plots,
        storage_options=options_for(out, cfg.data.storage_options),
    )
    return metrics


def model_from(uri: str, options: dict[str, Any]) -> torch.nn.Module:
    """The model of a checkpoint (eval mode, CPU)."""
    from frameexit.checkpoint import load_model_checkpoint

    return load_model_checkpoint(uri, storage_options=options or None)[0]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python pipelines/evaluate.py --checkpoint X --split test --views 3 [a.b=value]``."""
    import argparse
    import sys

    from frameexit.config import load_config
    from frameexit.storage import absolute_uri, join_uri, parent_uri
    from pipelines.common import (
        add_common_flags,
        print_config,
        resolved_config_help,
        setup_logging,
    )
    from pipelines.report import format_metrics

    line = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="frameexit evaluate",
        description="Evaluate a FrameExit checkpoint on a split of a manifest (decodes it)",
        epilog=resolved_config_help("evaluate", line)
        + "\nexit codes: 0 done, 2 bad arguments/config/checkpoint, 3 runtime failure",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required="--print-config" not in line, help="model checkpoint URI"
    )
    parser.add_argument("--config", help="YAML config (data.*: manifest, storage options)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--views", type=int, default=1, help="spatial crops per video")
    parser.add_argument(
        "--threshold",
        type=float,
        help="the paper's rule at this τ (gate probability >= τ at every step) instead of "
        "the checkpoint's operating point",
    )
    parser.add_argument("--output", help="output folder (default: beside the checkpoint)")
    add_common_flags(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)
    setup_logging(verbose_console=args.verbose)
    if args.print_config:
        return print_config(load_config(args.config, args.overrides))
    checkpoint = absolute_uri(args.checkpoint)
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.manifest:
        from frameexit.checkpoint import read_model_checkpoint

        options = options_for(checkpoint, cfg.data.storage_options)
        cfg.data.manifest = read_model_checkpoint(checkpoint, storage_options=options or None)[
            1
        ].data.manifest
    out = args.output or join_uri(
        parent_uri(parent_uri(checkpoint)), "eval", f"{args.split}-views{args.views}"
    )
    metrics = evaluate_checkpoint(
        cfg, checkpoint, split=args.split, views=args.views, threshold=args.threshold, out=out
    )
    print(format_metrics(metrics), flush=True)
    print(f"({metrics['protocol']}; outputs: {out})", flush=True)
    return metrics


if __name__ == "__main__":
    import sys

    from pipelines.common import run_command

    sys.exit(run_command(main, sys.argv[1:]))
