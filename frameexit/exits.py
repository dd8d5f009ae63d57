"""The exit rule, once, and the post-hoc exit-threshold sweep it makes possible.

**The rule.** Gate g_t's exit probability is p_t = σ(gate logit_t), computed in float32;
a video exits at the first step t with p_t ≥ τ (:func:`gate_fires`), and f_T answers when
no gate fired. ``FrameExit.early_exit`` applies it step by step to the videos still
running; :func:`exit_steps` applies it to all steps of many videos at once (evaluation,
threshold sweeps). Both call :func:`gate_fires`, so they cannot disagree.

**Post-hoc sweep.** One trained model gives a whole accuracy–GFLOPs curve. No training: the gates' probabilities and every step's classifier logits are computed
once per validation video (from the stage-2 feature cache), then each threshold τ is
replayed exactly as early-exit inference would run it::

    per video:  gate_probs [T] ──► exit step e = first t with p_t >= τ (else T)
                step_logits [T, K] ──► answer = logits[e]            ──► accuracy / mAP
                step_gflops [T] ──► cost = step_gflops[0] + … + step_gflops[e-1] ──► GFLOPs

τ = 0 exits every video at step 1; τ > 1 never exits early by the gates (the "w/o exit"
point, all T steps), except that the official variant's step-1 confidence rule
(``first_step_exits``: top softmax ≥ ``model.first_step_threshold``) still fires at
step 1, as the authors' code does. ``exit_steps`` equals ``FrameExit.early_exit`` (tested in
``tests/test_frameexit_exits.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

# τ grid used when none is given: dense near the default 0.5, plus both extremes.
DEFAULT_THRESHOLDS: tuple[float, ...] = (
    0.0,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    0.999,
    1.01,  # never exits early: all T steps
)


def exit_probabilities(gate_logits: torch.Tensor) -> torch.Tensor:
    """p_t = σ(gate logits), in float32 whatever the model's dtype."""
    return torch.sigmoid(torch.as_tensor(gate_logits).float())


