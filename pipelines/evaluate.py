"""Evaluation of a stage-2 model on its cached validation split (no video is decoded).

::

    features/{val}/*.parquet ── z [N, T, D], targets ──► classifiers f_t ─► logits [N, T, K]
                                                    └─► gates g_t ─► exit probs [N, T]
    exit step e = first t with p_t >= τ (else T)      answer = f_e(z_e), cost = e steps

Outputs in ``{run}/eval/`` (or ``out``):

    metrics.json              accuracy (top-1 or mAP), mean frames and GFLOPs per video,
                              for FrameExit and for w/o exit (all T frames)
    predictions.parquet       per video: exit step, frames, GFLOPs, prediction, correct
    exit_histogram.parquet    per step: videos that exited there, their accuracy (Fig. 3)
    exit_matrix.parquet       accuracy of classifier j on videos that exited at i (Fig. 4)
    per_class_frames.parquet  mean frames per class (Fig. 5)
    step_accuracy.parquet     accuracy of each classifier f_t on all videos
    threshold_sweep.parquet   post-hoc τ sweep: accuracy and GFLOPs per threshold
    fig3_exit_histogram.png, fig4_exit_matrix.png, fig5_per_class_frames.png,
    threshold_curve.png
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from frameexit.config import Config
from pipelines.common import RunPaths, ensure_ray, filesystem, join, pyarrow_filesystem
from pipelines.common import storage_options as options_for

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

    from tuning.posthoc import model_step_outputs

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
        step_logits, gate_probs, first = model_step_outputs(model, z)
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
    from frameexit.flops import step_gflops
    from frameexit.metrics import (
        exit_histogram,
        exit_matrix,
        mean_average_precision,
        per_class_frames,
        top1_accuracy,
    )
    from tuning.thresholds import DEFAULT_THRESHOLDS, exit_steps, threshold_sweep

    ensure_ray(cfg)
    split = split or cfg.data.val_split
    paths = RunPaths(cfg)
    out = out or paths.eval
    cache_uri = cache[split]
    model, model_cfg = load_model_checkpoint(
        model_uri, storage_options=options_for(cfg, model_uri) or None
    )
    m = model_cfg.model
    tau = m.exit_threshold if threshold is None else float(threshold)
    data = read_cache_outputs(model, cache_uri, options_for(cfg, cache_uri))
    logits, probs, target = data["logits"], data["gate_probs"], data["target"]
    n, num_steps, num_classes = logits.shape
    multi = m.multi_label

    def accuracy(step_logits: np.ndarray) -> float:
        t = torch.as_tensor(step_logits)
        if multi:
            return float(mean_average_precision(torch.sigmoid(t), torch.as_tensor(target).float()))
        return float(top1_accuracy(torch.softmax(t, -1), torch.as_tensor(target).long()))

    exit_step = exit_steps(probs, tau, first_step_exits=data["first_exits"])
    chosen = logits[np.arange(n), exit_step - 1]
    cost = step_gflops(model, m.image_size)
    step_cost = float(cost.total)
    pred = chosen.argmax(-1)
    if multi:
        correct = target[np.arange(n), pred] > 0
    else:
        correct = pred == target
    metric = "mAP" if multi else "top1"
    fe_acc, noexit_acc = accuracy(chosen), accuracy(logits[:, -1])
    metrics: dict[str, Any] = {
        "split": split,
        "num_videos": int(n),
        "num_steps": int(num_steps),
        "metric": metric,
        "accuracy": fe_acc,
        metric: fe_acc,
        "mean_frames": float(exit_step.mean()),
        "mean_steps": float(exit_step.mean()),
        "gflops": float(exit_step.mean() * step_cost),
        "noexit_accuracy": noexit_acc,
        f"noexit_{metric}": noexit_acc,
        "noexit_frames": float(num_steps),
        "noexit_gflops": float(num_steps * step_cost),
        "gflops_per_step": step_cost,
        "backbone_gflops_per_step": float(cost.backbone),
        "gflops_saving": float(num_steps / max(exit_step.mean(), 1e-9)),
        "threshold": tau,
        "beta": float(cfg.train.beta),
        "model": model_uri,
    }
    if not multi:  # ActivityNet reports mAP on single-label data: give both
        hot = np.eye(num_classes, dtype=np.float32)[target]
        for key, step_logits in (("mAP", chosen), ("noexit_mAP", logits[:, -1])):
            scores = torch.softmax(torch.as_tensor(step_logits), -1)
            metrics[key] = float(mean_average_precision(scores, torch.as_tensor(hot)))
    class_names = _class_names(cfg, num_classes)
    hist = exit_histogram(exit_step, correct, num_steps)
    matrix = exit_matrix(logits, exit_step, target, multi)
    per_class = per_class_frames(exit_step, target, num_classes)
    per_class.insert(1, "name", class_names)
    step_acc = pd.DataFrame(
        {
            "step": np.arange(1, num_steps + 1),
            metric: [accuracy(logits[:, t]) for t in range(num_steps)],
        }
    )
    sweep = threshold_sweep(
        logits,
        probs,
        target,
        step_cost,
        list(thresholds or DEFAULT_THRESHOLDS),
        multi_label=multi,
        first_step_exits=data["first_exits"],
    )
    predictions = pd.DataFrame(
        {
            "video": data["video"],
            "target": list(target) if multi else target,
            "exit_step": exit_step,
            "frames": exit_step,
            "gflops": exit_step * step_cost,
            "prediction": pred,
            "correct": correct,
            "exit_prob": probs[np.arange(n), exit_step - 1],
        }
    )
    options = options_for(cfg, out)
    tables = {
        "predictions": predictions,
        "exit_histogram": hist,
        "exit_matrix": pd.DataFrame(matrix, columns=[f"f{t + 1}" for t in range(num_steps)]).assign(
            exit_step=np.arange(1, num_steps + 1)
        ),
        "per_class_frames": per_class,
        "step_accuracy": step_acc,
        "threshold_sweep": sweep,
    }
    for name, table in tables.items():
        _write_bytes(join(out, f"{name}.parquet"), _parquet(table), options)
    _write_bytes(join(out, "metrics.json"), json.dumps(metrics, indent=2).encode(), options)
    if plots:
        figures = {
            "fig3_exit_histogram.png": plot_exit_histogram(hist, metric),
            "fig4_exit_matrix.png": plot_exit_matrix(matrix),
            "fig5_per_class_frames.png": plot_per_class_frames(per_class),
            "threshold_curve.png": plot_threshold_curve(sweep, metrics),
        }
        for name, png in figures.items():
            _write_bytes(join(out, name), png, options)
    log.info(
        "evaluation (%s, %d videos): %s %.3f at %.2f frames (w/o exit %.3f at %d) -> %s",
        split,
        n,
        metric,
        fe_acc,
        metrics["mean_frames"],
        noexit_acc,
        num_steps,
        out,
    )
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small table: FrameExit vs w/o exit."""
    metric = metrics["metric"]
    rows = [
        ("", metric, "frames", "GFLOPs"),
        (
            "w/o exit",
            f"{100 * metrics['noexit_accuracy']:.1f}",
            f"{metrics['noexit_frames']:.2f}",
            f"{metrics['noexit_gflops']:.3f}",
        ),
        (
            f"FrameExit (β={metrics['beta']:g}, τ={metrics['threshold']:g})",
            f"{100 * metrics['accuracy']:.1f}",
            f"{metrics['mean_frames']:.2f}",
            f"{metrics['gflops']:.3f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>7}  {r[2]:>7}  {r[3]:>9}" for r in rows]
    return (
        "\n" + "\n".join(lines) + f"\n({metrics['num_videos']} videos, {metrics['split']} split, "
        f"{metrics['gflops_saving']:.2f}x fewer GFLOPs)"
    )


# --- plots ----------------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return buffer.getvalue()


def plot_exit_histogram(hist: pd.DataFrame, metric: str) -> bytes:
    """Fig. 3 kind: videos exiting at each step (bars) and their accuracy (line)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(hist["step"], hist["count"], color="#4c72b0")
    ax.set_xlabel("exit step")
    ax.set_ylabel("videos")
    ax.set_xticks(hist["step"])
    twin = ax.twinx()
    twin.plot(hist["step"], 100 * hist["accuracy"], "o-", color="#dd8452")
    twin.set_ylabel(f"{metric} of exited videos (%)")
    twin.set_ylim(0, 105)
    ax.set_title("Exits per step")
    return _png(fig)


def plot_exit_matrix(matrix: np.ndarray) -> bytes:
    """Fig. 4 kind: accuracy of classifier j (columns) on videos that exited at i (rows)."""
    plt = _figure()
    t = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(100 * matrix, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(t), [str(i + 1) for i in range(t)])
    ax.set_yticks(range(t), [str(i + 1) for i in range(t)])
    ax.set_xlabel("classifier f_j")
    ax.set_ylabel("exit step i")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title("Exit matrix")
    return _png(fig)


def plot_per_class_frames(per_class: pd.DataFrame) -> bytes:
    """Fig. 5 kind: mean frames per class, sorted."""
    plt = _figure()
    table = per_class.dropna(subset=["mean_frames"]).sort_values("mean_frames")
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(table) + 1), 3.5))
    ax.bar(range(len(table)), table["mean_frames"], color="#55a868")
    ax.set_xticks(range(len(table)), [str(n) for n in table["name"]], rotation=70, fontsize=7)
    ax.set_ylabel("mean frames")
    ax.set_title("Frames per class")
    return _png(fig)


def plot_threshold_curve(sweep: pd.DataFrame, metrics: dict[str, Any]) -> bytes:
    """Accuracy vs GFLOPs over post-hoc exit thresholds, with the evaluated point."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ordered = sweep.sort_values("gflops")
    ax.plot(ordered["gflops"], 100 * ordered["accuracy"], "o-", ms=3, label="threshold sweep")
    ax.plot([metrics["gflops"]], [100 * metrics["accuracy"]], "r*", ms=12, label="FrameExit")
    ax.plot([metrics["noexit_gflops"]], [100 * metrics["noexit_accuracy"]], "ks", label="w/o exit")
    ax.set_xlabel("GFLOPs per video")
    ax.set_ylabel(f"{metrics['metric']} (%)")
    ax.legend(fontsize=8)
    return _png(fig)


# --- I/O ------------------------------------------------------------------------------


def _parquet(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _write_bytes(uri: str, payload: bytes, options: dict[str, Any]) -> None:
    fs, path = filesystem(uri, options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(payload)


def _class_names(cfg: Config, num_classes: int) -> list[str]:
    try:
        from frameexit.manifests import load_manifest

        names = list(load_manifest(cfg.data.manifest).class_names)
    except Exception:  # noqa: BLE001 - names are cosmetic
        names = []
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return names
