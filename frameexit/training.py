"""One training step of each stage, the optimiser and its LR schedule (no Ray here).

The Ray Train loops (``pipelines/loops.py``) and the single-process benchmark
(``bench/method.py``) both train with these, so the two cannot drift apart::

    stage 1   frames [B, T, 3, S, S] ──model──► logits [B, T, K] ──► L_cls
    stage 2   cached z [B, T, D] ──GateHead──► gate logits [B, T]
              cached ℓ_t [B, T] ──► y^g_t = [ℓ_t ≤ β·exp(t/2)] ──► L_gate (gates only)
    lr(epoch) = lr0 · γ^(number of milestones ≤ epoch)     (the paper's step schedule)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from frameexit.config import Config, StageConfig
from frameexit.losses import gate_loss, gate_pseudo_labels, per_step_losses


def epoch_lr(stage: StageConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ×γ after each milestone epoch (1-based)."""
    return stage.lr * stage.gamma ** sum(epoch >= m for m in stage.milestones)


def make_optimizer(params: Iterable[nn.Parameter], stage: StageConfig) -> torch.optim.Adam:
    """Adam over ``params`` with the stage's initial lr and weight decay (the paper's Adam)."""
    return torch.optim.Adam(list(params), lr=stage.lr, weight_decay=stage.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (called at the start of each epoch)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (if any)."""
    return model.module if hasattr(model, "module") else model


class GateHead(nn.Module):
    """Stage-2 trainable view of a FrameExit model: cached z ``[B, T, D]`` → gate logits.

    DDP wraps this (not the model) so gradient sync is driven by a real ``forward``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.gate_logits_from_pooled(z)


def stage1_step(
    model: nn.Module,
    frames: torch.Tensor,
    target: torch.Tensor,
    cfg: Config,
    *,
    autocast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_cls of one batch, the step-T logits (for a running accuracy) and the mean loss of
    each step ``[T]`` (detached, for tracking how each classifier f_t learns)."""
    with torch.autocast(frames.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(frames)
    logits = out.logits.float()
    losses = per_step_losses(logits, target, cfg.model.multi_label)
    return losses.mean(), logits[:, -1], losses.detach().mean(dim=0)


def stage2_step(
    head: nn.Module, features: torch.Tensor, step_losses: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_gate of one batch, the gate logits and the pseudo-labels."""
    logits = head(features)
    labels = gate_pseudo_labels(step_losses, beta)
    return gate_loss(logits.float(), labels), logits, labels


#: what :func:`gate_epoch` and :func:`gate_sums` add up over batches, in this order
GATE_SUMS = ("loss_x_videos", "pseudo_label_positives", "agreements", "videos", "cells")


def _batch_sums(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    n = labels.shape[0]
    agree = float(((logits.detach() >= 0).float() == labels).sum())
    return [float(loss.detach()) * n, float(labels.sum()), agree, float(n), float(labels.numel())]


def gate_epoch(
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    stage: StageConfig,
    epoch: int,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    beta: float,
) -> list[float]:
    """One stage-2 epoch: the epoch's lr, then an L_gate step per batch of cached
    ``(z [B, T, D], ℓ_t [B, T])``. Returns the epoch's :data:`GATE_SUMS` (add them over
    workers, then :func:`gate_metrics`). The Ray Train loop and a sweep's in-process β
    trial both train their gates with this; only where the batches come from differs."""
    set_lr(optimizer, epoch_lr(stage, epoch))
    head.train()
    sums = [0.0] * len(GATE_SUMS)
    for features, step_losses in batches:
        loss, logits, labels = stage2_step(head, features, step_losses, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums = [a + b for a, b in zip(sums, _batch_sums(loss, logits, labels), strict=True)]
    return sums


@torch.no_grad()
def gate_sums(
    head: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], beta: float
) -> list[float]:
    """:data:`GATE_SUMS` of the gates on ``batches`` without training (validation)."""
    was_training = head.training
    head.eval()
    sums = [0.0] * len(GATE_SUMS)
    for features, step_losses in batches:
        batch = _batch_sums(*stage2_step(head, features, step_losses, beta))
        sums = [a + b for a, b in zip(sums, batch, strict=True)]
    head.train(was_training)
    return sums


def gate_metrics(sums: Iterable[float], prefix: str = "") -> dict[str, float]:
    """Per-epoch gate metrics from :data:`GATE_SUMS`: mean L_gate per video, the share of
    "exit" pseudo-labels, the share of gate decisions (logit ≥ 0) equal to them, videos."""
    loss, positive, agree, seen, cells = list(sums)
    return {
        f"{prefix}loss": loss / max(seen, 1),
        f"{prefix}pseudo_label_rate": positive / max(cells, 1),
        f"{prefix}gate_agreement": agree / max(cells, 1),
        f"{prefix}videos": int(seen),
    }