def gate_fires(exit_probs: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """The exit rule: boolean, True where the exit score reaches its threshold (s ≥ λ);
    ``threshold`` is one τ or per-step thresholds broadcast over the last axis."""
    return torch.as_tensor(exit_probs, dtype=torch.float32) >= torch.as_tensor(
        threshold, dtype=torch.float32
    )


def exit_steps(
    gate_probs: torch.Tensor | np.ndarray,
    threshold: float | Sequence[float] | np.ndarray,
    *,
    first_step_exits: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """1-based exit step per video: the first step whose exit score (gate probability by
    default) is >= its threshold, else T. ``threshold``: one τ for every step (the paper's
    rule) or T per-step thresholds λ_1..λ_T (an operating point; λ_T is never consulted).

    :func:`gate_fires` on every step. ``first_step_exits`` ([N] bool) replaces step 1's
    decision where it does not depend on τ (the official variant's confidence rule,
    ``max softmax(f_1) > first_step_threshold``).
    """
    probs = torch.as_tensor(np.asarray(gate_probs), dtype=torch.float32)
    if probs.ndim != 2:
        raise ValueError(f"gate_probs must be [N, T], got shape {tuple(probs.shape)}")
    limit = np.asarray(threshold, dtype=np.float32)
    if limit.ndim and limit.shape != (probs.shape[1],):
        raise ValueError(f"need one threshold or {probs.shape[1]}, got {limit.shape}")
    fired = gate_fires(probs, torch.from_numpy(limit)).numpy().copy()
    if first_step_exits is not None:
        fired[:, 0] = np.asarray(first_step_exits, dtype=bool)
    fired[:, -1] = True  # the last classifier answers when no gate fired
    return fired.argmax(axis=1) + 1


def cumulative_gflops(step_gflops: float | Sequence[float], num_steps: int) -> np.ndarray:
    """Cost of a video that exits at step t (1..T), as an array indexed by t-1.

    ``step_gflops`` is either one number (every step costs the same: backbone + pooling
    + classifier + gate) or T per-step costs.
    """
    costs = np.asarray(step_gflops, dtype=np.float64)
    if costs.ndim == 0:
        costs = np.full(num_steps, float(costs))
    if costs.shape != (num_steps,):
        raise ValueError(f"step_gflops must be a number or {num_steps} numbers, got {costs.shape}")
    return np.cumsum(costs)


def threshold_sweep(
    step_logits: torch.Tensor | np.ndarray,
    gate_probs: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    step_gflops: float | Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    multi_label: bool = False,
    first_step_exits: torch.Tensor | np.ndarray | None = None,
) -> pd.DataFrame:
    """Accuracy (top-1, or mAP when ``multi_label``) and mean GFLOPs per video per τ.

    Args:
        step_logits: ``[N, T, K]`` logits of every step's classifier.
        gate_probs: ``[N, T]`` exit probabilities (sigmoid of the gate logits).
        targets: ``[N]`` class ids, or ``[N, K]`` multi-hot when ``multi_label``.
        step_gflops: cost of one step (or T per-step costs), see :func:`cumulative_gflops`.
        thresholds: the τ values to replay.
        first_step_exits: see :func:`exit_steps` (official variant).

    Returns:
        One row per τ: ``threshold, accuracy, metric ("top1"|"mAP"), gflops, mean_steps``.
    """
    from frameexit.metrics import mean_average_precision, top1_accuracy

    logits = torch.as_tensor(np.asarray(step_logits), dtype=torch.float32)
    if logits.ndim != 3:
        raise ValueError(f"step_logits must be [N, T, K], got shape {tuple(logits.shape)}")
    num_videos, num_steps, _ = logits.shape
    probs = np.asarray(gate_probs, dtype=np.float32)
    if probs.shape != (num_videos, num_steps):
        raise ValueError(f"gate_probs must be [{num_videos}, {num_steps}], got {probs.shape}")
    target = torch.as_tensor(np.asarray(targets))
    cost_at = cumulative_gflops(step_gflops, num_steps)
    rows = []
    for tau in thresholds:
        exit_step = exit_steps(probs, float(tau), first_step_exits=first_step_exits)
        chosen = logits[torch.arange(num_videos), torch.as_tensor(exit_step - 1)]
        if multi_label:
            accuracy = mean_average_precision(torch.sigmoid(chosen), target.float())
        else:
            accuracy = top1_accuracy(torch.softmax(chosen, dim=-1), target.long())
        rows.append(
            {
                "threshold": float(tau),
                "accuracy": float(accuracy),
                "metric": "mAP" if multi_label else "top1",
                "gflops": float(cost_at[exit_step - 1].mean()),
                "mean_steps": float(exit_step.mean()),
            }
        )
    return pd.DataFrame(rows)


# --- exit scores: what a per-step threshold is compared with ---------------------------
#
#   gate             σ(g_t(z_{t-1}, z_t)): the paper's learned gate (trained in stage 2)
#   confidence       f_t's own certainty: max softmax (single-label), or the least certain
#                    class's max(p, 1 − p) of the per-class sigmoids (multi-label)
#   gate+confidence  σ(g_t) of a gate that also sees f_t's output statistics
#                    (model.gate_inputs = features+confidence), trained on the same
#                    pseudo-labels
#
# The authors' step-1 rule (max softmax(f_1) > 0.99) is `confidence` with λ_1 = 0.99.


@dataclass(frozen=True)
class ExitScore:
    """A registered exit score: ``fn(step_logits [..., K], gate_probs [...], multi_label)``
    gives a score in [0, 1] per video and step (higher = more ready to exit).

    ``gate_inputs``: what the model's gates must see for the score to exist (None: any
    gate, or none at all)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor | None, bool], torch.Tensor]
    uses_gate: bool
    gate_inputs: str | None = None


_EXIT_SCORES: dict[str, ExitScore] = {}


def register_exit_score(
    name: str, *, uses_gate: bool, gate_inputs: str | None = None
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register ``fn(step_logits, gate_probs, multi_label) -> scores`` as an
    exit score called ``name`` (then valid as ``exit.score`` in a config)."""

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _EXIT_SCORES:
            raise ValueError(f"exit score {name!r} is already registered")
        _EXIT_SCORES[name] = ExitScore(name, fn, uses_gate, gate_inputs)
        return fn

    return add


def list_exit_scores() -> list[str]:
    """Names of the registered exit scores."""
    return list(_EXIT_SCORES)


def get_exit_score(name: str) -> ExitScore:
    """The registered exit score ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return _EXIT_SCORES[name]
    except KeyError:
        raise ValueError(
            f"unknown exit score {name!r}; registered: {', '.join(_EXIT_SCORES)}"
        ) from None


def confidence(step_logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """f_t's certainty from its logits ``[..., K]`` → ``[...]`` in [0, 1]: max softmax, or
    for multi-label the least certain class's max(σ, 1 − σ) (every class decided)."""
    logits = torch.as_tensor(step_logits).float()
    if multi_label:
        p = torch.sigmoid(logits)
        return torch.maximum(p, 1 - p).min(dim=-1).values
    return torch.softmax(logits, dim=-1).max(dim=-1).values


#: Output statistics a ``gate+confidence`` gate sees besides (z_{t-1}, z_t).
CONFIDENCE_STATS = 3


def confidence_stats(step_logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """``[..., K]`` logits → ``[..., 3]`` statistics of f_t's output, all in [0, 1]:
    single-label (max softmax, top-1 − top-2 margin, 1 − normalised entropy);
    multi-label (least, mean and largest per-class certainty max(σ, 1 − σ))."""
    logits = step_logits.float()
    k = logits.shape[-1]
    if multi_label:
        p = torch.sigmoid(logits)
        certainty = torch.maximum(p, 1 - p)
        return torch.stack(
            [certainty.min(-1).values, certainty.mean(-1), certainty.max(-1).values], dim=-1
        )
    p = torch.softmax(logits, dim=-1)
    top = p.topk(min(2, k), dim=-1).values
    margin = top[..., 0] - (top[..., 1] if k > 1 else 0.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1) / max(math.log(k), 1e-12)
    return torch.stack([top[..., 0], margin, 1 - entropy], dim=-1)


@register_exit_score("gate", uses_gate=True)
def _gate_score(logits: torch.Tensor, gate_probs: torch.Tensor | None, multi: bool):
    if gate_probs is None:
        raise ValueError("the gate exit score needs the gates' probabilities")
    return torch.as_tensor(gate_probs).float()


@register_exit_score("confidence", uses_gate=False)
def _confidence_score(logits: torch.Tensor, gate_probs: torch.Tensor | None, multi: bool):
    return confidence(logits, multi)


@register_exit_score("gate+confidence", uses_gate=True, gate_inputs="features+confidence")
def _gate_confidence_score(logits: torch.Tensor, gate_probs: torch.Tensor | None, multi: bool):
    return _gate_score(logits, gate_probs, multi)


def exit_scores(
    name: str,
    step_logits: torch.Tensor | np.ndarray,
    gate_probs: torch.Tensor | np.ndarray | None,
    *,
    multi_label: bool = False,
) -> np.ndarray:
    """Exit score ``name`` of every video and step: ``[N, T, K]`` logits and ``[N, T]``
    gate probabilities → float32 ``[N, T]``."""
    logits = torch.as_tensor(np.asarray(step_logits, dtype=np.float32))
    probs = None if gate_probs is None else torch.as_tensor(np.asarray(gate_probs, np.float32))
    return get_exit_score(name).fn(logits, probs, multi_label).numpy().astype(np.float32)
