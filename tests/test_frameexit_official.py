"""Authors' checkpoints: key mapping onto our official variant, and identical inference.

``Theirs`` re-creates the module structure of the authors' released model
(Qualcomm-AI-research/FrameExit, model/adaptive_models.py) — module names and shapes as
in their code — so its ``state_dict`` has the keys of their checkpoints, and ``run_theirs``
follows their inference loop (batch of one video, frames in visiting order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from frameexit.config import ModelConfig
from frameexit.errors import CheckpointError
from frameexit.model import FrameExit, build_model
from frameexit.official import (
    OFFICIAL_CHECKPOINTS,
    load_official_checkpoint,
    map_official_key,
    official_config,
)
from frameexit.policy import official_order


class TheirMLP(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU())


class TheirGate(nn.Module):
    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(d_in, 128, kernel_size=1)
        self.conv2 = nn.Conv2d(128, 64, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(128)
        self.bn2 = nn.BatchNorm2d(64)
        self.linear = nn.Linear(128, 1)

    def continue_logit(self, z_t: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
        def h(z: torch.Tensor) -> torch.Tensor:
            z = F.relu(self.bn1(self.conv1(z[:, :, None, None])))
            return torch.flatten(F.relu(self.bn2(self.conv2(z))), 1)

        return self.linear(torch.cat([h(z_t), h(z_prev)], dim=1))[:, 0]


class Theirs(nn.Module):
    def __init__(self, resnet: nn.Module, trunk_dim: int, dim: int, classes: int, steps: int):
        super().__init__()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.mlp = TheirMLP(trunk_dim, dim)
        self.classifiers = nn.ModuleList(nn.Linear(dim, classes) for _ in range(steps))
        self.exit_selector = nn.ModuleList(TheirGate(dim) for _ in range(steps - 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.layers(torch.flatten(self.backbone(x), 1))


@torch.no_grad()
def run_theirs(model: Theirs, video: torch.Tensor, first_threshold: float):
    """Their inference loop for one video ``[T, 3, S, S]``: (logits of the exit step, t 1-based)."""
    steps = len(model.classifiers)
    z_prev = None
    for t in range(steps):
        z = model.features(video[t : t + 1])
        if t > 0:
            z = torch.maximum(z, z_prev)
        if t == 0:
            y = model.classifiers[0](z)
            exited = bool(F.softmax(y, dim=1).max() > first_threshold)
        elif t < steps - 1:
            exited = bool(torch.sigmoid(model.exit_selector[t - 1].continue_logit(z, z_prev)) < 0.5)
        else:
            exited = True
        if exited:
            return model.classifiers[t](z)[0], t + 1
        z_prev = z
    raise AssertionError("unreachable")


def randomise(model: nn.Module, seed: int) -> None:
    """Random BatchNorm statistics and affine parameters, so the mapping of each matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
            m.num_batches_tracked.fill_(7)


def spread_exits(theirs: Theirs, frames: torch.Tensor) -> float:
    """Shift their gate biases so each gate exits about 40% of videos; return a step-1
    threshold that about half the videos pass."""
    with torch.no_grad():
        z = torch.stack([theirs.features(frames[:, t]) for t in range(frames.shape[1])], 1)
        z = torch.cummax(z, dim=1).values
        for i, gate in enumerate(theirs.exit_selector):
            gate.linear.bias -= gate.continue_logit(z[:, i + 1], z[:, i]).quantile(0.4)
        p_max = (
            F.softmax(theirs.classifiers[0](z[:, 0]), dim=1).max(1).values.double().sort().values
        )
    mid = len(p_max) // 2
    return float((p_max[mid - 1] + p_max[mid]) / 2)


