"""frameexit.operating_point: the threshold family, Learn-then-Test and its guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frameexit.config import ModelConfig
from frameexit.exits import exit_scores, list_exit_scores
from frameexit.model import build_model
from frameexit.operating_point import (
    OperatingPoint,
    binomial_cdf,
    calibrate,
    choose_operating_point,
    constant_family,
    family_curve,
    fit_family,
    label_codes,
    min_calibration_videos,
    paper_rule,
    risk_upper_bound,
    step_losses,
)

STEPS = 5


def simulate(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exit scores ``[n, T]`` and losses ``[n, T]``: a confident step agrees with the last
    one more often, later steps more often than early ones, and a score is only a noisy
    hint (so some confident early exits are wrong)."""
    difficulty = rng.uniform(0, 1, size=(n, 1))
    steps = np.arange(1, STEPS + 1)[None, :]
    p_agree = np.clip(1.0 - difficulty * (1 - steps / STEPS) * 1.2, 0.02, 1.0)
    agree = rng.uniform(size=(n, STEPS)) < p_agree
    agree[:, -1] = True
    scores = np.clip(p_agree + rng.normal(0, 0.15, size=(n, STEPS)), 0, 1)
    return scores, ~agree


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    shape_scores, shape_losses = simulate(2000, rng)
    family = fit_family(shape_scores, ~shape_losses, size=60)
    pop_scores, pop_losses = simulate(200_000, rng)
    true_risk, true_steps = family_curve(family, pop_scores, pop_losses)
    return family, true_risk, true_steps


def test_constant_family_is_monotone_and_dense_near_one():
    family = constant_family(200, 4)
    assert np.all(np.isinf(family[:, -1])) and np.all(np.diff(family[:, 0]) < 0)
    assert family[0, 0] > 0.999 and family[-1, 0] == pytest.approx(0.0)
    assert (family[:, 0] > 0.9).sum() > 50  # resolution where confident scores sit


def test_family_is_monotone_and_ordered(setting):
    family, true_risk, true_steps = setting
    assert family.shape == (60, STEPS)
    assert np.all(np.isinf(family[:, -1]))
    # every λ_t non-increasing along the family (inf ≥ anything)
    for j in range(len(family) - 1):
        assert np.all(family[j + 1] <= family[j]), j
    # conservative → aggressive: fewer steps, more risk, and it really spans a range
    assert true_steps[0] > true_steps[-1] + 1.0
    assert true_risk[-1] > 0.1


@pytest.mark.parametrize("target", [0.1, 0.2])
def test_guarantee_holds_over_many_draws(setting, target):
    """Over many calibration draws the realized risk exceeds the bound in at most δ of
    them (plus Monte-Carlo slack); picking the largest member whose *empirical* risk is
    under the bound (no correction) violates far more often. The bound sits just under a
    member's true risk, where an uncorrected choice is a coin flip."""
    family, true_risk, true_steps = setting
    bound = float(true_risk[np.argmax(true_risk >= target)]) - 0.003
    delta, n, draws = 0.1, 400, 300
    rng = np.random.default_rng(1)
    violations = naive_violations = 0
    chosen_steps = []
    for _ in range(draws):
        scores, losses = simulate(n, rng)
        point = calibrate(
            family, scores, losses, score="confidence", risk="disagreement", bound=bound,
            delta=delta,
        )  # fmt: skip
        if point.member:
            violations += true_risk[point.member - 1] > bound
            chosen_steps.append(true_steps[point.member - 1])
        risks, _ = family_curve(family, scores, losses)
        ok = np.nonzero(risks <= bound)[0]
        if len(ok):
            naive_violations += true_risk[ok[-1]] > bound
    rate = violations / draws
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws), rate
    assert naive_violations / draws > 0.3  # the check is not vacuous
    assert np.mean(chosen_steps) < STEPS - 0.5  # and it does exit early


def test_tiny_calibration_set_falls_back_with_a_reason(setting):
    family = setting[0]
    scores, losses = simulate(10, np.random.default_rng(2))
    point = calibrate(
        family, scores, losses, score="confidence", risk="disagreement", bound=0.05, delta=0.1
    )
    assert point.member == 0 and not point.exits_early
    assert point.fallback and "too few" in point.fallback and "45" in point.fallback
    assert min_calibration_videos(0.05, 0.1) == 45
    assert "FELL BACK" in point.describe()


