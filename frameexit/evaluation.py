"""Evaluation of all-steps outputs: accuracy, cost and the paper's exit statistics.

Input: every step's classifier logits and exit probabilities of N videos (from
``FrameExit.step_outputs`` on cached features, or from ``forward``), their targets and the
cost of one step. Nothing is decoded or trained::

    exit scores [N, T] ──operating point (score, λ_1..λ_T; or the paper's τ)──► exit step e [N]
    logits [N, T, K] ──pick f_e──► answers ──► top-1 / mAP    cost = e × step GFLOPs
                     └──f_T──► w/o exit (all T frames)
    tables: predictions, exit histogram (Fig. 3), exit matrix (Fig. 4), frames per class
            (Fig. 5), accuracy of each f_t, post-hoc threshold sweep

Single-label runs also report mAP (ActivityNet's metric); multi-label runs use mAP as
their accuracy (HVU). Every Δaccuracy against w/o exit comes with a paired-bootstrap 90 %
interval (same videos both ways), and the share of videos whose label differs from the
all-T label (what a disagreement bound controls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from frameexit.exits import DEFAULT_THRESHOLDS, exit_scores, exit_steps, threshold_sweep
from frameexit.flops import StepCost
from frameexit.metrics import (
    exit_histogram,
    exit_matrix,
    mean_average_precision,
    per_class_frames,
    top1_accuracy,
)
from frameexit.operating_point import (
    PAPER_THRESHOLD,
    OperatingPoint,
    family_curve,
    label_codes,
    paper_rule,
    step_losses,
)


@dataclass
class Evaluation:
    """Metrics (JSON-safe scalars), the exit matrix and the tables of one evaluation."""

    metrics: dict[str, Any]
    exit_matrix: np.ndarray
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def accuracy(step_logits: np.ndarray, target: np.ndarray, *, multi_label: bool) -> float:
    """Top-1 (softmax of ``step_logits [N, K]``) or, for multi-label targets, mAP (sigmoid)."""
    logits = torch.as_tensor(np.array(step_logits, dtype=np.float32))  # a writable copy
    truth = torch.as_tensor(np.array(target))
    if multi_label:
        return float(mean_average_precision(torch.sigmoid(logits), truth.float()))
    return float(top1_accuracy(torch.softmax(logits, -1), truth.long()))


def single_label_map(step_logits: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """mAP of single-label predictions (softmax scores against one-hot targets)."""
    hot = np.eye(num_classes, dtype=np.float32)[target]
    scores = torch.softmax(torch.as_tensor(step_logits), -1)
    return float(mean_average_precision(scores, torch.as_tensor(hot)))


def operating_point_exits(
    point: OperatingPoint,
    logits: np.ndarray,
    gate_probs: np.ndarray,
    *,
    multi_label: bool,
    first_exits: np.ndarray | None = None,
) -> np.ndarray:
    """1-based exit step of every video under ``point`` (the paper's rule keeps the
    official variant's step-1 confidence rule ``first_exits``)."""
    if point.rule == "paper":
        return exit_steps(gate_probs, point.thresholds[0], first_step_exits=first_exits)
    scores = exit_scores(point.score, logits, gate_probs, multi_label=multi_label)
    return point.exit_steps(scores)


def paired_interval(
    exit_values: np.ndarray,
    full_values: np.ndarray,
    *,
    statistic=None,
    level: float = 0.9,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired-bootstrap ``level`` interval of statistic(exit) − statistic(all T) over
    the same resampled videos (default statistic: the mean of per-video values)."""
    exit_values, full_values = np.asarray(exit_values), np.asarray(full_values)
    n = len(exit_values)
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    diffs = []
    if statistic is None:
        d = np.asarray(exit_values, dtype=np.float64) - np.asarray(full_values, dtype=np.float64)
        for start in range(0, resamples, 100):
            idx = rng.integers(0, n, size=(min(100, resamples - start), n))
            diffs.append(d[idx].mean(axis=1))
        values = np.concatenate(diffs)
    else:
        values = np.empty(resamples)
        for b in range(resamples):
            idx = rng.integers(0, n, size=n)
            values[b] = statistic(exit_values[idx]) - statistic(full_values[idx])
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def evaluate_outputs(
    *,
    logits: np.ndarray,
    gate_probs: np.ndarray,
    target: np.ndarray,
    step_cost: StepCost,
    threshold: float | None = None,
    operating_point: OperatingPoint | None = None,
    multi_label: bool,
    multi_label_threshold: float = 0.5,
    first_exits: np.ndarray | None = None,
    thresholds: Sequence[float] | None = None,
    videos: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Evaluation:
    """FrameExit at ``operating_point`` (default: the paper's rule at ``threshold``, 0.5
    when None) vs w/o exit, the exit statistics, and a post-hoc sweep of the paper's τ
    over ``thresholds`` (default :data:`DEFAULT_THRESHOLDS`).

    ``logits [N, T, K]``, ``gate_probs [N, T]``, ``target`` class ids ``[N]`` or multi-hot
    ``[N, K]``, ``first_exits [N]`` the official variant's step-1 rule (or None).
    """
    n, num_steps, num_classes = logits.shape
    point = operating_point or paper_rule(
        PAPER_THRESHOLD if threshold is None else threshold, num_steps
    )
    exit_step = operating_point_exits(
        point, logits, gate_probs, multi_label=multi_label, first_exits=first_exits
    )
    chosen = logits[np.arange(n), exit_step - 1]
    point_scores = exit_scores(point.score, logits, gate_probs, multi_label=multi_label)
    per_step = float(step_cost.total)
    pred = chosen.argmax(-1)
    correct = target[np.arange(n), pred] > 0 if multi_label else pred == target
    metric = "mAP" if multi_label else "top1"
    fe_acc = accuracy(chosen, target, multi_label=multi_label)
    noexit_acc = accuracy(logits[:, -1], target, multi_label=multi_label)
    mean_steps = float(exit_step.mean())
    metrics: dict[str, Any] = {
        "num_videos": int(n),
        "num_steps": int(num_steps),
        "metric": metric,
        "accuracy": fe_acc,
        metric: fe_acc,
        "mean_frames": mean_steps,
        "mean_steps": mean_steps,
        "gflops": mean_steps * per_step,
        "noexit_accuracy": noexit_acc,
        f"noexit_{metric}": noexit_acc,
        "noexit_frames": float(num_steps),
        "noexit_gflops": float(num_steps * per_step),
        "gflops_per_step": per_step,
        "backbone_gflops_per_step": float(step_cost.backbone),
        "gflops_saving": float(num_steps / max(mean_steps, 1e-9)),
        "threshold": float(point.thresholds[0]) if point.rule == "paper" else None,
        "rule": point.rule,
        "exit_score": point.score,
        "operating_point": point.describe(),
    }
    codes = label_codes(logits, multi_label=multi_label, threshold=multi_label_threshold)
    rows = np.arange(n)
    metrics["disagreement"] = float((codes[rows, exit_step - 1] != codes[:, -1]).mean())
    agree_final = codes == codes[:, -1:]
    metrics["oracle_mean_steps"] = float((agree_final.argmax(axis=1) + 1).mean())
    metrics["delta_accuracy"] = fe_acc - noexit_acc
    if multi_label:  # mAP is not a mean over videos: resample (video, step) pairs
        fe_idx = np.stack([rows, exit_step - 1], 1)
        interval = paired_interval(
            fe_idx, np.stack([rows, np.full(n, num_steps - 1)], 1), resamples=200,
            statistic=lambda pairs: accuracy(
                logits[pairs[:, 0], pairs[:, 1]], target[pairs[:, 0]], multi_label=True
            ),
        )  # fmt: skip
    else:
        interval = paired_interval(pred == target, logits[:, -1].argmax(-1) == target)
    metrics["delta_accuracy_ci90"] = list(interval)
    if not multi_label:  # ActivityNet reports mAP on single-label data: give both
        metrics["mAP"] = single_label_map(chosen, target, num_classes)
        metrics["noexit_mAP"] = single_label_map(logits[:, -1], target, num_classes)
    names = [] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    matrix = exit_matrix(logits, exit_step, target, multi_label)
    per_class = per_class_frames(exit_step, target, num_classes)
    per_class.insert(1, "name", names)
    tables = {
        "predictions": pd.DataFrame(
            {
                "video": list(videos) if videos is not None else [str(i) for i in range(n)],
                "target": list(target) if multi_label else target,
                "exit_step": exit_step,
                "frames": exit_step,
                "gflops": exit_step * per_step,
                "prediction": pred,
                "correct": correct,
                "exit_prob": gate_probs[np.arange(n), exit_step - 1],  # the gate's g_t
                # the score the operating point exits by (its `score`), at the exit step
                "exit_score": point_scores[np.arange(n), exit_step - 1],
            }
        ),
        "exit_histogram": exit_histogram(exit_step, correct, num_steps),
        "exit_matrix": pd.DataFrame(matrix, columns=[f"f{t + 1}" for t in range(num_steps)]).assign(
            exit_step=np.arange(1, num_steps + 1)
        ),
        "per_class_frames": per_class,
        "step_accuracy": pd.DataFrame(
            {
                "step": np.arange(1, num_steps + 1),
                metric: [
                    accuracy(logits[:, t], target, multi_label=multi_label)
                    for t in range(num_steps)
                ],
            }
        ),
        "exit_score_steps": _score_steps_table(logits, gate_probs, codes, multi_label),
        "threshold_sweep": threshold_sweep(
            logits,
            gate_probs,
            target,
            per_step,
            list(DEFAULT_THRESHOLDS if thresholds is None or len(thresholds) == 0 else thresholds),
            multi_label=multi_label,
            first_step_exits=first_exits,
        ),
    }
    if point.family is not None:
        losses = step_losses(codes, risk="disagreement")
        risks, steps = family_curve(np.asarray(point.family), point_scores, losses)
        tables["operating_point_family"] = pd.DataFrame(
            {"member": np.arange(1, len(risks) + 1), "disagreement": risks,
             "mean_steps": steps, "gflops": steps * per_step,
             "chosen": np.arange(1, len(risks) + 1) == point.member}
        )  # fmt: skip
    return Evaluation(metrics=metrics, exit_matrix=matrix, tables=tables)


def _score_steps_table(
    logits: np.ndarray, gate_probs: np.ndarray, codes: np.ndarray, multi_label: bool
) -> pd.DataFrame:
    """Per step: how well each exit score predicts "f_t agrees with f_T" (AUROC)."""
    agree = codes == codes[:, -1:]
    out: dict[str, Any] = {"step": np.arange(1, logits.shape[1] + 1)}
    out["agreement"] = agree.mean(axis=0)
    for name in ("gate", "confidence"):
        scores = exit_scores(name, logits, gate_probs, multi_label=multi_label)
        out[f"{name}_auroc"] = [_auroc(scores[:, t], agree[:, t]) for t in range(logits.shape[1])]
    return pd.DataFrame(out)


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney); NaN when one class is absent."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
