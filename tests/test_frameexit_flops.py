"""GFLOPs counting: the literature's backbone numbers, per-step components, per-video cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from frameexit.backbones import backbone_spec
from frameexit.flops import StepCost, backbone_gflops, count_gflops, step_gflops, video_gflops


def test_resnet50_at_224_is_the_papers_4_1_gflops() -> None:
    assert backbone_gflops("resnet50", 224) == pytest.approx(4.1, abs=0.1)


@pytest.mark.parametrize(
    ("name", "size", "expected", "tol"),
    [
        ("resnet18", 224, 1.81, 0.03),  # torchvision: 1.81
        ("efficientnet_b3", 300, 1.83, 0.03),  # torchvision @300: 1.83 (the paper's "1.8")
        ("x3d_s", 160, 1.96, 0.02),  # X3D paper: 1.96 per 13×160×160 clip
        ("efficientnet_lite0", 224, 0.385, 0.01),  # TF reference: 385M MACs
    ],
)
def test_backbones_match_their_published_costs(
    name: str, size: int, expected: float, tol: float
) -> None:
    assert backbone_gflops(name, size) == pytest.approx(expected, abs=tol)


def test_costs_scale_with_input_size_and_clip_length() -> None:
    assert backbone_gflops("resnet50", 448) == pytest.approx(
        4 * backbone_gflops("resnet50", 224), rel=0.01
    )
    assert backbone_gflops("efficientnet_b3", 224) < backbone_gflops("efficientnet_b3", 300)
    assert backbone_gflops("x3d_s", 160, clip_length=26) == pytest.approx(
        2 * backbone_gflops("x3d_s", 160), rel=0.02
    )
    assert 0 < backbone_gflops("tiny", 112) < 0.2


def test_backbone_gflops_is_cached() -> None:
    backbone_gflops("tiny", 64)
    hits = backbone_gflops.cache_info().hits
    backbone_gflops("tiny", 64)
    assert backbone_gflops.cache_info().hits == hits + 1


def test_feature_dim_adds_the_projection() -> None:
    trunk_dim = backbone_spec("tiny").trunk_dim
    extra = backbone_gflops("tiny", 64, feature_dim=4096) - backbone_gflops("tiny", 64)
    assert extra == pytest.approx(trunk_dim * 4096 / 1e9, rel=1e-9)


def test_count_gflops_is_multiply_accumulates() -> None:
    assert count_gflops(nn.Linear(10, 20), torch.zeros(3, 10)) == pytest.approx(3 * 10 * 20 / 1e9)


def test_video_gflops_arithmetic() -> None:
    cost = StepCost(backbone=2.0, pooling=0.1, classifier=0.3, gate=0.1, total=2.5)
    assert video_gflops(cost, 4) == pytest.approx(10.0)
    assert video_gflops(cost, 0) == 0.0
    assert video_gflops(1.5, 2) == pytest.approx(3.0)
    out = video_gflops(cost, torch.tensor([1, 2, 10]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([2.5, 5.0, 25.0]))
    arr = video_gflops(cost, np.array([3, 4]))
    assert np.allclose(arr, [7.5, 10.0])


# --- step_gflops on a minimal stand-in with the FrameExit attributes ----------------------

D, K, H = 16, 5, 8


class LinearPooling(nn.Module):
    """A pooling with real MACs per step: z_t = W x_t + z_{t-1}."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, D, bias=False)

    def init_state(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.zeros(batch_size, D, device=device)

    def step(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.linear(x) + state
        return z, z


class TwoStreamGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(D, H)
        self.out = nn.Linear(2 * H, 1)

    def forward(self, z_t: torch.Tensor, z_prev: torch.Tensor | None = None, *, logits=None):
        return self.out(torch.cat([self.mlp(z_prev), self.mlp(z_t)], -1)).squeeze(-1)


class StandIn(nn.Module):
    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, D), nn.BatchNorm1d(D))
        self.pooling = LinearPooling()
        self.classifiers = nn.ModuleList(nn.Linear(D, K) for _ in range(steps))
        self.gates = nn.ModuleList(TwoStreamGate() for _ in range(steps))


def test_step_gflops_counts_every_component_of_a_stand_in() -> None:
    model = StandIn().train()
    cost = step_gflops(model, image_size=8)
    assert cost.backbone == pytest.approx(3 * 8 * 8 * D / 1e9)
    assert cost.pooling == pytest.approx(D * D / 1e9)
    assert cost.classifier == pytest.approx(D * K / 1e9)
    assert cost.gate == pytest.approx((2 * D * H + 2 * H) / 1e9)
    assert cost.total == pytest.approx(cost.backbone + cost.pooling + cost.classifier + cost.gate)
    assert model.training  # mode restored (BatchNorm1d ran in eval with batch 1)


# --- step_gflops on the real FrameExit model ----------------------------------------------


def _real_model(**overrides):
    model_module = pytest.importorskip("frameexit.model")
    from frameexit.config import ModelConfig

    cfg = ModelConfig(
        **{
            "backbone": "tiny",
            "feature_dim": 64,
            "num_classes": 7,
            "num_steps": 4,
            "image_size": 64,
            **overrides,
        }
    )
    return model_module.build_model(cfg)


def test_step_gflops_of_the_real_frameexit_model() -> None:
    model = _real_model()
    cost = step_gflops(model, 64)
    d, k, h = 64, 7, model.cfg.gate_hidden
    assert cost.backbone == pytest.approx(backbone_gflops("tiny", 64, feature_dim=d))
    assert cost.classifier == pytest.approx(d * k / 1e9)
    # paper gate g_t: shared MLP d→h→h on both streams, then 2h → 1
    assert cost.gate == pytest.approx((2 * (d * h + h * h) + 2 * h) / 1e9)
    assert cost.pooling == 0.0  # max pooling is element-wise
    assert cost.total == pytest.approx(cost.backbone + cost.classifier + cost.gate)
    assert video_gflops(cost, 4) == pytest.approx(4 * cost.total)


def test_step_gflops_of_a_clip_backbone_uses_the_clip_length() -> None:
    model = _real_model(backbone="x3d_s", clip_length=4, image_size=32)
    cost = step_gflops(model, 32)
    assert cost.backbone == pytest.approx(
        backbone_gflops("x3d_s", 32, clip_length=4, feature_dim=64)
    )


def test_step_gflops_counts_attention_pooling() -> None:
    model = _real_model(pooling="attention")
    assert step_gflops(model, 64).pooling > 0
