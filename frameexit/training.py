"""One training step of each stage, the optimiser and its LR schedule (no Ray here).

The Ray Train loops (``pipelines/loops.py``) and the single-process benchmark
(``bench/method.py``) both train with these, so the two cannot drift apart::

    stage 1   frames [B, T, 3, S, S] ──model──► logits [B, T, K] ──► L_cls
    stage 2   cached z [B, T, D] ──GateHead──► gate logits [B, T]
              cached ℓ_t [B, T] ──► y^g_t = [ℓ_t ≤ β·exp(t/2)] ──► L_gate (gates only)
    lr(epoch) = lr0 · γ^(number of milestones ≤ epoch)     (DESIGN.md's step schedule)
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
    """Adam over ``params`` with the stage's initial lr and weight decay (DESIGN.md)."""
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
