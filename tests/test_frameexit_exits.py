"""frameexit.exits: the exit rule, its all-steps replay and the post-hoc threshold sweep."""

from __future__ import annotations

import numpy as np
import pytest

from frameexit.exits import exit_steps, threshold_sweep


def test_threshold_sweep_hand_made():
    metrics = pytest.importorskip("frameexit.metrics")

    # 3 videos, T = 3, K = 2. Step logits favour class 0 at step 1 and class 1 later.
    logits = np.zeros((3, 3, 2), dtype=np.float32)
    logits[:, 0, 0] = 5.0
    logits[:, 1:, 1] = 5.0
    gates = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.0], [0.1, 0.2, 0.3]])
    targets = np.array([0, 1, 1])
    assert exit_steps(gates, 0.5).tolist() == [1, 2, 3]
    assert exit_steps(gates, 0.0).tolist() == [1, 1, 1]
    assert exit_steps(gates, 1.01).tolist() == [3, 3, 3]
    out = threshold_sweep(logits, gates, targets, [1.0, 2.0, 4.0], [0.0, 0.5, 1.01])
    assert out["threshold"].tolist() == [0.0, 0.5, 1.01]
    assert out["gflops"].tolist() == pytest.approx([1.0, (1 + 3 + 7) / 3, 7.0])
    assert out["mean_steps"].tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert out["accuracy"].tolist() == pytest.approx(
        [float(metrics.top1_accuracy(np.eye(2)[[0, 0, 0]], targets)), 1.0, 2 / 3], rel=1e-6
    )


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_threshold_replay_matches_early_exit(variant):
    """Replaying τ on all-steps outputs gives early_exit's exit steps and answers."""
    torch = pytest.importorskip("torch")
    from frameexit.config import ModelConfig
    from frameexit.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        feature_dim=16, num_classes=5, num_steps=4, gate_hidden=8, image_size=4,
        variant=variant, first_step_threshold=0.3,
    )  # fmt: skip
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 16))
    model = build_model(cfg, backbone=backbone).eval()
    for gate in model.gates:  # spread the gate probabilities over (0, 1)
        if hasattr(gate, "linear"):
            torch.nn.init.normal_(gate.linear.weight, std=10.0)
    frames = torch.randn(24, 4, 3, 4, 4)
    with torch.no_grad():
        out = model(frames)
    logits, probs, first = model.step_outputs(out.features)
    torch.testing.assert_close(logits, out.logits)
    for tau in (0.0, 0.2, 0.5, 0.8, 1.01):
        result = model.early_exit(lambda t, active: frames[active, t], 24, threshold=tau)
        steps = exit_steps(probs, tau, first_step_exits=first)
        assert steps.tolist() == result.exit_step.tolist(), tau
        if tau == 0.5:
            assert len(set(steps.tolist())) >= 3  # the check is not vacuous
        torch.testing.assert_close(
            logits[torch.arange(24), torch.as_tensor(steps - 1)], result.logits
        )
