"""The FrameExit network: backbone Φ, accumulated pooling Ψ, classifiers f_t and gates g_t.

Data flow for one video (step t = 1..T, frame x_t chosen by the policy π)::

    x_t ──Φ──► Φ(x_t) ──Ψ(z_{t-1}, ·)──► z_t ──f_t──► logits_t
                                           │
                              (z_{t-1}, z_t)──g_t──► exit logit_t   (exit if σ ≥ 0.5)

Two variants (``ModelConfig.variant``):

* ``paper`` — as in the paper: Φ ends in Linear(trunk → D); g_1 sees z_1 alone; g_t
  (t ≥ 2) runs z_{t-1} and z_t through one shared 2-layer MLP (``gate_hidden`` units),
  concatenates and maps linearly to one logit.
* ``official`` — as in the authors' released code: Φ ends in Linear + BatchNorm + ReLU;
  gates use BatchNorm and hidden sizes (2·gate_hidden, gate_hidden) = (128, 64) and take
  [MLP(z_t), MLP(z_{t-1})] in that order; their gate's sigmoid is a *continue*
  probability (exit when it is < 0.5), so our gate logit is its negation; there is no
  learned g_1: step 1 exits when the top softmax score of f_1 exceeds
  ``first_step_threshold`` (strictly, as in their code).

``forward`` runs all T steps (training); ``early_exit`` runs step by step over a batch,
drops the videos that exited (compaction) and never asks for their remaining frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frameexit.config import ModelConfig
from frameexit.exits import (
    CONFIDENCE_STATS,
    confidence_stats,
    exit_probabilities,
    gate_fires,
    get_exit_score,
)
from frameexit.operating_point import PAPER_THRESHOLD, OperatingPoint, paper_rule
from frameexit.pooling import build_pooling

FrameSource = Callable[[int, Tensor], Tensor]


@dataclass
class FrameExitOutput:
    """All-steps output: ``logits [B, T, K]``, ``gate_logits [B, T]``, ``features [B, T, D]``.

    ``features`` are the pooled z_1..z_T. ``gate_logits[:, t]`` is the exit logit of g_{t+1}
    (for the official variant, column 0 is f_1's confidence margin, see
    :class:`ConfidenceGate`).
    """

    logits: Tensor
    gate_logits: Tensor
    features: Tensor

    @property
    def gate_probs(self) -> Tensor:
        """Exit probabilities σ(gate_logits), ``[B, T]``."""
        return torch.sigmoid(self.gate_logits)


@dataclass
class ExitResult:
    """Early-exit inference result per video (rows in the original batch order).

    ``scores [B, K]`` softmax (single-label) or sigmoid (multi-label) of the answering
    classifier f_{exit_step}, ``logits [B, K]`` its logits, ``exit_step [B]`` 1-based, and
    ``frames_used [B]`` the number of steps (frames, or clips for 3D backbones) that went
    through the backbone — equal to ``exit_step``. With ``record_steps``:
    ``step_scores [B, T]`` (the exit score at every step run, NaN after the exit) and
    ``step_logits [B, T, K]`` (zeros after the exit).
    """

    scores: Tensor
    logits: Tensor
    exit_step: Tensor
    frames_used: Tensor
    step_scores: Tensor | None = None
    step_logits: Tensor | None = None


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())


class ExitGate(nn.Module):
    """Paper gate g_t: shared 2-layer MLP h on z_{t-1} and z_t, [h(z_{t-1}), h(z_t)] → 1 logit.

    With ``first=True`` it is g_1: h(z_1) alone → 1 logit. With ``multi_label`` set (not
    None) it is a ``gate+confidence`` gate: f_t's output statistics
    (:func:`frameexit.exits.confidence_stats`) join the linear layer's input::

        [h(z_{t-1}), h(z_t), stats(f_t(z_t))] ──linear──► exit logit
    """

    def __init__(
        self, dim: int, hidden: int = 64, *, first: bool = False, multi_label: bool | None = None
    ) -> None:
        super().__init__()
        self.first = first
        self.multi_label = multi_label
        extra = 0 if multi_label is None else CONFIDENCE_STATS
        self.mlp = _mlp(dim, hidden)
        self.linear = nn.Linear((hidden if first else 2 * hidden) + extra, 1)

    @property
    def uses_confidence(self) -> bool:
        return self.multi_label is not None

    def forward(
        self, z_t: Tensor, z_prev: Tensor | None = None, *, logits: Tensor | None = None
    ) -> Tensor:
        """Exit logit ``[B]`` (σ ≥ threshold → exit); ``logits`` (f_t's) only for a
        ``gate+confidence`` gate."""
        if self.first:
            parts = [self.mlp(z_t)]
        else:
            if z_prev is None:
                raise ValueError("gate g_t with t >= 2 needs z_{t-1}")
            parts = [self.mlp(z_prev), self.mlp(z_t)]
        if self.multi_label is not None:
            if logits is None:
                raise ValueError("a gate+confidence gate needs f_t's logits")
            parts.append(confidence_stats(logits.detach(), self.multi_label).to(z_t.dtype))
        return self.linear(torch.cat(parts, dim=-1)).squeeze(-1)


class OfficialExitGate(nn.Module):
    """The authors' gate: MLP D→2h→h with BatchNorm (shared by both streams), then linear.

    Their gate outputs a *continue* logit ℓ on [MLP(z_t), MLP(z_{t-1})] and exits when
    σ(ℓ) < 0.5; we return the exit logit −ℓ so that, as for the paper gate, σ ≥ 0.5 means
    exit. Their 1×1 convolutions on [B, C, 1, 1] are the Linear layers here; the
    checkpoint loader (:mod:`frameexit.official`) reshapes the weights.
    """

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * hidden),
            nn.BatchNorm1d(2 * hidden),
            nn.ReLU(),
            nn.Linear(2 * hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )
        self.linear = nn.Linear(2 * hidden, 1)

    def forward(
        self, z_t: Tensor, z_prev: Tensor | None = None, *, logits: Tensor | None = None
    ) -> Tensor:
        """Exit logit ``[B]`` (the negated continue logit of the authors' gate)."""
        if z_prev is None:
            raise ValueError("the official gate g_t (t >= 2) needs z_{t-1}")
        continue_logit = self.linear(torch.cat([self.mlp(z_t), self.mlp(z_prev)], dim=-1))
        return -continue_logit.squeeze(-1)


class ConfidenceGate(nn.Module):
    """Official step-1 rule (no parameters): exit when max softmax(f_1(z_1)) > threshold.

    Its logit is the confidence margin logit(p_max) − logit(threshold), computed stably as
    (top logit − logsumexp of the other logits) − logit(threshold); it is positive exactly
    when p_max > threshold and is detached (nothing to train).
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(
        self, z_t: Tensor, z_prev: Tensor | None = None, *, logits: Tensor | None = None
    ) -> Tensor:
        """Confidence-margin logit ``[B]`` from the step-1 classifier ``logits [B, K]``."""
        if logits is None:
            raise ValueError("the confidence gate needs the step-1 classifier logits")
        logits = logits.detach().float()
        top, index = logits.max(dim=-1)
        others = logits.scatter(-1, index.unsqueeze(-1), float("-inf")).logsumexp(dim=-1)
        p = self.threshold
        bias = math.inf if p >= 1 else -math.inf if p <= 0 else math.log(p) - math.log1p(-p)
        return top - others - bias

    def exits(self, logits: Tensor) -> Tensor:
        """Boolean ``[B]``: the authors' rule ``max softmax(logits) > threshold``."""
        return F.softmax(logits.float(), dim=-1).max(dim=-1).values > self.threshold

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class FrameExit(nn.Module):
    """FrameExit (Ghodrati et al., CVPR 2021): one network, T classifiers, T exit gates.

    ``backbone`` (optional) replaces the registry backbone: any module mapping a batch of
    frames ``[n, 3, S, S]`` (or clips) to ``[n, cfg.feature_dim]``.
    """

    def __init__(self, cfg: ModelConfig, *, backbone: nn.Module | None = None) -> None:
        super().__init__()
        if cfg.variant not in ("paper", "official"):
            raise ValueError(f"unknown variant {cfg.variant!r}; use 'paper' or 'official'")
        if backbone is None:
            from frameexit.backbones import build_backbone

            cfg.validate()
            backbone = build_backbone(
                cfg.backbone,
                feature_dim=cfg.feature_dim,
                projection="linear_bn_relu" if cfg.variant == "official" else "linear",
                pretrained=cfg.pretrained,
            )
        self.cfg = cfg
        self.stage: int | None = None  # set by frameexit.losses.set_stage
        dim, steps = cfg.feature_dim, cfg.num_steps
        self.backbone = backbone
        self.pooling = build_pooling(cfg.pooling, dim)
        self.classifiers = nn.ModuleList(nn.Linear(dim, cfg.num_classes) for _ in range(steps))
        gates: list[nn.Module]
        if cfg.variant == "official":
            gates = [ConfidenceGate(cfg.first_step_threshold)]
            gates += [OfficialExitGate(dim, cfg.gate_hidden) for _ in range(steps - 1)]
        else:
            stats = cfg.multi_label if cfg.gate_inputs == "features+confidence" else None
            gates = [ExitGate(dim, cfg.gate_hidden, first=True, multi_label=stats)]
            gates += [ExitGate(dim, cfg.gate_hidden, multi_label=stats) for _ in range(steps - 1)]
        self.gates = nn.ModuleList(gates)
        # what a checkpoint carried (frameexit.checkpoint sets them)
        self.operating_point: OperatingPoint | None = None
        self.class_names: list[str] | None = None

    @property
    def num_steps(self) -> int:
        """T, the largest number of steps."""
        return len(self.classifiers)

    def train(self, mode: bool = True) -> FrameExit:
        """Like ``nn.Module.train``, but keeps the frozen parts in eval mode after set_stage.

        Stage 1 freezes the gates; stage 2 freezes everything but the gates, so their
        BatchNorm statistics stay fixed however often a training loop calls ``train()``.
        """
        super().train(mode)
        if mode and self.stage == 1:
            self.gates.eval()
        elif mode and self.stage == 2:
            for module in (self.backbone, self.pooling, self.classifiers):
                module.eval()
        return self

    # --- all steps at once (training) ---------------------------------------------------

    def frame_features(self, frames: Tensor) -> Tensor:
        """Φ on every frame: ``[B, T, 3, S, S]`` (or clips ``[B, T, 3, k, S, S]``) → ``[B, T, D]``."""
        b, t = frames.shape[:2]
        return self.backbone(frames.flatten(0, 1)).reshape(b, t, -1)

    def heads(self, frame_features: Tensor) -> FrameExitOutput:
        """Pooling, classifiers and gates on per-frame features ``[B, T, D]`` (T ≤ num_steps)."""
        if frame_features.shape[1] > self.num_steps:
            raise ValueError(
                f"got {frame_features.shape[1]} steps, the model has T = {self.num_steps}"
            )
        z = self.pooling(frame_features)
        logits = self._classify(z)
        return FrameExitOutput(logits, self._gate_logits(z, logits), z)

    def forward(self, frames: Tensor) -> FrameExitOutput:
        """All steps for a batch of videos: ``heads(frame_features(frames))``."""
        return self.heads(self.frame_features(frames))

    def export_module(self) -> AllStepsModule:
        """:meth:`forward` as ``frames → (logits [B, T, K], gate_probs [B, T])``, for
        ``torch.export.export`` / ``torch.jit.trace`` (shares the weights and the mode:
        ``eval()`` first). ``torch.jit.script`` of the model is not supported (backbone
        spec, dataclass outputs, optional keyword inputs): export this module instead."""
        return AllStepsModule(self)

    @property
    def gates_use_confidence(self) -> bool:
        """Whether the gates see f_t's output statistics (``gate+confidence``)."""
        return bool(getattr(self.gates[-1], "uses_confidence", False))

    def gate_logits_from_pooled(self, z: Tensor) -> Tensor:
        """Gate logits ``[B, T]`` from pooled features ``z [B, T, D]`` (stage 2 on cached z)."""
        if self.gates_use_confidence:
            with torch.no_grad():
                logits = self._classify(z)
        elif self.cfg.variant == "official":
            logits = self._classify(z[:, :1])
        else:
            logits = None
        return self._gate_logits(z, logits)

    def _classify(self, z: Tensor) -> Tensor:
        return torch.stack([self.classifiers[t](z[:, t]) for t in range(z.shape[1])], dim=1)

    def _gate_logits(self, z: Tensor, logits: Tensor | None) -> Tensor:
        def step_logits(t: int) -> Tensor | None:
            return None if logits is None or t >= logits.shape[1] else logits[:, t]

        columns = [self.gates[0](z[:, 0], logits=step_logits(0))]
        columns += [
            self.gates[t](z[:, t], z[:, t - 1], logits=step_logits(t)) for t in range(1, z.shape[1])
        ]
        return torch.stack([c.to(z.dtype) for c in columns], dim=1)

    # --- early exit (inference) -----------------------------------------------------------

    def scores_from_logits(self, logits: Tensor) -> Tensor:
        """Class scores: softmax (single-label) or sigmoid (multi-label)."""
        return torch.sigmoid(logits) if self.cfg.multi_label else F.softmax(logits, dim=-1)

    def exit_rule(
        self, threshold: float | None = None, operating_point: OperatingPoint | None = None
    ) -> OperatingPoint:
        """The rule a caller asks for: ``operating_point``, else the paper's rule at
        ``threshold``, else :meth:`default_operating_point`."""
        if operating_point is not None:
            return operating_point
        if threshold is not None:
            return paper_rule(float(threshold), self.num_steps)
        return self.default_operating_point()

    def default_operating_point(self) -> OperatingPoint:
        """What decides exits when a caller names nothing: ``model.exit_threshold`` when
        set (the paper's rule), else the operating point the checkpoint carried, else the
        paper's rule at τ = 0.5."""
        if self.cfg.exit_threshold is not None:
            return paper_rule(self.cfg.exit_threshold, self.num_steps)
        if self.operating_point is not None:
            return self.operating_point
        return paper_rule(PAPER_THRESHOLD, self.num_steps)

    def exit_score(
        self, t: int, z_t: Tensor, z_prev: Tensor | None, logits_t: Tensor, score: str
    ) -> Tensor:
        """Exit score ``[B]`` (in [0, 1]) at 0-based step ``t`` for each video."""
        spec = get_exit_score(score)
        if spec.gate_inputs is not None and spec.gate_inputs != self.cfg.gate_inputs:
            raise ValueError(
                f"exit score {score!r} needs gates with inputs {spec.gate_inputs}; this "
                f"model's gates see {self.cfg.gate_inputs}"
            )
        probs = None
        if spec.uses_gate:
            probs = exit_probabilities(self.gates[t](z_t, z_prev, logits=logits_t))
        return spec.fn(logits_t.unsqueeze(1), None if probs is None else probs.unsqueeze(1),
                       self.cfg.multi_label).squeeze(1)  # fmt: skip

    def exit_decision(
        self,
        t: int,
        z_t: Tensor,
        z_prev: Tensor | None,
        logits_t: Tensor,
        point: OperatingPoint | float,
        score: Tensor | None = None,
    ) -> Tensor:
        """Boolean ``[B]``: does the exit score reach its threshold at 0-based step ``t``?
        A float is the paper's rule at that τ; ``score``: the step's exit score when the
        caller computed it already."""
        if not isinstance(point, OperatingPoint):
            point = paper_rule(float(point), self.num_steps)
        if t == 0 and point.score == "gate" and isinstance(self.gates[0], ConfidenceGate):
            return self.gates[0].exits(logits_t)
        if score is None:
            score = self.exit_score(t, z_t, z_prev, logits_t, point.score)
        return gate_fires(score, point.thresholds[t])

    @torch.no_grad()
    def step_outputs(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Every step's outputs from pooled features ``z [N, T, D]`` (e.g. a feature cache):
        ``(logits [N, T, K], exit probabilities [N, T], first_step_exits [N] or None)``.

        ``first_step_exits`` is the official variant's step-1 confidence rule (it does not
        depend on the exit threshold); None for the paper variant. With
        :func:`frameexit.exits.exit_steps` this replays ``early_exit`` for any threshold.
        """
        self.eval()
        logits = self._classify(z)
        probs = exit_probabilities(self.gate_logits_from_pooled(z))
        first = self.gates[0]
        first_exits = first.exits(logits[:, 0]) if isinstance(first, ConfidenceGate) else None
        return logits, probs, first_exits

    @torch.no_grad()
    def early_exit(
        self,
        frame_source: FrameSource,
        batch_size: int,
        *,
        threshold: float | None = None,
        operating_point: OperatingPoint | None = None,
        max_steps: int | None = None,
        exit: bool = True,
        record_steps: bool = False,
    ) -> ExitResult:
        """Batched early-exit inference with compaction (runs in eval mode, no grad).

        At step t (0-based) calls ``frame_source(t, active)`` where ``active`` is a CPU
        LongTensor of the original batch positions still running; it must return their
        frames ``[len(active), 3, S, S]`` (or clips). A video exits at the first step whose
        exit score reaches its threshold and f_t answers; otherwise f_T answers (or
        f_{max_steps}). The rule: ``operating_point``, else the paper's rule at
        ``threshold``, else :meth:`default_operating_point` (official step 1 under the
        paper's rule: top softmax > ``cfg.first_step_threshold``). ``exit=False`` runs
        every video for all steps. Exited videos leave the batch and are never asked for
        again. ``record_steps``: also every step's exit score and logits (calibration).
        """
        steps = self.num_steps if max_steps is None else max_steps
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"max_steps must be in 1..{self.num_steps}, got {max_steps}")
        operating_point = self.exit_rule(threshold, operating_point)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            return self._early_exit(
                frame_source, batch_size, operating_point, steps, exit, device, record_steps
            )
        finally:
            self.train(was_training)

    def _early_exit(
        self,
        frame_source: FrameSource,
        batch_size: int,
        point: OperatingPoint,
        steps: int,
        use_gates: bool,
        device: torch.device,
        record_steps: bool,
    ) -> ExitResult:
        num_classes = self.cfg.num_classes
        out_logits = torch.zeros(batch_size, num_classes, device=device)
        exit_step = torch.zeros(batch_size, dtype=torch.long, device=device)
        step_scores = step_logits = None
        if record_steps:
            step_scores = torch.full((batch_size, self.num_steps), math.nan, device=device)
            step_logits = torch.zeros(batch_size, self.num_steps, num_classes, device=device)
        active = torch.arange(batch_size)  # original positions, CPU (for the frame source)
        state = self.pooling.init_state(batch_size, device)
        z_prev: Tensor | None = None
        for t in range(steps if batch_size else 0):
            frames = frame_source(t, active.clone())
            if frames.shape[0] != active.numel():
                raise ValueError(
                    f"frame_source returned {frames.shape[0]} frames at step {t}, "
                    f"expected {active.numel()}"
                )
            features = self.backbone(frames.to(device))
            z_t, state = self.pooling.step(state, features)
            logits_t = self.classifiers[t](z_t)
            score = None
            if record_steps:
                rows_now = active.to(device)
                score = self.exit_score(t, z_t, z_prev, logits_t, point.score)
                step_scores[rows_now, t] = score.float()
                step_logits[rows_now, t] = logits_t.float()
            if t == steps - 1:
                done = torch.ones(active.numel(), dtype=torch.bool, device=device)
            elif use_gates:
                done = self.exit_decision(t, z_t, z_prev, logits_t, point, score)
            else:
                done = torch.zeros(active.numel(), dtype=torch.bool, device=device)
            if bool(done.any()):
                rows = active.to(device)[done]
                out_logits[rows] = logits_t[done].to(out_logits.dtype)
                exit_step[rows] = t + 1
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                active = active[keep.cpu()]
                state = self.pooling.select(state, keep)
                z_t = z_t.index_select(0, keep)
            z_prev = z_t
        return ExitResult(
            scores=self.scores_from_logits(out_logits),
            logits=out_logits,
            exit_step=exit_step,
            frames_used=exit_step.clone(),
            step_scores=step_scores,
            step_logits=step_logits,
        )


class AllStepsModule(nn.Module):
    """:meth:`FrameExit.export_module`: ``frames → (logits, gate_probs)`` over all T steps."""

    def __init__(self, model: FrameExit) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """``frames [B, T, 3, S, S]`` (or clips) → ``(logits [B, T, K], gate_probs [B, T])``."""
        out = self.model(frames)
        return out.logits, out.gate_probs


def build_model(cfg: ModelConfig, *, backbone: nn.Module | None = None) -> FrameExit:
    """Build the FrameExit network ``cfg`` describes (optionally around a custom backbone)."""
    return FrameExit(cfg, backbone=backbone)
