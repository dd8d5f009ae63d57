"""``frameexit.training``: the stage-2 epoch both gate trainers use (Ray Train loop and
the sweep's in-process β trials), checked against the step written out by hand."""

from __future__ import annotations

import copy

import torch

from frameexit.config import ModelConfig, StageConfig
from frameexit.losses import gate_loss, gate_pseudo_labels, set_stage
from frameexit.model import build_model
from frameexit.training import GateHead, gate_epoch, gate_metrics, gate_sums, make_optimizer


def _head() -> GateHead:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny", num_steps=4, feature_dim=16, num_classes=3))
    set_stage(model, 2)
    return GateHead(model)


def test_gate_epoch_is_the_written_out_step_and_its_sums_are_exact() -> None:
    torch.manual_seed(1)
    z, losses = torch.randn(10, 4, 16), torch.rand(10, 4) * 2
    stage = StageConfig(epochs=3, lr=1e-2, milestones=[2], gamma=0.1)
    beta = 0.05
    batches = [(z[:4], losses[:4]), (z[4:8], losses[4:8]), (z[8:], losses[8:])]

    ours = _head()
    theirs = copy.deepcopy(ours)
    opt_ours = make_optimizer((p for p in ours.parameters() if p.requires_grad), stage)
    opt_theirs = make_optimizer((p for p in theirs.parameters() if p.requires_grad), stage)
    for epoch in range(3):
        sums = gate_epoch(ours, opt_ours, stage, epoch, batches, beta)
        lr = 1e-2 * (0.1 if epoch >= 2 else 1.0)  # milestone 2 (1-based epochs)
        assert opt_ours.param_groups[0]["lr"] == lr
        expected = [0.0] * 5
        for g in opt_theirs.param_groups:
            g["lr"] = lr
        for f, ell in batches:
            logits = theirs(f)
            labels = gate_pseudo_labels(ell, beta)
            loss = gate_loss(logits.float(), labels)
            opt_theirs.zero_grad()
            loss.backward()
            opt_theirs.step()
            expected[0] += float(loss.detach()) * len(f)
            expected[1] += float(labels.sum())
            expected[2] += float(((logits.detach() >= 0).float() == labels).sum())
            expected[3] += len(f)
            expected[4] += labels.numel()
        assert torch.allclose(torch.tensor(sums), torch.tensor(expected), rtol=1e-5)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    # pseudo-labels: y_t = [ℓ_t <= β·exp(t/2)] (t = 1..T)
    thresholds = beta * torch.exp(torch.arange(1, 5) / 2)
    assert sums[1] == float((losses <= thresholds).sum())
    metrics = gate_metrics(sums, "val_")
    assert metrics["val_videos"] == 10
    assert metrics["val_pseudo_label_rate"] == sums[1] / 40
    # evaluation: no parameter moves, the same sums as a training pass would compute first
    before = [p.clone() for p in ours.parameters()]
    again = gate_sums(ours, batches, beta)
    assert all(torch.equal(a, b) for a, b in zip(before, ours.parameters(), strict=True))
    assert again[3] == 10 and again[4] == 40 and ours.training
