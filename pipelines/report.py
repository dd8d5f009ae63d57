"""Writing an evaluation: Parquet tables, metrics.json, the paper's figures, the console table.

::

    Evaluation (frameexit.evaluation) ──► {out}/metrics.json
                                      ├─► {out}/<table>.parquet   predictions, exit_histogram,
                                      │   exit_matrix, per_class_frames, step_accuracy,
                                      │   threshold_sweep
                                      └─► {out}/fig3_exit_histogram.png, fig4_exit_matrix.png,
                                          fig5_per_class_frames.png, threshold_curve.png

Every file is written atomically (``frameexit.storage``), to a local path or any fsspec URI.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from frameexit.evaluation import Evaluation
from frameexit.storage import join_uri, write_bytes, write_parquet, write_text


def write_evaluation(
    out: str,
    evaluation: Evaluation,
    metrics: Mapping[str, Any],
    *,
    plots: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``evaluation``'s tables, ``metrics`` and (with ``plots``) the PNGs to ``out``."""
    for name, table in evaluation.tables.items():
        write_parquet(join_uri(out, f"{name}.parquet"), table, storage_options=storage_options)
    write_text(
        join_uri(out, "metrics.json"),
        json.dumps(dict(metrics), indent=2),
        storage_options=storage_options,
    )
    if not plots:
        return
    tables = evaluation.tables
    figures = {
        "fig3_exit_histogram.png": plot_exit_histogram(tables["exit_histogram"], metrics["metric"]),
        "fig4_exit_matrix.png": plot_exit_matrix(evaluation.exit_matrix),
        "fig5_per_class_frames.png": plot_per_class_frames(tables["per_class_frames"]),
        "threshold_curve.png": plot_threshold_curve(tables["threshold_sweep"], metrics),
    }
    for name, png in figures.items():
        write_bytes(join_uri(out, name), png, storage_options=storage_options)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """The end-of-run table: w/o exit, the paper's rule and the operating point per split,
    with Δ against w/o exit and its paired-bootstrap 90 % interval, the share of labels
    that differ from all T, and how many videos each number rests on."""
    metric = metrics["metric"]
    rows = [
        ("", "split", "videos", metric, f"Δ{metric} [90% CI]", "differs", "frames", "GFLOPs",
         "vs w/o exit")
    ]  # fmt: skip

    def add(name: str, m: Mapping[str, Any], frameexit: bool) -> None:
        acc = m["accuracy"] if frameexit else m["noexit_accuracy"]
        frames = m["mean_frames"] if frameexit else m["noexit_frames"]
        gflops = m["gflops"] if frameexit else m["noexit_gflops"]
        saving = f"{m['noexit_gflops'] / gflops:.2f}x fewer" if frameexit and gflops else ""
        delta = differs = ""
        if frameexit and "delta_accuracy" in m:
            low, high = m.get("delta_accuracy_ci90") or (math.nan, math.nan)
            delta = f"{100 * m['delta_accuracy']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
            differs = f"{100 * m['disagreement']:.1f}%"
        rows.append(
            (name, m["split"], str(m["num_videos"]), f"{100 * acc:.1f}", delta, differs,
             f"{frames:.2f}", f"{gflops:.4g}", saving)
        )  # fmt: skip

    point = metrics.get("operating_point")  # a run's: its summary; one evaluation's: a line
    if isinstance(point, Mapping) and point.get("bound") is not None:
        label = f"FrameExit ({point['score']}, {point['risk']} <= {point['bound']:g})"
    elif metrics.get("rule") == "paper":
        label = f"FrameExit (paper: τ={metrics['threshold']:g})"
    else:
        label = f"FrameExit ({metrics.get('exit_score', 'operating point')})"

    def paper_label(m: Mapping[str, Any]) -> str:
        return f"FrameExit (paper: β={m['beta']:g}, τ={m['threshold']:g})"

    add("w/o exit", metrics, False)
    if "paper" in metrics:
        add(paper_label(metrics["paper"]), metrics["paper"], True)
    run = isinstance(point, Mapping)
    add(label + (", calibrated here" if run else ""), metrics, True)
    test = metrics.get("test")
    if test is not None:
        add("w/o exit", test, False)
        if "test_paper" in metrics:
            add(paper_label(metrics["test_paper"]), metrics["test_paper"], True)
        add(label + (", chosen on val" if run else ""), test, True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    notes = []
    if point is not None:
        notes.append(f"operating point: {point['description'] if run else point}")
    if test is None:
        notes.append("no test split in the manifest: the numbers are on validation only")
    notes.append(
        "differs: share of videos whose label differs from their all-T label; Δ interval: "
        "paired bootstrap over the same videos"
    )
    return "\n" + "\n".join(lines) + "".join(f"\n({n})" for n in notes)


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


def plot_threshold_curve(sweep: pd.DataFrame, metrics: Mapping[str, Any]) -> bytes:
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