def test_first_member_failing_falls_back():
    family = np.array([[0.0, 0.0, np.inf]])  # exits everyone at step 1
    losses = np.zeros((200, 3), dtype=bool)
    losses[:, 0] = True  # and step 1 always disagrees
    point = calibrate(
        family, np.ones((200, 3)), losses, score="gate", risk="disagreement", bound=0.1,
        delta=0.1,
    )  # fmt: skip
    assert point.member == 0 and point.fallback and "least aggressive" in point.fallback


def test_binomial_and_upper_bound():
    assert binomial_cdf(0, 10, 0.1) == pytest.approx(0.9**10)
    assert risk_upper_bound(0, 45, 0.1) == pytest.approx(1 - 0.1 ** (1 / 45), rel=1e-6)
    assert risk_upper_bound(10, 10, 0.1) == 1.0


def test_step_losses_disagreement_and_accuracy_drop():
    labels = np.array([[1, 2, 2], [0, 0, 1], [3, 3, 3]])
    assert step_losses(labels, risk="disagreement").tolist() == [
        [True, False, False], [True, True, False], [False, False, False],
    ]  # fmt: skip
    drop = step_losses(labels, risk="accuracy_drop", targets=np.array([2, 0, 1]))
    # video 2: all T wrong, so no exit can lose accuracy on it
    assert drop.tolist() == [[True, False, False], [False, False, False], [False] * 3]
    with pytest.raises(ValueError, match="true labels"):
        step_losses(labels, risk="accuracy_drop")


def test_multi_label_codes_compare_label_sets():
    logits = np.array([[[3.0, -3.0], [3.0, 3.0], [3.0, 3.0]]])
    codes = label_codes(logits, multi_label=True)
    assert codes[0, 0] != codes[0, 1] and codes[0, 1] == codes[0, 2]


def test_round_trip_keeps_infinities():
    point = OperatingPoint(
        score="confidence", thresholds=[0.9, math.inf, math.inf], rule="calibrated",
        family=[[math.inf, math.inf, math.inf], [0.9, math.inf, math.inf]],
    )  # fmt: skip
    data = point.to_dict()
    import json

    back = OperatingPoint.from_dict(json.loads(json.dumps(data)))
    assert back == point
    assert back.exits_early and paper_rule(0.5, 3).rule == "paper"


def test_choose_operating_point_on_outputs():
    """Family on one set of videos, calibration on another; the chosen point's
    thresholds come from the family, and an accuracy-drop bound needs targets."""
    rng = np.random.default_rng(3)
    n, steps, k = 600, 4, 5
    target = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, steps, k)).astype(np.float32)
    for t in range(steps):  # later steps more often right and more confident
        right = rng.uniform(size=n) < 0.55 + 0.15 * t
        logits[right, t, target[right]] += 6.0
    data = {"logits": logits, "gate_probs": rng.uniform(size=(n, steps)), "target": target}
    shape = {key: value[:300] for key, value in data.items()}
    held = {key: value[300:] for key, value in data.items()}
    for risk, family in (("disagreement", "fitted"), ("accuracy_drop", "constant")):
        point = choose_operating_point(
            score="confidence", risk=risk, bound=0.15, delta=0.1, family_size=50, shape=shape,
            calibration=held, multi_label=False, family=family,
        )  # fmt: skip
        assert point.rule == "calibrated" and point.calibration_videos == 300
        assert point.member > 0 and point.thresholds == point.family[point.member - 1]
        assert point.mean_steps < steps
        assert point.risk_upper_bound >= point.empirical_risk


@pytest.mark.parametrize("score", ["gate", "confidence", "gate+confidence"])
def test_early_exit_at_an_operating_point_matches_the_replay(score):
    """Per-step thresholds on every registered score: early_exit step by step equals the
    all-steps replay (the rule is written once)."""
    assert score in list_exit_scores()
    torch.manual_seed(0)
    cfg = ModelConfig(
        feature_dim=16, num_classes=5, num_steps=4, gate_hidden=8, image_size=4,
        gate_inputs="features+confidence" if score == "gate+confidence" else "features",
    )  # fmt: skip
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 16))
    model = build_model(cfg, backbone=backbone).eval()
    for gate in model.gates:
        torch.nn.init.normal_(gate.linear.weight, std=3.0)
    frames = torch.randn(32, 4, 3, 4, 4)
    with torch.no_grad():
        out = model(frames)
    logits, probs, _ = model.step_outputs(out.features)
    scores = exit_scores(score, logits, probs)
    thresholds = [float(np.quantile(scores[:, t], 0.6)) for t in range(4)]
    point = OperatingPoint(score=score, thresholds=thresholds, rule="fixed")
    result = model.early_exit(
        lambda t, active: frames[active, t], 32, operating_point=point, record_steps=True
    )
    expected = point.exit_steps(scores)
    assert result.exit_step.tolist() == expected.tolist()
    assert len(set(expected.tolist())) >= 3
    # recorded scores equal the replay's where the step ran, NaN after the exit
    recorded = result.step_scores.numpy()
    for i, e in enumerate(expected):
        np.testing.assert_allclose(recorded[i, :e], scores[i, :e], rtol=1e-5, atol=1e-6)
        assert np.isnan(recorded[i, e:]).all()
    # the model's own operating point is used when nothing is named
    model.operating_point = point
    again = model.early_exit(lambda t, active: frames[active, t], 32)
    assert again.exit_step.tolist() == expected.tolist()
    # an explicit τ is the paper's rule instead
    paper = model.early_exit(lambda t, active: frames[active, t], 32, threshold=1.01)
    assert paper.exit_step.tolist() == [4] * 32


