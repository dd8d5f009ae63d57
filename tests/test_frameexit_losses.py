"""Losses: per-step CE/BCE, pseudo-labels at exactly ε_t, gate loss, stages, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frameexit.config import ModelConfig
from frameexit.losses import (
    classification_loss,
    exit_thresholds,
    frameexit_loss,
    gate_loss,
    gate_pseudo_labels,
    per_step_losses,
    set_stage,
)
from frameexit.model import FrameExit


def test_per_step_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5)
    targets = torch.tensor([0, 4, 2])
    losses = per_step_losses(logits, targets)
    assert losses.shape == (3, 4)
    for b in range(3):
        for t in range(4):
            expected = -logits[b, t].log_softmax(-1)[targets[b]]
            torch.testing.assert_close(losses[b, t], expected)
    torch.testing.assert_close(classification_loss(logits, targets), losses.mean())


def test_per_step_binary_cross_entropy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4)
    targets = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 0]])
    losses = per_step_losses(logits, targets, multi_label=True)
    p = torch.sigmoid(logits)
    expected = -(targets[:, None] * p.log() + (1 - targets[:, None]) * (1 - p).log()).mean(-1)
    torch.testing.assert_close(losses, expected)
    with pytest.raises(ValueError):
        per_step_losses(logits, targets[:, :2], multi_label=True)
    with pytest.raises(ValueError):
        per_step_losses(logits, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("beta", [1e-6, 1e-3, 1e-2, 0.37])
def test_pseudo_labels_flip_exactly_at_eps_t(beta: float) -> None:
    steps = 10
    eps = [beta * math.exp(t / 2) for t in range(1, steps + 1)]
    below, above = [], []
    for e in eps:  # the float32 values closest to ε_t on either side
        f = np.float32(e)
        if float(f) > e:
            f = np.nextafter(f, np.float32(-np.inf))
        below.append(f)
        above.append(np.nextafter(f, np.float32(np.inf)))
    losses = torch.tensor(np.array([below, above]))
    labels = gate_pseudo_labels(losses, beta)
    assert labels.dtype == torch.float32
    assert labels[0].tolist() == [1.0] * steps
    assert labels[1].tolist() == [0.0] * steps
    # float64 losses: exactly ε_t is an exit (≤), the next double up is not
    exact = torch.tensor(eps, dtype=torch.float64)
    up = torch.tensor([np.nextafter(e, np.inf) for e in eps], dtype=torch.float64)
    labels64 = gate_pseudo_labels(torch.stack([exact, up]), beta)
    assert labels64[0].tolist() == [1.0] * steps and labels64[1].tolist() == [0.0] * steps
    torch.testing.assert_close(exit_thresholds(steps, beta), exact)


def test_pseudo_labels_use_1_based_steps_and_no_grad() -> None:
    beta = 0.1
    # ε_1 = 0.1·e^0.5 ≈ 0.165, ε_2 = 0.1·e ≈ 0.272: a loss of 0.2 fails step 1, passes step 2
    losses = torch.tensor([[0.2, 0.2, 5.0]], requires_grad=True)
    labels = gate_pseudo_labels(losses, beta)
    assert labels.tolist() == [[0.0, 1.0, 0.0]]
    assert not labels.requires_grad
    with pytest.raises(ValueError):
        gate_pseudo_labels(losses, 0.0)


def test_gate_loss_and_total() -> None:
    torch.manual_seed(2)
    gate_logits = torch.randn(3, 4)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(
        gate_loss(gate_logits, labels), F.binary_cross_entropy_with_logits(gate_logits, labels)
    )
    logits = torch.randn(3, 4, 5)
    targets = torch.tensor([1, 2, 3])
    terms = frameexit_loss(logits, gate_logits, targets, beta=1e-2)
    torch.testing.assert_close(terms.total, terms.classification + terms.gate)
    torch.testing.assert_close(terms.classification, classification_loss(logits, targets))
    torch.testing.assert_close(
        terms.pseudo_labels, gate_pseudo_labels(per_step_losses(logits, targets), 1e-2)
    )


def _model(variant: str = "paper", dim: int = 16, classes: int = 3, steps: int = 4) -> FrameExit:
    cfg = ModelConfig(
        feature_dim=dim, num_classes=classes, num_steps=steps, gate_hidden=8, variant=variant
    )
    backbone = nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 6 * 6, dim), nn.BatchNorm1d(dim), nn.ReLU()
    )
    return FrameExit(cfg, backbone=backbone)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_set_stage_freezing_and_modes(variant: str) -> None:
    torch.manual_seed(3)
    model = _model(variant)
    frames = torch.randn(4, 4, 3, 6, 6)
    targets = torch.tensor([0, 1, 2, 0])

    set_stage(model, 1)
    assert all(not p.requires_grad for p in model.gates.parameters())
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifiers.parameters())
    assert model.backbone.training and not model.gates.training
    out = model(frames)
    classification_loss(out.logits, targets).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.gates.parameters())

    model.zero_grad(set_to_none=True)
    set_stage(model, 2)
    model.train()  # a training loop calling train() must not unfreeze BatchNorm
    assert all(p.requires_grad for p in model.gates.parameters())
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if not n.startswith("gates.")
    )
    assert not model.backbone.training and not model.classifiers.training
    assert model.gates.training
    bn = model.backbone[2]
    mean_before = bn.running_mean.clone()
    out = model(frames)
    labels = gate_pseudo_labels(per_step_losses(out.logits, targets), 1e-1)
    gate_loss(out.gate_logits, labels).backward()
    assert torch.equal(bn.running_mean, mean_before)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("gates."))
    trainable_gates = [p for p in model.gates.parameters()]
    assert trainable_gates and all(p.grad is not None for p in trainable_gates)

    model.eval()
    assert not model.gates.training
    with pytest.raises(ValueError):
        set_stage(model, 3)


def test_set_stage_unwraps_module_wrappers() -> None:
    model = _model()
    wrapper = nn.Module()
    wrapper.module = model
    set_stage(wrapper, 2)
    assert model.stage == 2
    assert not any(p.requires_grad for p in model.classifiers.parameters())


@pytest.fixture
def one_thread():
    """Tiny ops are fastest single-threaded (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_tiny_model_learns_both_losses() -> None:
    """Stage 1 lowers L_cls and stage 2 lowers L_gate on random-but-learnable videos."""
    torch.manual_seed(0)
    classes, steps, n = 3, 4, 96
    means = torch.randn(classes, 3, 6, 6)
    targets = torch.arange(n) % classes
    frames = means[targets][:, None] + 1.5 * torch.randn(n, steps, 3, 6, 6)
    model = _model(classes=classes, steps=steps)

    set_stage(model, 1)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    cls_history = []
    for _ in range(150):
        out = model(frames)
        loss = classification_loss(out.logits, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        cls_history.append(loss.item())
    assert cls_history[-1] < 0.5 * cls_history[0], cls_history[::30]

    set_stage(model, 2)
    with torch.no_grad():  # β so that about half the gate targets are "exit"
        step_losses = per_step_losses(model(frames).logits, targets)
        beta = float((step_losses / exit_thresholds(steps, 1.0).float()).median())
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    gate_history = []
    for _ in range(150):
        out = model(frames)
        labels = gate_pseudo_labels(per_step_losses(out.logits, targets), beta)
        loss = gate_loss(out.gate_logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        gate_history.append(loss.item())
    assert 0 < labels.mean() < 1  # the gates had something to learn
    assert gate_history[-1] < 0.7 * gate_history[0], gate_history[::30]
