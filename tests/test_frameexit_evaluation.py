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


# --- hand-computed tiny examples ----------------------------------------------------------
#
# Single label: 4 videos x 3 steps x 3 classes. Step t of video i puts logit a on one class
# and 0 on the others, so softmax confidence = e^a / (e^a + 2) (monotone in a).
#
#   video  target  step labels (a)          gate probs        paper τ=0.5 exit
#   v0     0       0 (2), 1 (1), 0 (3)      0.9, 0.1, 0.1     1  (label 0: right)
#   v1     1       2 (1), 1 (2), 1 (3)      0.2, 0.6, 0.1     2  (label 1: right)
#   v2     2       0 (4), 0 (3), 2 (5)      0.1, 0.2, 0.3     3  (label 2: right)
#   v3     0       1 (3), 0 (4), 0 (4)      0.5, 0.0, 0.0     1  (p = τ exits; label 1: wrong)
#
# f_T is right on every video, FrameExit on 3 of 4.

LABELS = [[0, 1, 0], [2, 1, 1], [0, 0, 2], [1, 0, 0]]
MAGNITUDES = [[2, 1, 3], [1, 2, 3], [4, 3, 5], [3, 4, 4]]
TARGET = np.array([0, 1, 2, 0])
GATES = np.array(
    [[0.9, 0.1, 0.1], [0.2, 0.6, 0.1], [0.1, 0.2, 0.3], [0.5, 0.0, 0.0]], dtype=np.float32
)
TINY_COST = StepCost(backbone=1.5, pooling=0.25, classifier=0.125, gate=0.125, total=2.0)
INF = math.inf


def tiny_logits() -> np.ndarray:
    logits = np.zeros((4, 3, 3), dtype=np.float32)
    for i, (labels, sizes) in enumerate(zip(LABELS, MAGNITUDES, strict=True)):
        for t, (label, size) in enumerate(zip(labels, sizes, strict=True)):
            logits[i, t, label] = size
    return logits


def tiny(**kw):
    args = dict(
        logits=tiny_logits(), gate_probs=GATES, target=TARGET, step_cost=TINY_COST,
        multi_label=False,
    )  # fmt: skip
    return evaluate_outputs(**{**args, **kw})


def conf(a: float) -> float:
    """max softmax of a logit vector with a on one of 3 classes and 0 on the others."""
    return math.exp(a) / (math.exp(a) + 2)


def test_tiny_single_label_metrics_by_hand():
    m = tiny(threshold=0.5).metrics
    assert m["num_videos"] == 4 and m["num_steps"] == 3
    assert m["metric"] == "top1" and m["rule"] == "paper" and m["exit_score"] == "gate"
    assert m["threshold"] == 0.5
    assert m["operating_point"] == "paper rule: gate probability >= 0.5 at every step"
    assert m["accuracy"] == pytest.approx(0.75) and m["top1"] == pytest.approx(0.75)
    assert m["noexit_accuracy"] == 1.0 and m["noexit_top1"] == 1.0
    assert m["delta_accuracy"] == pytest.approx(-0.25)
    assert m["mean_frames"] == pytest.approx(1.75) and m["mean_steps"] == pytest.approx(1.75)
    assert m["gflops"] == pytest.approx(3.5)  # 1.75 steps x 2 GFLOPs
    assert m["noexit_frames"] == 3.0 and m["noexit_gflops"] == pytest.approx(6.0)
    assert m["gflops_per_step"] == 2.0 and m["backbone_gflops_per_step"] == 1.5
    assert m["gflops_saving"] == pytest.approx(3 / 1.75)
    assert m["disagreement"] == pytest.approx(0.25)  # only v3 (1 at step 1, 0 at T)
    # first step agreeing with f_T: v0 1, v1 2, v2 3, v3 2
    assert m["oracle_mean_steps"] == pytest.approx(2.0)
    # mAP of the exits' softmax scores: class 0 ranks v0, v1, v3, v2 -> AP (1 + 2/3) / 2;
    # class 1 ranks v3 above v1 -> 1/2; class 2 -> 1
    assert m["mAP"] == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)
    assert m["noexit_mAP"] == pytest.approx(1.0)
    # per-video differences (0, 0, 0, -1): a resample without v3 (p = 0.32) gives 0
    low, high = m["delta_accuracy_ci90"]
    assert high == 0.0 and -1.0 <= low <= -0.5
    assert tiny().metrics == m  # threshold None: the paper's τ = 0.5


