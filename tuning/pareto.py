"""Pareto-optimal (non-dominated) points of an accuracy–GFLOPs table.

A point ``p`` *dominates* ``q`` when it is at least as accurate **and** at most as
costly, and strictly better in one of the two::

    p.acc >= q.acc  and  p.gflops <= q.gflops  and  (p.acc > q.acc or p.gflops < q.gflops)

A row is Pareto-optimal when no valid row dominates it. Decisions, all tested in
``tests/test_tuning_pareto.py``:

- **Invalid rows** (NaN or infinite objective, or a ``status`` column other than
  ``"ok"``: failed/errored trials) are never on the front and never dominate anything.
- **Ties in one objective**: among rows with the same GFLOPs only the most accurate can
  be optimal; among rows with the same accuracy only the cheapest.
- **Exact duplicates** (same accuracy and GFLOPs) do not dominate each other, so
  :func:`pareto_mask` marks *all* copies as optimal (every trial keeps its own row and
  provenance in the table). :func:`pareto_front` returns the front as a curve and keeps
  *one* row per distinct point by default (the first in input order); pass
  ``dedupe=False`` to keep every copy.

Cost: O(n log n) (one sort, one sweep).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ACCURACY = "accuracy"
GFLOPS = "gflops"


def valid_mask(
    table: pd.DataFrame, *, maximize: str = ACCURACY, minimize: str = GFLOPS
) -> np.ndarray:
    """Rows whose objectives are finite numbers and whose ``status`` (if any) is ``"ok"``."""
    acc = pd.to_numeric(table[maximize], errors="coerce").to_numpy(dtype=float)
    cost = pd.to_numeric(table[minimize], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(acc) & np.isfinite(cost)
    if "status" in table.columns:
        ok &= (table["status"].astype(str) == "ok").to_numpy()
    return ok


def pareto_mask(
    table: pd.DataFrame, *, maximize: str = ACCURACY, minimize: str = GFLOPS
) -> np.ndarray:
    """Boolean array, True for each non-dominated valid row (exact duplicates: all True)."""
    n = len(table)
    mask = np.zeros(n, dtype=bool)
    valid = valid_mask(table, maximize=maximize, minimize=minimize)
    if not valid.any():
        return mask
    rows = np.flatnonzero(valid)
    acc = pd.to_numeric(table[maximize], errors="coerce").to_numpy(dtype=float)[rows]
    cost = pd.to_numeric(table[minimize], errors="coerce").to_numpy(dtype=float)[rows]
    # Cheapest first; among equal cost, most accurate first.
    order = np.lexsort((-acc, cost))
    best_cheaper = -np.inf  # best accuracy among strictly cheaper rows
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and cost[order[j]] == cost[order[i]]:
            j += 1
        group = order[i:j]  # same cost, sorted by accuracy descending
        top = acc[group[0]]
        if top > best_cheaper:
            # every row of this cost group that reaches the group's best accuracy
            mask[rows[group[acc[group] == top]]] = True
        best_cheaper = max(best_cheaper, top)
        i = j
    return mask


def pareto_front(
    table: pd.DataFrame,
    *,
    maximize: str = ACCURACY,
    minimize: str = GFLOPS,
    dedupe: bool = True,
) -> pd.DataFrame:
    """The non-dominated rows, sorted by cost (ascending), i.e. the front as a curve.

    With ``dedupe`` (default) exact duplicates collapse to their first row in input
    order; the index of ``table`` is kept so rows can be traced back.
    """
    front = table[pareto_mask(table, maximize=maximize, minimize=minimize)]
    if dedupe:
        front = front[~front.duplicated(subset=[minimize, maximize], keep="first")]
    return front.sort_values([minimize, maximize], ascending=[True, False], kind="stable")


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether point ``a = (accuracy, gflops)`` dominates ``b``."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])
