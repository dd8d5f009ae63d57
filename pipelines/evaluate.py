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

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from frameexit.config import Config
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
        z = torch.from_numpy(_tensor_column(batch.column("features"), feature_shape))
        step_logits, gate_probs, first = model.step_outputs(z)
        videos.extend(str(v) for v in batch.column("video").to_pylist())
        target = batch.column("target")
        if pa.types.is_integer(target.type):
            targets.append(target.to_numpy())
        else:  # multi-hot [K] per video (a Ray tensor column, or a plain list)
            targets.append(_tensor_column(target, (num_classes,)))
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


def _tensor_column(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
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
    thresholds: Sequence[float] | None = None,
    out: str | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model_uri`` on ``cache[split]`` (default ``data.val_split``) at exit
    threshold ``threshold`` (default ``model.exit_threshold``), sweep ``thresholds`` post
    hoc, write everything to ``out`` (default ``{run}/eval``) and return the metrics.

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
    tau = m.exit_threshold if threshold is None else float(threshold)
    data = read_cache_outputs(model, cache_uri, options_for(cache_uri, options))
    result = evaluate_outputs(
        logits=data["logits"],
        gate_probs=data["gate_probs"],
        target=data["target"],
        step_cost=step_gflops(model, m.image_size),
        threshold=tau,
        multi_label=m.multi_label,
        first_exits=data["first_exits"],
        thresholds=thresholds,
        videos=data["video"],
        class_names=_class_names(cfg),
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


def _class_names(cfg: Config) -> list[str]:
    """The class map beside the training manifest (cosmetic: indices when unavailable)."""
    try:
        from frameexit.manifests import load_manifest

        return list(load_manifest(cfg.data.manifest).class_names)
    except Exception:  # noqa: BLE001 - names are cosmetic
        return []
