"""Pareto extraction, the Fig.-6 plot, and the post-hoc exit-threshold sweep (no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from tuning.pareto import dominates, pareto_front, pareto_mask
from tuning.plot import drawn_front, pareto_figure, save_pareto_plot


def table(points, **extra):
    acc, cost = zip(*points, strict=True) if points else ((), ())
    return pd.DataFrame({"accuracy": acc, "gflops": cost, **extra})


def brute_force(df: pd.DataFrame) -> np.ndarray:
    ok = [
        math.isfinite(a)
        and math.isfinite(c)
        and df.get("status", pd.Series("ok", df.index))[i] == "ok"
        for i, (a, c) in enumerate(zip(df["accuracy"], df["gflops"], strict=True))
    ]
    pts = list(zip(df["accuracy"], df["gflops"], strict=True))
    return np.array(
        [
            ok[i] and not any(ok[j] and dominates(pts[j], pts[i]) for j in range(len(pts)))
            for i in range(len(pts))
        ]
    )


def test_dominated_points_are_dropped():
    df = table([(0.70, 10.0), (0.60, 12.0), (0.80, 20.0), (0.75, 25.0), (0.50, 5.0)])
    assert pareto_mask(df).tolist() == [True, False, True, False, True]
    front = pareto_front(df)
    assert list(zip(front["gflops"], front["accuracy"], strict=True)) == [
        (5.0, 0.5),
        (10.0, 0.7),
        (20.0, 0.8),
    ]


def test_ties_in_each_objective():
    # Same GFLOPs: only the most accurate survives. Same accuracy: only the cheapest.
    df = table([(0.7, 10.0), (0.6, 10.0), (0.7, 12.0), (0.9, 12.0), (0.9, 15.0)])
    assert pareto_mask(df).tolist() == [True, False, False, True, False]


def test_exact_duplicates_all_marked_one_on_the_curve():
    df = table([(0.7, 10.0), (0.7, 10.0), (0.8, 20.0), (0.7, 10.0)], trial=["a", "b", "c", "d"])
    assert pareto_mask(df).tolist() == [True, True, True, True]
    front = pareto_front(df)
    assert front["trial"].tolist() == ["a", "c"]  # first copy, in input order
    assert pareto_front(df, dedupe=False)["trial"].tolist() == ["a", "b", "d", "c"]


def test_duplicates_of_a_dominated_point_are_all_dropped():
    df = table([(0.6, 10.0), (0.6, 10.0), (0.7, 9.0)])
    assert pareto_mask(df).tolist() == [False, False, True]


def test_nan_and_failed_trials_excluded_and_dominate_nothing():
    df = table(
        [(0.99, 1.0), (float("nan"), 1.0), (0.5, float("nan")), (0.6, 10.0), (0.9, math.inf)],
        status=["error", "ok", "ok", "ok", "ok"],
    )
    # The errored row would dominate everything; it is ignored, as are NaN/inf rows.
    assert pareto_mask(df).tolist() == [False, False, False, True, False]
    assert pareto_mask(table([(float("nan"), 1.0)])).tolist() == [False]
    assert pareto_front(table([])).empty


def test_matches_brute_force_on_random_points_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        df = table(
            list(
                zip(
                    rng.integers(0, 6, n) / 5,  # coarse grid: many ties and duplicates
                    rng.integers(1, 6, n).astype(float),
                    strict=True,
                )
            ),
            status=rng.choice(["ok", "ok", "ok", "error"], n),
        )
        assert pareto_mask(df).tolist() == brute_force(df).tolist()


def points_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": ["beta", "beta", "beta", "beta", "threshold", "threshold", "beta"],
            "num_steps": [2, 2, 3, 3, 3, 3, 3],
            "beta": [1e-6, 1e-2, 1e-6, 1e-2, 1e-6, 1e-6, 1e-4],
            "threshold": [0.5, 0.5, 0.5, 0.5, 0.0, 1.01, 0.5],
            "accuracy": [0.6, 0.5, 0.8, 0.55, 0.3, 0.81, 0.99],
            "gflops": [2.0, 1.2, 3.0, 1.5, 1.0, 3.0, 0.5],
            "metric": "top1",
            "status": ["ok", "ok", "ok", "ok", "ok", "ok", "error"],
        }
    )


def test_plot_front_matches_table(tmp_path):
    points = points_table()
    expected = [
        (g, a)
        for g, a in zip(
            pareto_front(points)["gflops"], pareto_front(points)["accuracy"], strict=True
        )
    ]
    assert expected == [(1.0, 0.3), (1.2, 0.5), (1.5, 0.55), (2.0, 0.6), (3.0, 0.81)]
    fig = pareto_figure(points)
    assert drawn_front(fig) == expected
    uri = str(tmp_path / "pareto.png")
    sidecar = save_pareto_plot(points, uri)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(sidecar) as handle:
        saved = json.load(handle)
    assert list(zip(saved["gflops"], saved["accuracy"], strict=True)) == expected