@pytest.mark.parametrize("score", ["gate", "confidence", "gate+confidence"])
def test_every_exit_score_through_a_yaml_config(score, tmp_path):
    """exit.score in a YAML file: validated, the gates built for it (gate+confidence: they
    see f_t's statistics), stage 2 trains them on cached z, and the score replays."""
    from frameexit.config import load_config
    from frameexit.training import GateHead, stage2_step

    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {feature_dim: 16, num_classes: 4, num_steps: 3, gate_hidden: 8}\n"
        f"exit: {{score: {score}, max_disagreement: 0.1, delta: 0.05}}\n"
    )
    cfg = load_config(str(path))
    assert cfg.exit.score == score and cfg.exit.risk == ("disagreement", 0.1)
    assert cfg.model.gate_inputs == (
        "features+confidence" if score == "gate+confidence" else "features"
    )
    model = build_model(cfg.model, backbone=torch.nn.Linear(3, 16))
    assert model.gates_use_confidence == (score == "gate+confidence")
    z = torch.randn(6, 3, 16)
    from frameexit.losses import set_stage

    set_stage(model, 2)
    loss, logits, _ = stage2_step(GateHead(model), z, torch.rand(6, 3), beta=0.5)
    loss.backward()
    grads = [p.grad for p in model.gates.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    step_logits, probs, _ = model.step_outputs(z)
    assert exit_scores(score, step_logits, probs).shape == (6, 3)


def test_a_bad_exit_config_names_the_field(tmp_path):
    from frameexit.config import check_beta, load_config
    from frameexit.errors import ConfigError

    with pytest.raises(ConfigError, match="exit.score"):
        load_config(None, ["exit.score=oracle"])
    with pytest.raises(ConfigError, match="exit.max_accuracy_drop"):
        load_config(None, ["exit.max_disagreement=0.1", "exit.max_accuracy_drop=0.1"])
    with pytest.raises(ConfigError, match="exit.delta"):
        load_config(None, ["exit.delta=1.5"])
    with pytest.raises(ConfigError, match="exit.score"):  # the model's gates cannot
        load_config(None, ["exit.score=gate+confidence", "model.gate_inputs=features"])
    with pytest.raises(ConfigError, match=r"train.beta.*ε_8"):
        check_beta(0.02, 10, multi_label=False)
    check_beta(0.005, 10, multi_label=False)
    check_beta(0.02, 10, multi_label=True)  # BCE averaged over classes: no ln 2 bound


def test_multi_label_calibration_bounds_label_set_disagreement():
    rng = np.random.default_rng(4)
    n, steps, k = 800, 4, 6
    target = rng.uniform(size=(n, k)) < 0.3
    noise = rng.normal(size=(n, steps, k)) * np.array([3.0, 2.0, 1.0, 0.5])[None, :, None]
    logits = (4 * (2 * target[:, None] - 1) + noise).astype(np.float32)
    data = {"logits": logits, "gate_probs": rng.uniform(size=(n, steps)), "target": target}
    held = {key: value[:400] for key, value in data.items()}
    test = {key: value[400:] for key, value in data.items()}
    point = choose_operating_point(
        score="confidence", risk="disagreement", bound=0.1, delta=0.1, family_size=100,
        calibration=held, multi_label=True,
    )  # fmt: skip
    assert point.member > 0 and point.mean_steps < steps
    codes = label_codes(test["logits"], multi_label=True)
    scores = exit_scores("confidence", test["logits"], test["gate_probs"], multi_label=True)
    exit_at = point.exit_steps(scores)
    realized = (codes[np.arange(400), exit_at - 1] != codes[:, -1]).mean()
    assert realized <= 0.1 + 0.05  # the bound, up to the test half's sampling noise
