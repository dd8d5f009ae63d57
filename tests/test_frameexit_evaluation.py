"""frameexit.evaluation: metrics at an operating point, Δ intervals, disagreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frameexit.evaluation import evaluate_outputs, paired_interval
from frameexit.exits import exit_scores, exit_steps
from frameexit.flops import StepCost
from frameexit.operating_point import OperatingPoint

COST = StepCost(backbone=1.0, pooling=0.0, classifier=0.0, gate=0.0, total=1.0)


def outputs(n: int = 300, steps: int = 4, k: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, steps, k)).astype(np.float32)
    for t in range(steps):
        right = rng.uniform(size=n) < 0.4 + 0.15 * t
        logits[right, t, target[right]] += 4.0
    probs = rng.uniform(size=(n, steps)).astype(np.float32)
    return logits, probs, target


def test_paper_rule_and_an_operating_point():
    logits, probs, target = outputs()
    paper = evaluate_outputs(
        logits=logits, gate_probs=probs, target=target, step_cost=COST, threshold=0.5,
        multi_label=False,
    )  # fmt: skip
    steps = exit_steps(probs, 0.5)
    m = paper.metrics
    assert m["rule"] == "paper" and m["threshold"] == 0.5
    assert m["mean_steps"] == pytest.approx(steps.mean())
    chosen = logits[np.arange(len(target)), steps - 1].argmax(-1)
    assert m["accuracy"] == pytest.approx((chosen == target).mean())
    assert m["disagreement"] == pytest.approx((chosen != logits[:, -1].argmax(-1)).mean())
    low, high = m["delta_accuracy_ci90"]
    assert low <= m["delta_accuracy"] <= high and high - low > 0
    point = OperatingPoint(
        score="confidence", thresholds=[0.9, 0.8, 0.7, math.inf], rule="calibrated",
        family=[[math.inf] * 4, [0.9, 0.8, 0.7, math.inf], [0.5, 0.5, 0.5, math.inf]], member=2,
    )  # fmt: skip
    at = evaluate_outputs(
        logits=logits, gate_probs=probs, target=target, step_cost=COST, operating_point=point,
        multi_label=False,
    )  # fmt: skip
    expected = point.exit_steps(exit_scores("confidence", logits, probs))
    assert at.metrics["mean_steps"] == pytest.approx(expected.mean())
    assert at.metrics["rule"] == "calibrated" and at.metrics["threshold"] is None
    family = at.tables["operating_point_family"]
    assert family["chosen"].tolist() == [False, True, False]
    assert family["mean_steps"].iloc[0] == 4.0 and family["disagreement"].iloc[0] == 0.0
    assert family["mean_steps"].iloc[1] == pytest.approx(expected.mean())
    aurocs = at.tables["exit_score_steps"]
    assert aurocs["confidence_auroc"].iloc[0] > 0.7  # confidence predicts agreement here
    assert 0.3 < aurocs["gate_auroc"].iloc[0] < 0.7  # random gates do not


def test_paired_interval_covers_a_known_difference():
    rng = np.random.default_rng(1)
    full = rng.uniform(size=2000) < 0.8
    exit_ = full.copy()
    flip = rng.choice(2000, size=60, replace=False)  # 3 % flipped from right to wrong
    exit_[flip] = False
    low, high = paired_interval(exit_, full)
    true = exit_.mean() - full.mean()
    assert low <= true <= high and high - low < 0.02


def test_multi_label_outputs_have_map_and_set_disagreement():
    rng = np.random.default_rng(2)
    n, steps, k = 120, 3, 4
    target = (rng.uniform(size=(n, k)) < 0.3).astype(np.float32)
    logits = rng.normal(size=(n, steps, k)).astype(np.float32) + 3 * (2 * target[:, None] - 1)
    probs = rng.uniform(size=(n, steps)).astype(np.float32)
    result = evaluate_outputs(
        logits=logits, gate_probs=probs, target=target, step_cost=COST, threshold=0.5,
        multi_label=True,
    )  # fmt: skip
    m = result.metrics
    assert m["metric"] == "mAP" and 0 <= m["disagreement"] <= 1
    low, high = m["delta_accuracy_ci90"]
    assert low <= m["delta_accuracy"] + 1e-9 and m["delta_accuracy"] <= high + 1e-9


def test_console_table_for_a_run_and_for_one_evaluation():
    """The run's table (operating point summary, paper's rule, test) and the table of one
    checkpoint evaluation (its operating point as a line) both print."""
    from frameexit.operating_point import summary
    from pipelines.report import format_metrics

    logits, probs, target = outputs()
    point = OperatingPoint(
        score="confidence", thresholds=[0.9, 0.8, 0.7, math.inf], rule="calibrated",
        risk="disagreement", bound=0.05, delta=0.1, calibration_videos=300,
    )  # fmt: skip

    def run(**kw):
        out = evaluate_outputs(
            logits=logits, gate_probs=probs, target=target, step_cost=COST, multi_label=False,
            **kw,
        )  # fmt: skip
        return {"split": "val", "beta": 1e-3, **out.metrics}

    one = run(operating_point=point)
    text = format_metrics(one)
    assert "FrameExit (confidence)" in text and "calibrated confidence exits" in text
    whole = {**run(operating_point=point), "operating_point": summary(point, 1.0)}
    whole["paper"] = run(threshold=0.5)
    whole["test"] = {**run(operating_point=point), "split": "test"}
    whole["test_paper"] = {**run(threshold=0.5), "split": "test"}
    text = format_metrics(whole)
    assert "disagreement <= 0.05), chosen on val" in text and "paper: β=0.001, τ=0.5" in text
    assert sum(line.startswith("w/o exit") for line in text.splitlines()) == 2
    assert "[" in text  # Δ with its interval
