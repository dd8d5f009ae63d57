"""The sweep's picture (the paper's Fig. 6 kind): every point, the Pareto front on top.

::

    accuracy ▲            ●━━━━━━━━●   front: thick line + ringed markers (gid "pareto_front")
             │       ●━━━━┛  ·  ·      β trials: large markers, one colour per T
             │   ●━━━┛ ·  ·            post-hoc thresholds: small markers, same colour
             └──────────────────────► GFLOPs per video

The front's coordinates are read back from the drawn artist and written next to the PNG
(``<name>.front.json``), so a test (or a reader) can check that the picture shows exactly
the table's Pareto rows.
"""

from __future__ import annotations

import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from frameexit.storage import write_bytes, write_text  # noqa: E402
from tuning.pareto import ACCURACY, GFLOPS, pareto_front, valid_mask  # noqa: E402

FRONT_GID = "pareto_front"
METRIC_LABELS = {"top1": "top-1 accuracy", "mAP": "mAP"}


def pareto_figure(points: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Scatter of all valid points (colour = T, size = β trial vs threshold), front on top."""
    valid = points[valid_mask(points)]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, group) in enumerate(_groups(valid)):
        colour = colours[index % len(colours)]
        source = group["source"] if "source" in group.columns else pd.Series("beta", group.index)
        post_hoc = group[source == "threshold"]
        trials = group[source != "threshold"]
        if len(post_hoc):
            ax.scatter(
                post_hoc[GFLOPS],
                post_hoc[ACCURACY],
                s=10,
                color=colour,
                alpha=0.5,
                marker=".",
                label=f"{label}, τ post hoc",
            )
        if len(trials):
            ax.scatter(
                trials[GFLOPS], trials[ACCURACY], s=40, color=colour, label=f"{label}, β trials"
            )
            if "beta" in trials.columns:
                for _, row in trials.iterrows():
                    ax.annotate(
                        f"β={row['beta']:.0e}",
                        (row[GFLOPS], row[ACCURACY]),
                        textcoords="offset points",
                        xytext=(4, 3),
                        fontsize=6,
                        color=colour,
                    )
    front = pareto_front(points)
    ax.plot(
        front[GFLOPS].to_numpy(),
        front[ACCURACY].to_numpy(),
        "-o",
        color="black",
        markerfacecolor="none",
        markersize=9,
        linewidth=1.5,
        gid=FRONT_GID,
        label="Pareto front",
        zorder=3,
    )
    metric = _metric_name(points)
    ax.set_xlabel("GFLOPs per video")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric or ACCURACY))
    ax.set_title(title or "Accuracy vs. cost (β trials and post-hoc exit thresholds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def drawn_front(fig: Figure) -> list[tuple[float, float]]:
    """The (GFLOPs, accuracy) points of the front line as drawn in ``fig``."""
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid() == FRONT_GID:
                xs, ys = line.get_data()
                return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
    raise LookupError("the figure has no Pareto front line")


def save_pareto_plot(
    points: pd.DataFrame,
    uri: str,
    *,
    title: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Draw, write the PNG to ``uri`` and the drawn front to ``<uri stem>.front.json``.

    Returns the sidecar's URI.
    """
    fig = pareto_figure(points, title=title)
    try:
        front = drawn_front(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    write_bytes(uri, buffer.getvalue(), storage_options=storage_options)
    sidecar = (uri[: -len(".png")] if uri.endswith(".png") else uri) + ".front.json"
    drawn = {"gflops": [p[0] for p in front], "accuracy": [p[1] for p in front]}
    write_text(sidecar, json.dumps(drawn), storage_options=storage_options)
    return sidecar


def _groups(valid: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One colour per T (per backbone and T when the sweep has several backbones)."""
    if "num_steps" not in valid.columns:
        return [("points", valid)] if len(valid) else []
    keys = ["num_steps"]
    if "backbone" in valid.columns and valid["backbone"].nunique() > 1:
        keys = ["backbone", "num_steps"]
    out = []
    for key, group in valid.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append((", ".join([*map(str, key[:-1]), f"T = {key[-1]}"]), group))
    return out


def _metric_name(points: pd.DataFrame) -> str | None:
    if "metric" not in points.columns:
        return None
    names = points["metric"].dropna().unique()
    return str(names[0]) if len(names) == 1 else None