class OurStyleBackbone(nn.Module):
    """Our Backbone layout (``trunk`` = torchvision ResNet with fc removed, ``projection``)
    around a small ResNet-18, for fast tests of the mapping."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.trunk = torchvision.models.resnet18()
        self.trunk.fc = nn.Identity()
        self.projection = nn.Sequential(nn.Linear(512, dim), nn.BatchNorm1d(dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.trunk(x))


def small_pair(steps: int = 4, dim: int = 32, classes: int = 6, threshold: float = 0.9):
    torch.manual_seed(0)
    theirs = Theirs(torchvision.models.resnet18(), 512, dim, classes, steps).eval()
    randomise(theirs, 1)
    cfg = ModelConfig(
        feature_dim=dim,
        num_classes=classes,
        num_steps=steps,
        variant="official",
        first_step_threshold=threshold,
    )
    ours = FrameExit(cfg, backbone=OurStyleBackbone(dim)).eval()
    return theirs, ours


def test_every_key_maps_and_outputs_match_small() -> None:
    theirs, ours = small_pair()
    frames = torch.randn(8, 4, 3, 32, 32)
    threshold = spread_exits(theirs, frames)
    ours.gates[0].threshold = threshold
    state = theirs.state_dict()
    ours_keys = set(ours.state_dict())
    assert {map_official_key(k) for k in state} == ours_keys  # a bijection
    load_official_checkpoint(ours, {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    expected = [run_theirs(theirs, frames[b], threshold) for b in range(8)]
    result = ours.early_exit(lambda t, active: frames[active, t], 8)
    steps = [t for _, t in expected]
    assert result.exit_step.tolist() == steps
    assert len(set(steps)) >= 3, steps
    torch.testing.assert_close(
        result.logits, torch.stack([y for y, _ in expected]), rtol=1e-4, atol=1e-4
    )
    # per step: logits equal, and our exit probability is 1 − their continue probability
    with torch.no_grad():
        out = ours(frames)
        z = torch.cummax(
            torch.stack([theirs.features(frames[:, t]) for t in range(4)], 1), 1
        ).values
        for t in range(4):
            torch.testing.assert_close(
                out.logits[:, t], theirs.classifiers[t](z[:, t]), rtol=1e-4, atol=1e-4
            )
        for t in range(1, 4):
            cont = torch.sigmoid(theirs.exit_selector[t - 1].continue_logit(z[:, t], z[:, t - 1]))
            torch.testing.assert_close(out.gate_probs[:, t], 1 - cont, rtol=1e-4, atol=1e-4)


def test_load_from_file_with_model_wrapper(tmp_path) -> None:
    theirs, ours = small_pair()
    path = tmp_path / "theirs.pth"
    torch.save({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}}, path)
    load_official_checkpoint(ours, str(path))
    torch.testing.assert_close(
        ours.gates[2].mlp[0].weight, theirs.exit_selector[1].conv1.weight[:, :, 0, 0]
    )
    torch.testing.assert_close(
        ours.backbone.trunk.layer4[1].bn2.running_var, theirs.backbone[7][1].bn2.running_var
    )
    with pytest.raises(CheckpointError, match="not found"):
        load_official_checkpoint(ours, str(tmp_path / "missing.pth"))


def test_mismatches_are_listed() -> None:
    theirs, ours = small_pair()
    state = dict(theirs.state_dict())
    state.pop("classifiers.3.bias")
    state["exit_selector.9.conv1.weight"] = torch.zeros(128, 32, 1, 1)
    state["something.else"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_official_checkpoint(ours, state)
    message = str(info.value)
    assert "classifiers.3.bias" in message and "missing" in message
    assert "exit_selector.9.conv1.weight" in message and "something.else" in message
    wrong_classes = dict(theirs.state_dict())
    wrong_classes["classifiers.0.weight"] = torch.zeros(7, 32)
    with pytest.raises(CheckpointError, match="shape"):
        load_official_checkpoint(ours, wrong_classes)
    # old checkpoints without num_batches_tracked still load
    old = {k: v for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_official_checkpoint(ours, old)


def test_needs_official_variant_and_max_pooling() -> None:
    theirs, _ = small_pair()
    for variant, pooling in (("paper", "max"), ("official", "mean")):
        cfg = ModelConfig(
            feature_dim=32, num_classes=6, num_steps=4, variant=variant, pooling=pooling
        )
        model = FrameExit(cfg, backbone=OurStyleBackbone(32))
        with pytest.raises(CheckpointError):
            load_official_checkpoint(model, theirs.state_dict())


def test_official_config() -> None:
    cfg = official_config("minikinetics")
    assert (cfg.backbone, cfg.variant, cfg.feature_dim, cfg.num_steps) == (
        "resnet50",
        "official",
        4096,
        10,
    )
    assert cfg.first_step_threshold == 0.95 and cfg.policy == "official"
    assert official_config("activitynet").first_step_threshold == 0.99
    assert OFFICIAL_CHECKPOINTS["activitynet"]["file"] == "activitynet_checkpoint_25gmac.pth"
    with pytest.raises(ValueError):
        official_config("kinetics400")


def test_resnet50_checkpoint_layout() -> None:
    """Their full model (ResNet-50, 2048→4096, T=10, 200 classes) onto build_model's."""
    torch.manual_seed(0)
    theirs = Theirs(torchvision.models.resnet50(), 2048, 4096, 200, 10).eval()
    randomise(theirs, 2)
    cfg = official_config("activitynet")
    ours = build_model(cfg).eval()
    state = {f"module.{k}": v for k, v in theirs.state_dict().items()}
    assert len(state) == len(ours.state_dict())
    for key, value in theirs.state_dict().items():
        mapped = map_official_key(key)
        assert mapped in ours.state_dict(), key
        assert ours.state_dict()[mapped].numel() == value.numel(), key
    load_official_checkpoint(ours, state)
    # a 12-frame video through both pipelines (their pre-sampling + order vs our policy)
    video = torch.randn(12, 3, 32, 32)
    slots = np.clip(np.linspace(0, 12, 10), 0, 11).astype(int)
    their_frames = video[slots][torch.tensor([5, 0, 9, 2, 7, 4, 6, 3, 8, 1])]
    our_frames = video[official_order(12, 10)]
    torch.testing.assert_close(our_frames, their_frames)
    their_logits, their_step = run_theirs(theirs, their_frames, cfg.first_step_threshold)
    result = ours.early_exit(
        lambda t, active: our_frames[t][None].expand(len(active), -1, -1, -1), 1
    )
    assert result.exit_step.tolist() == [their_step]
    torch.testing.assert_close(result.logits[0], their_logits, rtol=1e-4, atol=1e-4)


