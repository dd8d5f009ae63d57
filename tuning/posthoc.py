"""What the post-hoc exit-threshold curve needs from a trained model: every step's outputs.

::

    cached z [N, T, D] ──► classifiers f_t(z_t) ──► logits [N, T, K]
                      └──► gate_logits_from_pooled(z) ──► σ ──► gate probs [N, T]
    ──► tuning.thresholds.threshold_sweep(τ grid) ──► accuracy, GFLOPs per τ

No video is decoded and nothing is trained: a whole curve costs one pass of the heads over
the cached features (``pipelines.evaluate`` streams the cache through this function).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def model_step_outputs(
    model: torch.nn.Module, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logits [N, T, K], gate_probs [N, T], first_step_exits [N] or None)`` from pooled z.

    ``first_step_exits`` is the official variant's step-1 confidence rule (independent
    of the gate threshold); None for the paper variant.
    """
    from frameexit.model import ConfidenceGate

    model.eval()
    logits = torch.stack([model.classifiers[t](z[:, t]) for t in range(z.shape[1])], dim=1)
    gate_probs = torch.sigmoid(model.gate_logits_from_pooled(z).float())
    first = model.gates[0]
    first_exits = first.exits(logits[:, 0]) if isinstance(first, ConfidenceGate) else None
    return logits, gate_probs, first_exits
