"""FrameExit model: all-steps forward, gates, and batched early exit with compaction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frameexit.config import ModelConfig
from frameexit.model import (
    ConfidenceGate,
    ExitGate,
    FrameExit,
    OfficialExitGate,
    build_model,
)

S, D, K, T = 8, 12, 5, 5


def standin_backbone(feature_dim: int = D, bn: bool = False) -> nn.Module:
    """A tiny custom backbone: flatten a [n, 3, S, S] frame (or [n, 3, k, S, S] clip)."""
    layers: list[nn.Module] = [nn.Flatten(), nn.LazyLinear(feature_dim)]
    if bn:
        layers += [nn.BatchNorm1d(feature_dim), nn.ReLU()]
    return nn.Sequential(*layers)


def make_model(variant: str = "paper", pooling: str = "max", **kw) -> FrameExit:
    torch.manual_seed(0)
    cfg = ModelConfig(
        feature_dim=D,
        num_classes=K,
        num_steps=T,
        gate_hidden=6,
        variant=variant,
        pooling=pooling,
        image_size=S,
        **kw,
    )
    model = FrameExit(cfg, backbone=standin_backbone(bn=variant == "official"))
    model(torch.randn(2, T, 3, S, S))  # materialise the lazy layer
    return model.eval()


class RecordingSource:
    """Serves frames[b, t] for the requested videos and records every request."""

    def __init__(self, frames: torch.Tensor) -> None:
        self.frames = frames
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, step: int, active: torch.Tensor) -> torch.Tensor:
        self.calls.append((step, active.tolist()))
        return self.frames[active, step]


def expected_exit_steps(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    fires = probs >= threshold
    fires[:, -1] = True
    return fires.float().argmax(dim=1) + 1


def check_against_forward(model: FrameExit, frames: torch.Tensor, result, exit_step) -> None:
    with torch.no_grad():
        out = model(frames)
    rows = torch.arange(frames.shape[0])
    expected_logits = out.logits[rows, exit_step - 1]
    torch.testing.assert_close(result.logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.scores, expected_logits.softmax(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(result.exit_step, exit_step)
    assert torch.equal(result.frames_used, exit_step)


def check_source_calls(source: RecordingSource, exit_step: torch.Tensor) -> None:
    asked = {b: [] for b in range(len(exit_step))}
    for step, active in source.calls:
        for b in active:
            asked[b].append(step)
    for b, steps in asked.items():
        assert steps == list(range(int(exit_step[b]))), (b, steps)


def test_forward_shapes_and_heads() -> None:
    model = make_model()
    frames = torch.randn(3, T, 3, S, S)
    out = model(frames)
    assert out.logits.shape == (3, T, K)
    assert out.gate_logits.shape == (3, T)
    assert out.features.shape == (3, T, D)
    torch.testing.assert_close(out.gate_probs, torch.sigmoid(out.gate_logits))
    feats = model.frame_features(frames)
    assert feats.shape == (3, T, D)
    again = model.heads(feats)
    torch.testing.assert_close(again.logits, out.logits)
    torch.testing.assert_close(model.gate_logits_from_pooled(out.features), out.gate_logits)
    # max pooling: z_t is the running max of the frame features
    torch.testing.assert_close(out.features, torch.cummax(feats, dim=1).values)
    assert len(model.classifiers) == T and len(model.gates) == T
    assert all(isinstance(g, ExitGate) for g in model.gates)


def test_paper_gate_by_hand() -> None:
    torch.manual_seed(3)
    gate = ExitGate(D, 6)
    first = ExitGate(D, 6, first=True)
    z_prev, z_t = torch.randn(4, D), torch.randn(4, D)

    def h(z: torch.Tensor, mlp: nn.Sequential) -> torch.Tensor:
        return torch.relu(mlp[2](torch.relu(mlp[0](z))))

    w, b = gate.linear.weight[0], gate.linear.bias
    expected = h(z_prev, gate.mlp) @ w[:6] + h(z_t, gate.mlp) @ w[6:] + b
    torch.testing.assert_close(gate(z_t, z_prev), expected)
    torch.testing.assert_close(
        first(z_t), h(z_t, first.mlp) @ first.linear.weight[0] + first.linear.bias
    )
    # one MLP shared by both streams: D*h + h + h*h + h, then linear 2h -> 1
    assert sum(p.numel() for p in gate.parameters()) == D * 6 + 6 + 36 + 6 + 12 + 1
    with pytest.raises(ValueError):
        gate(z_t)


def test_gates_have_their_own_parameters() -> None:
    model = make_model()
    ids = [id(p) for g in model.gates for p in g.parameters()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("pooling", ["max", "mean", "lstm", "attention"])
def test_early_exit_equals_forward_at_exit_step(pooling: str) -> None:
    model = make_model(pooling=pooling)
    torch.manual_seed(1)
    frames = torch.randn(24, T, 3, S, S)
    with torch.no_grad():
        gate_logits = model(frames).gate_logits
        for t, gate in enumerate(model.gates):  # each gate fires on ~30% of the videos
            gate.linear.bias.data -= gate_logits[:, t].quantile(0.7)
        probs = model(frames).gate_probs
    threshold = 0.5
    exit_step = expected_exit_steps(probs, threshold)
    assert len(exit_step.unique()) >= 3, exit_step  # the test exercises compaction
    source = RecordingSource(frames)
    result = model.early_exit(source, 24, threshold=threshold)
    check_against_forward(model, frames, result, exit_step)
    check_source_calls(source, exit_step)


@pytest.mark.parametrize(("step", "expected"), [(1, 1), (3, 3), (None, T)])
def test_forced_exits_by_gate_bias(step: int | None, expected: int) -> None:
    model = make_model()
    for t, gate in enumerate(model.gates, start=1):
        gate.linear.bias.data.fill_(100.0 if t == step else -100.0)
    frames = torch.randn(4, T, 3, S, S)
    source = RecordingSource(frames)
    result = model.early_exit(source, 4)
    exit_step = torch.full((4,), expected)
    check_against_forward(model, frames, result, exit_step)
    assert [s for s, _ in source.calls] == list(range(expected))


def test_exit_false_uses_all_steps_and_max_steps_caps() -> None:
    model = make_model()
    for gate in model.gates:
        gate.linear.bias.data.fill_(100.0)  # every gate fires
    frames = torch.randn(3, T, 3, S, S)
    source = RecordingSource(frames)
    result = model.early_exit(source, 3, exit=False)
    check_against_forward(model, frames, result, torch.full((3,), T))
    assert source.calls == [(t, [0, 1, 2]) for t in range(T)]
    capped = model.early_exit(RecordingSource(frames), 3, exit=False, max_steps=2)
    check_against_forward(model, frames, capped, torch.full((3,), 2))
    with pytest.raises(ValueError, match="max_steps"):
        model.early_exit(source, 3, max_steps=T + 1)


def test_threshold_default_and_override() -> None:
    model = make_model(exit_threshold=0.5)
    for t, gate in enumerate(model.gates, start=1):
        gate.linear.weight.data.zero_()
        gate.linear.bias.data.fill_(0.0 if t == 2 else -100.0)  # g_2 gives exactly p = 0.5
    frames = torch.randn(2, T, 3, S, S)
    assert model.early_exit(RecordingSource(frames), 2).exit_step.tolist() == [2, 2]
    above = model.early_exit(RecordingSource(frames), 2, threshold=0.6)
    assert above.exit_step.tolist() == [T, T]


def test_early_exit_restores_mode_and_handles_empty_batch() -> None:
    model = make_model().train()
    frames = torch.randn(2, T, 3, S, S)
    model.early_exit(RecordingSource(frames), 2)
    assert model.training
    empty = model.early_exit(RecordingSource(frames), 0)
    assert empty.logits.shape == (0, K) and empty.exit_step.shape == (0,)


def test_frame_source_must_return_one_frame_per_active_video() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="frame_source"):
        model.early_exit(lambda t, active: torch.randn(1, 3, S, S), 3)


def test_multi_label_scores_are_sigmoid() -> None:
    model = make_model(multi_label=True)
    frames = torch.randn(2, T, 3, S, S)
    result = model.early_exit(RecordingSource(frames), 2, exit=False)
    torch.testing.assert_close(result.scores, torch.sigmoid(result.logits))


def test_clip_inputs() -> None:
    model = make_model()
    clips = torch.randn(2, T, 3, 2, S // 2, S)  # 3*2*(S/2)*S == 3*S*S values per clip
    out = model(clips)
    assert out.logits.shape == (2, T, K)
    result = model.early_exit(RecordingSource(clips), 2, exit=False)
    torch.testing.assert_close(result.logits, out.logits[:, -1], rtol=1e-5, atol=1e-5)


def test_official_variant_structure_and_exits() -> None:
    model = make_model(variant="official", first_step_threshold=0.9)
    assert isinstance(model.gates[0], ConfidenceGate)
    assert all(isinstance(g, OfficialExitGate) for g in model.gates[1:])
    assert not list(model.gates[0].parameters())
    torch.manual_seed(5)
    model.classifiers[0].weight.data.mul_(30)  # make step 1 confident on some videos
    for gate in model.gates[1:]:
        gate.linear.weight.data.mul_(20)
    frames = torch.randn(24, T, 3, S, S)
    with torch.no_grad():
        out = model(frames)
    p_max = out.logits[:, 0].softmax(-1).max(-1).values
    ranked = p_max.double().sort().values
    threshold = float((ranked[11] + ranked[12]) / 2)  # half the videos are above it
    model.gates[0].threshold = threshold
    first = p_max > threshold
    assert 0 < int(first.sum()) < 24
    with torch.no_grad():
        out = model(frames)
        assert torch.equal(out.gate_logits[:, 0] > 0, first)  # confidence margin logit
        for t in range(1, T):  # official gates negate their linear: raise its bias to exit less
            model.gates[t].linear.bias.data += out.gate_logits[:, t].quantile(0.6)
        out = model(frames)
    gate_t = 0.5
    fires = torch.cat([first[:, None], out.gate_probs[:, 1:] >= gate_t], dim=1)
    fires[:, -1] = True
    exit_step = fires.float().argmax(1) + 1
    assert len(exit_step.unique()) >= 3
    source = RecordingSource(frames)
    result = model.early_exit(source, 24, threshold=gate_t)
    check_against_forward(model, frames, result, exit_step)
    check_source_calls(source, exit_step)


def test_official_gate_polarity() -> None:
    torch.manual_seed(4)
    gate = OfficialExitGate(D, 6).eval()
    z_prev, z_t = torch.randn(3, D), torch.randn(3, D)
    continue_logit = gate.linear(torch.cat([gate.mlp(z_t), gate.mlp(z_prev)], dim=-1)).squeeze(-1)
    torch.testing.assert_close(gate(z_t, z_prev), -continue_logit)
    assert gate.mlp[0].out_features == 12 and gate.mlp[3].out_features == 6


def test_tiny_backbone_from_registry() -> None:
    cfg = ModelConfig(backbone="tiny", feature_dim=16, num_classes=3, num_steps=3, image_size=32)
    model = build_model(cfg).eval()
    assert hasattr(model.backbone, "trunk") and hasattr(model.backbone, "projection")
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, 32, 32)
    out = model(frames)
    assert out.logits.shape == (2, 3, 3)
    for gate in model.gates:
        gate.linear.bias.data.fill_(-100.0)
    model.gates[1].linear.bias.data[0] = 100.0
    result = model.early_exit(RecordingSource(frames), 2)
    check_against_forward(model, frames, result, torch.tensor([2, 2]))


def test_official_variant_from_registry_uses_bn_projection() -> None:
    cfg = ModelConfig(
        backbone="tiny",
        feature_dim=16,
        num_classes=3,
        num_steps=3,
        image_size=32,
        variant="official",
    )
    model = build_model(cfg)
    kinds = [type(m) for m in model.backbone.projection]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