def test_convert_command_writes_a_loadable_frameexit_checkpoint(tmp_path) -> None:
    """`python -m frameexit.official` → a checkpoint label.py loads, same outputs as theirs."""
    from frameexit.checkpoint import load_model_checkpoint
    from frameexit.official import main

    torch.manual_seed(0)
    theirs = Theirs(torchvision.models.resnet50(), 2048, 4096, 200, 10).eval()
    randomise(theirs, 3)
    source = tmp_path / "activitynet_checkpoint_25gmac.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()}}, source)
    output = tmp_path / "anet.safetensors"
    assert main(["--dataset", "activitynet", "--input", str(source), "--output", str(output)]) == 0
    model, cfg = load_model_checkpoint(str(output))
    assert (cfg.model.variant, cfg.model.policy, cfg.model.first_step_threshold) == (
        "official",
        "official",
        0.99,
    )
    frames = torch.randn(10, 3, 32, 32)
    their_logits, their_step = run_theirs(theirs, frames, cfg.model.first_step_threshold)
    result = model.early_exit(lambda t, active: frames[t][None].expand(len(active), -1, -1, -1), 1)
    assert result.exit_step.tolist() == [their_step]
    torch.testing.assert_close(result.logits[0], their_logits, rtol=1e-4, atol=1e-4)

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as info:
        main(["--dataset", "activitynet", "--input", str(broken), "--output", str(output)])
    assert info.value.code == 2