def test_tiny_predictions_table():
    out = tiny(threshold=0.5, videos=["a", "b", "c", "d"]).tables["predictions"]
    assert list(out.columns) == [
        "video", "target", "exit_step", "frames", "gflops", "prediction", "correct", "exit_prob", "exit_score",
    ]  # fmt: skip
    assert out["video"].tolist() == ["a", "b", "c", "d"]
    assert out["target"].tolist() == [0, 1, 2, 0]
    assert out["exit_step"].tolist() == [1, 2, 3, 1]
    assert out["frames"].tolist() == [1, 2, 3, 1]
    assert out["gflops"].tolist() == [2.0, 4.0, 6.0, 2.0]
    assert out["prediction"].tolist() == [0, 1, 2, 1]
    assert out["correct"].tolist() == [True, True, True, False]
    assert out["exit_prob"].tolist() == pytest.approx([0.9, 0.6, 0.3, 0.5])
    unnamed = tiny(threshold=0.5).tables["predictions"]
    assert unnamed["video"].tolist() == ["0", "1", "2", "3"]


def test_tiny_exit_histogram_matrix_and_frames_per_class():
    result = tiny(threshold=0.5, class_names=["x", "y", "z"])
    hist = result.tables["exit_histogram"]
    assert hist["step"].tolist() == [1, 2, 3]
    assert hist["count"].tolist() == [2, 1, 1]
    assert hist["fraction"].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert hist["accuracy"].tolist() == pytest.approx([0.5, 1.0, 1.0])  # v0 right, v3 wrong
    # M[i, j]: accuracy of f_{j+1} on the videos exiting at step i+1
    expected = np.array([[0.5, 0.5, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(result.exit_matrix, expected)
    table = result.tables["exit_matrix"]
    assert list(table.columns) == ["f1", "f2", "f3", "exit_step"]
    np.testing.assert_allclose(table[["f1", "f2", "f3"]].to_numpy(), expected)
    assert table["exit_step"].tolist() == [1, 2, 3]
    frames = result.tables["per_class_frames"]
    assert list(frames.columns) == ["class", "name", "count", "mean_frames"]
    assert frames["name"].tolist() == ["x", "y", "z"]
    assert frames["count"].tolist() == [2, 1, 1]
    assert frames["mean_frames"].tolist() == pytest.approx([1.0, 2.0, 3.0])
    wrong_length = tiny(threshold=0.5, class_names=["x", "y"]).tables["per_class_frames"]
    assert wrong_length["name"].tolist() == ["0", "1", "2"]


def test_tiny_step_accuracy_and_exit_score_aurocs():
    result = tiny(threshold=0.5)
    steps = result.tables["step_accuracy"]
    assert steps["step"].tolist() == [1, 2, 3]
    assert steps["top1"].tolist() == pytest.approx([0.25, 0.5, 1.0])
    scores = result.tables["exit_score_steps"]
    assert list(scores.columns) == ["step", "agreement", "gate_auroc", "confidence_auroc"]
    # agrees with f_T: step 1 v0; step 2 v1, v3; step 3 all
    assert scores["agreement"].tolist() == pytest.approx([0.25, 0.5, 1.0])
    # step 1 gate: v0 (0.9) above all three negatives; step 2: v1 (0.6) above v0 (0.1)
    # and v2 (0.2), v3 (0.0) below both -> 2 of 4 pairs
    assert scores["gate_auroc"].iloc[:2].tolist() == pytest.approx([1.0, 0.5])
    # step 1 confidence: v0 (a=2) only above v1 (a=1) -> 1/3; step 2: v1 (a=2) above v0
    # (a=1), below v2 (a=3); v3 (a=4) above both -> 3/4
    assert scores["confidence_auroc"].iloc[:2].tolist() == pytest.approx([1 / 3, 0.75])
    assert math.isnan(scores["gate_auroc"].iloc[2])  # every video agrees at T: undefined
    assert math.isnan(scores["confidence_auroc"].iloc[2])


def test_auroc_counts_ties_as_half():
    from frameexit.evaluation import _auroc

    # positive 0.5 vs negatives 0.5 (tie: 1/2) and 0.2 (win: 1) -> 1.5 / 2
    assert _auroc(np.array([0.5, 0.5, 0.2]), np.array([True, False, False])) == 0.75
    assert _auroc(np.array([0.1, 0.9]), np.array([True, False])) == 0.0
    assert math.isnan(_auroc(np.array([0.1, 0.9]), np.array([False, False])))


def test_tiny_threshold_sweep():
    sweep = tiny(threshold=0.5, thresholds=[0.0, 0.5, 1.01]).tables["threshold_sweep"]
    assert sweep["threshold"].tolist() == [0.0, 0.5, 1.01]
    assert sweep["metric"].tolist() == ["top1"] * 3
    assert sweep["accuracy"].tolist() == pytest.approx([0.25, 0.75, 1.0])
    assert sweep["mean_steps"].tolist() == pytest.approx([1.0, 1.75, 3.0])
    assert sweep["gflops"].tolist() == pytest.approx([2.0, 3.5, 6.0])
    default = tiny(threshold=0.5).tables["threshold_sweep"]
    assert len(default) == 15 and default["threshold"].iloc[-1] == 1.01


def test_paper_rule_takes_the_official_first_step_rule():
    """first_exits replaces step 1's gate decision under the paper's rule only."""
    first = np.array([False, True, False, False])
    result = tiny(threshold=0.5, first_exits=first, thresholds=[0.5])
    # v0 and v3 lose their step-1 exit and no later gate fires; v1 exits at step 1
    assert result.tables["predictions"]["exit_step"].tolist() == [3, 1, 3, 3]
    m = result.metrics
    assert m["mean_steps"] == pytest.approx(2.5)
    assert m["accuracy"] == pytest.approx(0.75)  # v1's step-1 label 2 is wrong
    assert m["disagreement"] == pytest.approx(0.25)
    assert result.tables["threshold_sweep"]["mean_steps"].tolist() == pytest.approx([2.5])
    fixed_gate = OperatingPoint(score="gate", thresholds=[0.5, 0.5, INF], rule="fixed")
    ignored = tiny(operating_point=fixed_gate, first_exits=first)
    assert ignored.tables["predictions"]["exit_step"].tolist() == [1, 2, 3, 1]
    assert ignored.metrics["rule"] == "fixed" and ignored.metrics["threshold"] is None


def test_an_operating_point_overrides_the_threshold():
    from frameexit.operating_point import paper_rule

    result = tiny(threshold=0.9, operating_point=paper_rule(0.15, 3))
    assert result.metrics["threshold"] == 0.15
    # gates >= 0.15: v0 step 1, v1 step 1 (0.2), v2 step 2 (0.2), v3 step 1
    assert result.tables["predictions"]["exit_step"].tolist() == [1, 1, 2, 1]
    assert result.metrics["accuracy"] == pytest.approx(0.25)  # only v0 (label 0) right


def test_confidence_operating_point_and_its_family_by_hand():
    # step-1 confidences: v0 conf(2)=.787, v1 conf(1)=.576, v2 conf(4)=.965, v3 conf(3)=.909
    # step-2 confidences: v0 .576, v1 .787, v2 .909, v3 .965
    assert conf(4) > 0.95 > conf(3) > 0.9 > conf(2)  # the example's premise
    point = OperatingPoint(
        score="confidence", thresholds=[0.95, 0.9, INF], rule="calibrated", risk="disagreement",
        bound=0.1, delta=0.1, calibration_videos=50, calibrated_on="val", member=2,
        family=[[INF] * 3, [0.95, 0.9, INF], [0.5, 0.5, INF]],
    )  # fmt: skip
    result = tiny(operating_point=point, threshold=0.5, first_exits=np.ones(4, bool))
    pred = result.tables["predictions"]
    # v2 exits at step 1 (.965), v3 at step 2 (.965), v0 and v1 never: first_exits ignored
    assert pred["exit_step"].tolist() == [3, 3, 1, 2]
    assert pred["prediction"].tolist() == [0, 1, 0, 0]
    assert pred["exit_prob"].tolist() == pytest.approx([0.1, 0.1, 0.1, 0.0])  # the gates'
    m = result.metrics
    assert m["rule"] == "calibrated" and m["exit_score"] == "confidence"
    assert m["threshold"] is None
    assert m["operating_point"] == (
        "calibrated confidence exits: disagreement <= 0.1 with probability >= 0.9 "
        "(Learn-then-Test on 50 videos of val); thresholds [0.95, 0.9]"
    )
    assert m["accuracy"] == pytest.approx(0.75)  # v2's step-1 label 0 is wrong
    assert m["mean_steps"] == pytest.approx(2.25) and m["gflops"] == pytest.approx(4.5)
    assert m["disagreement"] == pytest.approx(0.25)
    assert m["delta_accuracy"] == pytest.approx(-0.25)
    family = result.tables["operating_point_family"]
    assert list(family.columns) == ["member", "disagreement", "mean_steps", "gflops", "chosen"]
    assert family["member"].tolist() == [1, 2, 3]
    # member 3 exits everyone at step 1 (every confidence >= .576): only v0 agrees with f_T
    assert family["disagreement"].tolist() == pytest.approx([0.0, 0.25, 0.75])
    assert family["mean_steps"].tolist() == pytest.approx([3.0, 2.25, 1.0])
    assert family["gflops"].tolist() == pytest.approx([6.0, 4.5, 2.0])
    assert family["chosen"].tolist() == [False, True, False]
    # the paper's sweep is still over the gates (τ=0.5 exits as in the paper rule)
    sweep = result.tables["threshold_sweep"]
    assert sweep.loc[sweep["threshold"] == 0.5, "mean_steps"].item() == pytest.approx(1.0)


def test_fixed_point_description_and_no_family_table():
    point = OperatingPoint(score="confidence", thresholds=[0.95, 0.9, INF], rule="fixed")
    result = tiny(operating_point=point)
    assert result.metrics["operating_point"] == "confidence >= [0.95, 0.9] (fixed thresholds)"
    assert result.metrics["rule"] == "fixed"
    assert "operating_point_family" not in result.tables
    assert "operating_point_family" not in tiny(threshold=0.5).tables
    assert set(tiny(threshold=0.5).tables) == {
        "predictions", "exit_histogram", "exit_matrix", "per_class_frames", "step_accuracy",
        "exit_score_steps", "threshold_sweep",
    }  # fmt: skip


def test_every_video_exits_at_step_one():
    result = tiny(threshold=0.0)
    m = result.metrics
    assert m["mean_steps"] == 1.0 and m["gflops"] == 2.0
    assert m["gflops_saving"] == pytest.approx(3.0)
    assert m["accuracy"] == pytest.approx(0.25)  # step-1 labels 0, 2, 0, 1: v0 right
    assert m["delta_accuracy"] == pytest.approx(-0.75)
    assert m["disagreement"] == pytest.approx(0.75)
    hist = result.tables["exit_histogram"]
    assert hist["count"].tolist() == [4, 0, 0]
    assert hist["fraction"].tolist() == [1.0, 0.0, 0.0]
    assert hist["accuracy"].iloc[0] == 0.25 and hist["accuracy"].iloc[1:].isna().all()
    assert result.exit_matrix[0].tolist() == pytest.approx([0.25, 0.5, 1.0])
    assert np.isnan(result.exit_matrix[1:]).all()  # no video exited at steps 2, 3
    assert result.tables["per_class_frames"]["mean_frames"].tolist() == [1.0, 1.0, 1.0]


def test_no_video_exits_early():
    result = tiny(threshold=1.01)
    m = result.metrics
    assert m["mean_steps"] == 3.0 and m["gflops"] == m["noexit_gflops"] == 6.0
    assert m["gflops_saving"] == 1.0
    assert m["accuracy"] == m["noexit_accuracy"] == 1.0
    assert m["delta_accuracy"] == 0.0 and m["delta_accuracy_ci90"] == [0.0, 0.0]
    assert m["disagreement"] == 0.0
    assert m["mAP"] == m["noexit_mAP"] == pytest.approx(1.0)
    assert result.tables["exit_histogram"]["count"].tolist() == [0, 0, 4]
    assert np.isnan(result.exit_matrix[:2]).all()
    assert result.exit_matrix[2].tolist() == pytest.approx([0.25, 0.5, 1.0])
    never = OperatingPoint(score="confidence", thresholds=[INF] * 3, rule="fixed")
    assert tiny(operating_point=never).tables["predictions"]["exit_step"].tolist() == [3] * 4


def test_a_single_video():
    logits = tiny_logits()[1:2]  # v1: labels 2, 1, 1; target 1; gate fires at step 2
    result = evaluate_outputs(
        logits=logits, gate_probs=GATES[1:2], target=TARGET[1:2], step_cost=TINY_COST,
        threshold=0.5, multi_label=False, videos=["only"],
    )  # fmt: skip
    m = result.metrics
    assert m["num_videos"] == 1 and m["mean_steps"] == 2.0 and m["gflops"] == 4.0
    assert m["accuracy"] == 1.0 and m["noexit_accuracy"] == 1.0
    assert m["delta_accuracy"] == 0.0 and m["delta_accuracy_ci90"] == [0.0, 0.0]
    assert m["disagreement"] == 0.0 and m["oracle_mean_steps"] == 2.0
    assert m["mAP"] == 1.0  # classes without a positive video are skipped
    assert result.tables["exit_histogram"]["count"].tolist() == [0, 1, 0]
    assert result.tables["step_accuracy"]["top1"].tolist() == [0.0, 1.0, 1.0]
    assert result.tables["exit_score_steps"][["gate_auroc", "confidence_auroc"]].isna().all().all()
    assert result.tables["predictions"]["video"].tolist() == ["only"]
    frames = result.tables["per_class_frames"]
    assert frames["count"].tolist() == [0, 1, 0]
    assert frames["mean_frames"].iloc[1] == 2.0 and frames["mean_frames"].iloc[[0, 2]].isna().all()
    # the same video judged against its step-1 label 2: exiting at step 1 is right, f_T wrong
    early = evaluate_outputs(
        logits=logits, gate_probs=GATES[1:2], target=np.array([2]), step_cost=TINY_COST,
        threshold=0.0, multi_label=False,
    )  # fmt: skip
    assert early.tables["predictions"]["correct"].tolist() == [True]
    assert early.metrics["accuracy"] == 1.0 and early.metrics["noexit_accuracy"] == 0.0
    assert early.metrics["delta_accuracy"] == 1.0
    assert early.metrics["delta_accuracy_ci90"] == [1.0, 1.0]
    assert early.metrics["disagreement"] == 1.0 and early.metrics["oracle_mean_steps"] == 2.0
    assert early.tables["exit_histogram"]["accuracy"].iloc[0] == 1.0


# Multi-label: 3 videos x 2 steps x 2 classes; label set = classes with logit >= 0.
#
#   video  target  step 1 logits (set)   step 2 logits (set)   gate   exit (τ=0.5)
#   v0     {0}     [2, -1]   ({0})       [3, -2]  ({0})        0.8    1
#   v1     {0,1}   [1, -2]   ({0})       [2, 1]   ({0,1})      0.7    1  (disagrees)
#   v2     {1}     [.5, .2]  ({0,1})     [-2, 3]  ({1})        0.2    2

ML_TARGET = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32)
ML_LOGITS = np.array(
    [[[2, -1], [3, -2]], [[1, -2], [2, 1]], [[0.5, 0.2], [-2, 3]]], dtype=np.float32
)
ML_GATES = np.array([[0.8, 0.1], [0.7, 0.1], [0.2, 0.1]], dtype=np.float32)


def multi(**kw):
    args = dict(
        logits=ML_LOGITS, gate_probs=ML_GATES, target=ML_TARGET, step_cost=COST,
        multi_label=True, threshold=0.5,
    )  # fmt: skip
    return evaluate_outputs(**{**args, **kw})


def test_tiny_multi_label_by_hand():
    result = multi(class_names=["a", "b"])
    m = result.metrics
    assert m["metric"] == "mAP" and "top1" not in m and "noexit_top1" not in m
    # exits: class 0 ranks v0, v1 (positives) above v2 -> AP 1; class 1 ranks v2 (3), v0
    # (-1), v1 (-2) with positives v2, v1 -> AP (1 + 2/3) / 2
    assert m["accuracy"] == m["mAP"] == pytest.approx((1 + 5 / 6) / 2)
    assert m["noexit_accuracy"] == m["noexit_mAP"] == pytest.approx(1.0)
    assert m["delta_accuracy"] == pytest.approx((1 + 5 / 6) / 2 - 1)
    low, high = m["delta_accuracy_ci90"]
    assert low <= m["delta_accuracy"] + 1e-9 and high <= 1e-9
    assert m["mean_steps"] == pytest.approx(4 / 3)
    assert m["disagreement"] == pytest.approx(1 / 3)  # v1: {0} at step 1, {0,1} at T
    assert m["oracle_mean_steps"] == pytest.approx(5 / 3)  # v0 1, v1 2, v2 2
    pred = result.tables["predictions"]
    assert pred["exit_step"].tolist() == [1, 1, 2]
    assert pred["prediction"].tolist() == [0, 0, 1]
    assert pred["correct"].tolist() == [True, True, True]  # top class is a positive
    assert [list(t) for t in pred["target"]] == [[1, 0], [1, 1], [0, 1]]
    hist = result.tables["exit_histogram"]
    assert hist["count"].tolist() == [2, 1] and hist["accuracy"].tolist() == [1.0, 1.0]
    # v2's step-1 top class (0) is not a positive
    np.testing.assert_allclose(result.exit_matrix, [[1.0, 1.0], [0.0, 1.0]])
    steps = result.tables["step_accuracy"]
    assert list(steps.columns) == ["step", "mAP"]
    assert steps["mAP"].tolist() == pytest.approx([(1 + 5 / 6) / 2, 1.0])
    frames = result.tables["per_class_frames"]  # a video counts for each of its classes
    assert frames["name"].tolist() == ["a", "b"]
    assert frames["count"].tolist() == [2, 2]
    assert frames["mean_frames"].tolist() == pytest.approx([1.0, 1.5])
    scores = result.tables["exit_score_steps"]
    assert scores["agreement"].tolist() == pytest.approx([1 / 3, 1.0])
    # step 1 gate: the agreeing v0 (0.8) above v1 (0.7) and v2 (0.2)
    assert scores["gate_auroc"].iloc[0] == 1.0
    # step 1 confidence (least certain class): v0 σ(1)=.731, v1 σ(1)=.731, v2 σ(.2)=.550:
    # v0 ties v1 (1/2) and beats v2 -> 0.75
    assert scores["confidence_auroc"].iloc[0] == pytest.approx(0.75)
    sweep = result.tables["threshold_sweep"]
    assert sweep["metric"].iloc[0] == "mAP"
    assert sweep.loc[sweep["threshold"] == 0.5, "accuracy"].item() == pytest.approx(11 / 12)


def test_multi_label_threshold_changes_the_label_sets():
    # σ >= 0.25 (logit >= -1.0986): v0's step-1 set becomes {0,1} against {0} at T, and
    # v1's stays {0} against {0,1}: two of three exits disagree
    result = multi(multi_label_threshold=0.25)
    assert result.metrics["disagreement"] == pytest.approx(2 / 3)
    assert result.metrics["accuracy"] == pytest.approx(11 / 12)  # the metric ignores it


def test_multi_label_confidence_point_that_never_fires():
    # least-certain confidences at step 1 are .731, .731, .550: λ_1 = .75 stops every exit
    point = OperatingPoint(
        score="confidence", thresholds=[0.75, INF], rule="fixed",
        family=[[0.75, INF], [0.7, INF]], member=1,
    )  # fmt: skip
    result = multi(operating_point=point)
    m = result.metrics
    assert m["mean_steps"] == 2.0 and m["disagreement"] == 0.0
    assert m["delta_accuracy"] == 0.0 and m["delta_accuracy_ci90"] == [0.0, 0.0]
    family = result.tables["operating_point_family"]
    # λ_1 = .7 exits v0, v1 at step 1 (v1 disagrees)
    assert family["disagreement"].tolist() == pytest.approx([0.0, 1 / 3])
    assert family["mean_steps"].tolist() == pytest.approx([2.0, 4 / 3])
    assert family["chosen"].tolist() == [True, False]


def test_paired_interval_exact_cases():
    assert paired_interval(np.ones(5), np.zeros(5)) == (1.0, 1.0)  # exit - all T
    assert paired_interval(np.zeros(5), np.ones(5)) == (-1.0, -1.0)
    low, high = paired_interval(np.array([1.0]), np.array([0.0]))
    assert (low, high) == (1.0, 1.0)
    empty = paired_interval(np.array([]), np.array([]))
    assert math.isnan(empty[0]) and math.isnan(empty[1])
    shifted = paired_interval(
        np.array([3.0, 5.0, 9.0]), np.array([1.0, 3.0, 7.0]), statistic=np.median, resamples=50
    )
    assert shifted == (2.0, 2.0)
    values = np.r_[np.ones(30), np.zeros(70)]
    a = paired_interval(values, np.zeros(100), seed=3)
    assert a == paired_interval(values, np.zeros(100), seed=3)  # reproducible
    wide = paired_interval(values, np.zeros(100), seed=3, level=0.99)
    assert wide[0] <= a[0] < 0.3 < a[1] <= wide[1]
    assert a[0] > 0.15 and a[1] < 0.45  # binomial sd of a mean of 100 is ~0.046
    # differences (0, 1): a resampled mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so
    # the 60 % interval (quantiles 0.2, 0.8) spans 0..1 and the 40 % one (0.3, 0.7) is 0.5
    pair = (np.array([0.0, 1.0]), np.zeros(2))
    assert paired_interval(*pair, level=0.6) == (0.0, 1.0)
    assert paired_interval(*pair, level=0.4) == (0.5, 0.5)


def test_arrays_for_names_thresholds_and_interval_inputs_and_the_exit_score_column():
    """numpy arrays are accepted where lists are (class names, the τ grid, the paired
    interval's inputs with a statistic), and predictions carry the score the operating
    point exited by next to the gate's probability."""
    from frameexit.operating_point import OperatingPoint

    n, steps, k = 6, 3, 3
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(n, steps, k)).astype(np.float32)
    gates = rng.uniform(size=(n, steps)).astype(np.float32)
    target = rng.integers(0, k, size=n)
    cost = COST
    names = np.array(["x", "y", "z"])
    ev = evaluate_outputs(
        logits=logits, gate_probs=gates, target=target, step_cost=cost, multi_label=False,
        class_names=names, thresholds=np.array([0.0, 0.5, 1.01]),
    )  # fmt: skip
    assert list(ev.tables["per_class_frames"]["name"]) == ["x", "y", "z"]
    assert list(ev.tables["threshold_sweep"]["threshold"]) == [0.0, 0.5, 1.01]
    point = OperatingPoint(score="confidence", thresholds=(0.45, 0.45, 0.45), rule="fixed")
    ev = evaluate_outputs(
        logits=logits, gate_probs=gates, target=target, step_cost=cost, multi_label=False,
        operating_point=point,
    )  # fmt: skip
    pred = ev.tables["predictions"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True)).max(-1)  # confidence: f_t's max softmax
    steps_taken = pred["exit_step"].to_numpy()
    assert np.allclose(pred["exit_score"], probs[np.arange(n), steps_taken - 1], atol=1e-6)
    assert np.allclose(pred["exit_prob"], gates[np.arange(n), steps_taken - 1])
    exited_early = steps_taken < steps
    assert (pred["exit_score"][exited_early] >= 0.45).all()
    low, high = paired_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], statistic=np.mean)
    assert 1.0 <= low <= 2.0 <= high <= 3.0
