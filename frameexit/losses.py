"""FrameExit losses: per-step classification loss, gate pseudo-labels, gate loss, stages.

    L_cls  = (1/T) Σ_t ℓ(f_t(z_t), y)             ℓ = CE (single-label) or BCE (multi-label)
    y^g_t  = [ℓ(f_t(z_t), y) ≤ β·exp(t/2)]        t = 1..T, made on the fly, no gradient
    L_gate = (1/T) Σ_t BCE(g_t(z_{t-1}, z_t), y^g_t)
    L      = L_cls + L_gate

Training runs in two stages (:func:`set_stage`): stage 1 trains backbone, projection and
classifiers with L_cls; stage 2 trains only the gates with L_gate. (Official variant: its
step-1 "gate" is the parameter-free, detached confidence rule, so its column adds a
constant to L_gate and no gradient.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def per_step_losses(logits: Tensor, targets: Tensor, multi_label: bool = False) -> Tensor:
    """ℓ(f_t(z_t), y) for every video and step: ``logits [B, T, K]`` → ``[B, T]``.

    Single-label: cross-entropy with integer ``targets [B]``. Multi-label: binary
    cross-entropy with multi-hot float ``targets [B, K]``, averaged over the K classes.
    """
    b, t, k = logits.shape
    if multi_label:
        if targets.shape != (b, k):
            raise ValueError(
                f"multi-label targets must be [B, K] = [{b}, {k}], got {list(targets.shape)}"
            )
        expanded = targets.to(logits.dtype).unsqueeze(1).expand(b, t, k)
        return F.binary_cross_entropy_with_logits(logits, expanded, reduction="none").mean(dim=-1)
    if targets.shape != (b,):
        raise ValueError(f"single-label targets must be [B] = [{b}], got {list(targets.shape)}")
    flat = F.cross_entropy(
        logits.reshape(b * t, k), targets.long().repeat_interleave(t), reduction="none"
    )
    return flat.view(b, t)


def classification_loss(logits: Tensor, targets: Tensor, multi_label: bool = False) -> Tensor:
    """L_cls: the per-step losses averaged over steps and videos (a scalar)."""
    return per_step_losses(logits, targets, multi_label).mean()


def exit_thresholds(num_steps: int, beta: float) -> Tensor:
    """ε_t = β·exp(t/2) for t = 1..T, as float64 ``[T]``."""
    return torch.tensor(
        [beta * math.exp(t / 2) for t in range(1, num_steps + 1)], dtype=torch.float64
    )


def gate_pseudo_labels(step_losses: Tensor, beta: float) -> Tensor:
    """Gate targets y^g_t = [ℓ_t ≤ β·exp(t/2)] (t from 1) as float ``[B, T]``, no gradient.

    The comparison is made in float64, so the label flips exactly at ε_t.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    eps = exit_thresholds(step_losses.shape[-1], beta).to(step_losses.device)
    return (step_losses.detach().double() <= eps).to(step_losses.dtype)


def gate_loss(gate_logits: Tensor, pseudo_labels: Tensor) -> Tensor:
    """L_gate: BCE between exit logits ``[B, T]`` and pseudo-labels, averaged over T and B."""
    return F.binary_cross_entropy_with_logits(gate_logits, pseudo_labels.to(gate_logits.dtype))


@dataclass
class FrameExitLoss:
    """The terms of L = L_cls + L_gate, plus what they were made from."""

    total: Tensor
    classification: Tensor
    gate: Tensor
    step_losses: Tensor  # [B, T]
    pseudo_labels: Tensor  # [B, T]


def frameexit_loss(
    logits: Tensor,
    gate_logits: Tensor,
    targets: Tensor,
    *,
    beta: float,
    multi_label: bool = False,
) -> FrameExitLoss:
    """Both losses from one all-steps output (``FrameExitOutput.logits`` / ``.gate_logits``)."""
    step_losses = per_step_losses(logits, targets, multi_label)
    labels = gate_pseudo_labels(step_losses, beta)
    cls = step_losses.mean()
    gate = gate_loss(gate_logits, labels)
    return FrameExitLoss(cls + gate, cls, gate, step_losses, labels)


def set_stage(model: nn.Module, stage: int) -> None:
    """Freeze for a training stage and put the model in train mode.

    Stage 1: backbone, projection, pooling and classifiers train; gates frozen (and in
    eval mode). Stage 2: only the gates train; everything else is frozen and kept in eval
    mode (BatchNorm statistics fixed), also across later ``model.train()`` calls.
    Accepts a wrapped model (``.module``, e.g. DistributedDataParallel).
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    inner = model.module if hasattr(model, "module") and hasattr(model.module, "gates") else model
    if not hasattr(inner, "gates"):
        raise TypeError("set_stage needs a FrameExit model (with .gates)")
    gate_params = {id(p) for p in inner.gates.parameters()}
    for parameter in inner.parameters():
        parameter.requires_grad_((id(parameter) in gate_params) == (stage == 2))
    inner.stage = stage
    inner.train()
