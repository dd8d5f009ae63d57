"""Evaluation of all-steps outputs: accuracy, cost and the paper's exit statistics.

Input: every step's classifier logits and exit probabilities of N videos (from
``FrameExit.step_outputs`` on cached features, or from ``forward``), their targets and the
cost of one step. Nothing is decoded or trained::

    gate probs [N, T] ──exit rule τ──► exit step e [N]      (frameexit.exits.exit_steps)
    logits [N, T, K] ──pick f_e──► answers ──► top-1 / mAP    cost = e × step GFLOPs
                     └──f_T──► w/o exit (all T frames)
    tables: predictions, exit histogram (Fig. 3), exit matrix (Fig. 4), frames per class
            (Fig. 5), accuracy of each f_t, post-hoc threshold sweep

Single-label runs also report mAP (ActivityNet's metric); multi-label runs use mAP as
their accuracy (HVU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from frameexit.exits import DEFAULT_THRESHOLDS, exit_steps, threshold_sweep
from frameexit.flops import StepCost
from frameexit.metrics import (
    exit_histogram,
    exit_matrix,
    mean_average_precision,
    per_class_frames,
    top1_accuracy,
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


def evaluate_outputs(
    *,
    logits: np.ndarray,
    gate_probs: np.ndarray,
    target: np.ndarray,
    step_cost: StepCost,
    threshold: float,
    multi_label: bool,
    first_exits: np.ndarray | None = None,
    thresholds: Sequence[float] | None = None,
    videos: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Evaluation:
    """FrameExit at exit threshold ``threshold`` vs w/o exit, the exit statistics, and a
    post-hoc sweep of ``thresholds`` (default :data:`DEFAULT_THRESHOLDS`).

    ``logits [N, T, K]``, ``gate_probs [N, T]``, ``target`` class ids ``[N]`` or multi-hot
    ``[N, K]``, ``first_exits [N]`` the official variant's step-1 rule (or None).
    """
    n, num_steps, num_classes = logits.shape
    exit_step = exit_steps(gate_probs, threshold, first_step_exits=first_exits)
    chosen = logits[np.arange(n), exit_step - 1]
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
        "threshold": float(threshold),
    }
    if not multi_label:  # ActivityNet reports mAP on single-label data: give both
        metrics["mAP"] = single_label_map(chosen, target, num_classes)
        metrics["noexit_mAP"] = single_label_map(logits[:, -1], target, num_classes)
    names = list(class_names or [])
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
                "exit_prob": gate_probs[np.arange(n), exit_step - 1],
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
        "threshold_sweep": threshold_sweep(
            logits,
            gate_probs,
            target,
            per_step,
            list(thresholds or DEFAULT_THRESHOLDS),
            multi_label=multi_label,
            first_step_exits=first_exits,
        ),
    }
    return Evaluation(metrics=metrics, exit_matrix=matrix, tables=tables)


def choose_threshold(
    sweep: pd.DataFrame, noexit_accuracy: float, *, tolerance: float = 0.01
) -> dict[str, float]:
    """The operating point on a validation sweep: the exit threshold τ with the fewest
    GFLOPs whose accuracy is within ``tolerance`` of w/o exit (the most accurate τ when
    none is). Returns ``threshold``, ``accuracy``, ``gflops``, ``mean_steps`` there."""
    ok = sweep[sweep["accuracy"] >= noexit_accuracy - tolerance - 1e-12]
    pick = (
        ok.sort_values(["gflops", "threshold"], kind="stable").iloc[0]
        if len(ok)
        else sweep.sort_values(["accuracy", "gflops"], ascending=[False, True]).iloc[0]
    )
    return {
        "threshold": float(pick["threshold"]),
        "accuracy": float(pick["accuracy"]),
        "gflops": float(pick["gflops"]),
        "mean_steps": float(pick["mean_steps"]),
        "tolerance": float(tolerance),
    }
