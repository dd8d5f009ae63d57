"""Compute cost in GFLOPs as the vision literature counts them: multiply-accumulates × 1e-9.

Everything is *counted*, never looked up: a forward runs under
``torch.utils.flop_counter.FlopCounterMode``, whose FLOPs (2 per multiply-accumulate, for
convolutions, matmuls, linear layers and attention) are halved. Element-wise work (ReLU,
BatchNorm at inference, max pooling) counts zero, as in the papers' tables.

Two levels:

* :func:`backbone_gflops` — a registered backbone's *trunk* (classifier removed) per frame
  or clip, the number the literature quotes (ResNet-50 @224: 4.09 here, 4.1 in papers);
  pass ``feature_dim`` to add the projection layer.
* :func:`step_gflops` — one early-exit step of a FrameExit model: ``backbone`` (trunk *and*
  projection, i.e. all of Φ), ``pooling`` (one Ψ step), ``classifier`` (one f_t) and ``gate``
  (one g_t on (z_{t-1}, z_t)). A video that exits at step e costs e × ``total``
  (:func:`video_gflops`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from frameexit.sampling import step_input_shape


def count_gflops(fn: Any, *args: Any, **kwargs: Any) -> float:
    """GFLOPs (MACs × 1e-9) of ``fn(*args, **kwargs)``, counted with FlopCounterMode."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() / 2 / 1e9


def _dummy_input(image_size: int, clip_length: int, **kwargs: Any) -> Tensor:
    return torch.zeros(step_input_shape(image_size, clip_length), **kwargs)


@functools.lru_cache(maxsize=128)
def backbone_gflops(
    name: str,
    image_size: int = 224,
    *,
    clip_length: int | None = None,
    feature_dim: int | None = None,
) -> float:
    """GFLOPs of one frame (or clip) through the registered backbone ``name``'s trunk.

    ``clip_length`` defaults to the backbone's own (13 for ``x3d_s``, 1 for 2D ones);
    ``feature_dim`` adds the Linear projection to that width. Counted on the meta device
    (no memory, no compute), batch 1; cached.
    """
    from frameexit.backbones import backbone_spec, build_backbone, build_projection

    spec = backbone_spec(name)
    clip = spec.clip_length if clip_length is None else clip_length
    with torch.device("meta"):
        trunk = build_backbone(name, feature_dim=1).trunk.eval()
        x = _dummy_input(image_size, clip)
        gflops = count_gflops(trunk, x)
        if feature_dim is not None:
            projection = build_projection(spec.trunk_dim, feature_dim, "linear")
            gflops += count_gflops(projection, torch.zeros(1, spec.trunk_dim))
    return gflops


@dataclass(frozen=True)
class StepCost:
    """GFLOPs of one early-exit step, per video: backbone Φ (trunk + projection), one
    pooling step Ψ, one classifier f_t and one gate g_t; ``total`` is their sum."""

    backbone: float
    pooling: float
    classifier: float
    gate: float
    total: float


def _clip_length(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "clip_length", None):
        return int(cfg.clip_length)
    spec = getattr(model.backbone, "spec", None)
    return int(spec.clip_length) if spec is not None else 1


def _feature_dim(model: nn.Module) -> int:
    return int(model.classifiers[0].in_features)


def step_gflops(model: nn.Module, image_size: int, *, clip_length: int | None = None) -> StepCost:
    """Count the per-step cost of a FrameExit ``model`` by running each part on dummy inputs.

    ``backbone`` runs on one frame ``[1, 3, S, S]`` (or one clip ``[1, 3, k, S, S]``, k =
    ``clip_length``, default ``model.cfg.clip_length`` or the backbone's); ``pooling`` is the
    mean cost of one ``pooling.step`` over T steps (constant for max/mean, growing with t
    for attention); ``classifier`` is one f_t on z_t; ``gate`` is g_2's cost on
    (z_{t-1}, z_t) — the dearest gate (g_1 sees z_1 alone; the official variant's first
    gate is free). The model is briefly put in eval mode (BatchNorm with batch 1) and
    restored; no gradients are recorded.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        clip = _clip_length(model) if clip_length is None else clip_length
        frames = _dummy_input(image_size, clip, device=device, dtype=dtype)
        backbone = count_gflops(model.backbone, frames)
        dim = _feature_dim(model)
        z = torch.zeros(1, dim, device=device, dtype=dtype)
        steps = len(model.classifiers)

        def run_pooling() -> None:
            state = model.pooling.init_state(1, device)
            for _ in range(steps):
                _, state = model.pooling.step(state, z)

        pooling = count_gflops(run_pooling) / steps
        classifier = count_gflops(model.classifiers[0], z)
        gate_index = 1 if len(model.gates) > 1 else 0
        gate_module = model.gates[gate_index]
        if gate_index == 0:
            logits = model.classifiers[0](z)
            gate = count_gflops(gate_module, z, logits=logits)
        else:
            gate = count_gflops(gate_module, z, z)
    finally:
        model.train(was_training)
    total = backbone + pooling + classifier + gate
    return StepCost(
        backbone=backbone, pooling=pooling, classifier=classifier, gate=gate, total=total
    )


@overload
def video_gflops(cost: StepCost | float, frames_used: Tensor) -> Tensor: ...
@overload
def video_gflops(cost: StepCost | float, frames_used: np.ndarray) -> np.ndarray: ...
@overload
def video_gflops(cost: StepCost | float, frames_used: float) -> float: ...


def video_gflops(cost: StepCost | float, frames_used: Any) -> Any:
    """GFLOPs of videos that used ``frames_used`` steps: ``frames_used × cost.total``.

    ``frames_used`` may be a number (→ float), a tensor (→ float tensor) or an array.
    """
    per_step = cost.total if isinstance(cost, StepCost) else float(cost)
    if isinstance(frames_used, Tensor):
        as_float = (
            frames_used.double() if frames_used.dtype == torch.float64 else frames_used.float()
        )
        return as_float * per_step
    if isinstance(frames_used, np.ndarray):
        return frames_used.astype(np.float64) * per_step
    return float(frames_used) * per_step
