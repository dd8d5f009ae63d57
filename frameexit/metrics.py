"""Evaluation metrics: top-1, mAP, cost per video, and the paper's exit statistics.

Inputs may be torch tensors or numpy arrays. ``labels`` are integer class ids ``[N]`` or
multi-hot ``[N, K]``; steps are 1-based (exit step 1..T) as in reported results.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _multi_hot(labels: Any, num_classes: int) -> np.ndarray:
    """``[N]`` class ids or ``[N, K]`` multi-hot → boolean ``[N, K]``."""
    labels = _np(labels)
    if labels.ndim == 2:
        return labels > 0
    out = np.zeros((labels.shape[0], num_classes), dtype=bool)
    out[np.arange(labels.shape[0]), labels.astype(np.int64)] = True
    return out


def _hits(scores: np.ndarray, labels: Any) -> np.ndarray:
    """Per video: is the top-scoring class a correct one? (multi-label: any positive)."""
    top = scores.argmax(axis=-1)
    return _multi_hot(labels, scores.shape[-1])[np.arange(scores.shape[0]), top]


def top1_accuracy(scores: Any, labels: Any) -> float:
    """Fraction of videos whose top-scoring class is correct (for multi-hot labels: one
    of the positives, as the authors' Hit@1). NaN for no videos."""
    scores = _np(scores)
    if scores.shape[0] == 0:
        return float("nan")
    return float(_hits(scores, labels).mean())


def average_precision_per_class(scores: Any, labels: Any) -> np.ndarray:
    """AP of every class ``[K]``: the mean of precision@rank over the ranks of its positives.

    Videos are ranked by descending score; ties keep the input order (stable sort), so a
    result never depends on sort internals. Classes without positives get NaN.
    """
    scores = _np(scores).astype(np.float64)
    truth = _multi_hot(labels, scores.shape[1])
    result = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        positives = truth[:, k]
        if not positives.any():
            continue
        ranked = positives[np.argsort(-scores[:, k], kind="stable")]
        precision = np.cumsum(ranked) / np.arange(1, ranked.size + 1)
        result[k] = precision[ranked].mean()
    return result


def mean_average_precision(scores: Any, multi_hot: Any) -> float:
    """mAP: per-class AP averaged over the classes that have at least one positive.

    Classes with no positive video are skipped (their AP is undefined); NaN if no class
    has any. ``multi_hot`` may also be integer class ids ``[N]``.
    """
    ap = average_precision_per_class(scores, multi_hot)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def exit_histogram(exit_step: Any, correct: Any, num_steps: int) -> pd.DataFrame:
    """Per step t = 1..T: how many videos exited there and how many of those were right.

    Columns ``step, count, fraction, accuracy`` (accuracy NaN where count is 0); counts
    sum to N (every video exits exactly once).
    """
    steps = _np(exit_step).astype(np.int64)
    right = _np(correct).astype(bool)
    if steps.size and (steps.min() < 1 or steps.max() > num_steps):
        raise ValueError(f"exit steps must be in 1..{num_steps}")
    rows = []
    for t in range(1, num_steps + 1):
        mask = steps == t
        count = int(mask.sum())
        rows.append(
            {
                "step": t,
                "count": count,
                "fraction": count / steps.size if steps.size else float("nan"),
                "accuracy": float(right[mask].mean()) if count else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["step", "count", "fraction", "accuracy"])


def exit_matrix(
    step_logits: Any, exit_step: Any, targets: Any, multi_label: bool = False
) -> np.ndarray:
    """``M[i, j]`` = accuracy of classifier f_{j+1} on the videos that exited at step i+1.

    ``step_logits [N, T, K]`` are all classifiers' outputs (from ``forward``). Accuracy
    is top-1 (for multi-label targets: the top class is one of the positives). Rows of
    steps where no video exited are NaN. (The paper's Fig. 4.)
    """
    logits = _np(step_logits)
    steps = _np(exit_step).astype(np.int64)
    n, num_steps, num_classes = logits.shape
    expected_dims = 2 if multi_label else 1
    if _np(targets).ndim != expected_dims:
        kind = "multi-hot [N, K]" if multi_label else "class ids [N]"
        raise ValueError(f"exit_matrix: targets must be {kind}, got shape {_np(targets).shape}")
    truth = _multi_hot(targets, num_classes)
    top = logits.argmax(axis=-1)  # [N, T]
    hits = np.take_along_axis(truth, top, axis=1)  # [N, T]: f_j right on video n?
    matrix = np.full((num_steps, num_steps), np.nan)
    for i in range(num_steps):
        mask = steps == i + 1
        if mask.any():
            matrix[i] = hits[mask].mean(axis=0)
    return matrix


def mean_frames(frames_used: Any) -> float:
    """Average frames (steps) per video."""
    return float(_np(frames_used).astype(np.float64).mean())


def mean_gflops(frames_used: Any, gflops_per_step: float) -> float:
    """Average GFLOPs per video: mean frames × the cost of one step (backbone + heads)."""
    return mean_frames(frames_used) * gflops_per_step


def per_class_frames(frames_used: Any, labels: Any, num_classes: int) -> pd.DataFrame:
    """Frames used per class (the paper's Fig. 5): columns ``class, count, mean_frames``.

    A multi-label video counts for each of its classes; classes without videos have
    count 0 and mean_frames NaN.
    """
    frames = _np(frames_used).astype(np.float64)
    truth = _multi_hot(labels, num_classes)
    counts = truth.sum(axis=0)
    sums = (truth * frames[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return pd.DataFrame(
        {"class": np.arange(num_classes), "count": counts.astype(np.int64), "mean_frames": means}
    )
