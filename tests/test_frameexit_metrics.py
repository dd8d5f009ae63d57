"""Metrics against hand-computed values and a reference AP definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frameexit.metrics import (
    average_precision_per_class,
    exit_histogram,
    exit_matrix,
    mean_average_precision,
    mean_frames,
    mean_gflops,
    per_class_frames,
    top1_accuracy,
)


def reference_ap(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP = mean over positives p of |{positives with score ≥ s_p}| / |{videos with score ≥ s_p}|."""
    precisions = []
    for i in np.flatnonzero(truth):
        at_least = scores >= scores[i]
        precisions.append(truth[at_least].sum() / at_least.sum())
    return float(np.mean(precisions))


def test_top1() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.4, 0.6, 0.0]])
    assert top1_accuracy(scores, torch.tensor([1, 0, 0, 0])) == 0.5
    multi_hot = np.array([[0, 1, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert top1_accuracy(scores.numpy(), multi_hot) == 0.5
    assert math.isnan(top1_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))


def test_ap_hand_computed() -> None:
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    truth = np.array([[1], [0], [1], [0]])
    # positives at ranks 1 and 3: precisions 1/1 and 2/3
    assert average_precision_per_class(scores, truth)[0] == pytest.approx((1 + 2 / 3) / 2)
    perfect = np.array([[1], [1], [0], [0]])
    assert average_precision_per_class(scores, perfect)[0] == pytest.approx(1.0)


def test_ap_matches_reference_on_random_data() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((40, 6))
    truth = rng.random((40, 6)) < 0.3
    truth[0] = True  # every class has a positive
    ap = average_precision_per_class(scores, truth)
    expected = [reference_ap(scores[:, k], truth[:, k]) for k in range(6)]
    np.testing.assert_allclose(ap, expected)
    assert mean_average_precision(torch.from_numpy(scores), truth) == pytest.approx(
        np.mean(expected)
    )


def test_map_skips_classes_without_positives() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.6, 0.3, 0.7]])
    truth = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])  # class 2 has no positives
    ap = average_precision_per_class(scores, truth)
    assert ap[0] == 1.0 and ap[1] == 1.0 and math.isnan(ap[2])
    assert mean_average_precision(scores, truth) == 1.0
    assert math.isnan(mean_average_precision(scores, np.zeros_like(truth)))
    # integer class ids work too (single-label data evaluated with mAP)
    # class 0: its video ranks 2nd (AP 1/2); class 1: 1st (1); class 2: 2nd (1/2)
    assert mean_average_precision(scores, np.array([2, 1, 0])) == pytest.approx(2 / 3)


def test_ap_ties_keep_input_order() -> None:
    scores = np.array([[0.5], [0.5], [0.5]])
    assert average_precision_per_class(scores, np.array([[0], [1], [0]]))[0] == pytest.approx(0.5)
    assert average_precision_per_class(scores, np.array([[1], [0], [0]]))[0] == pytest.approx(1.0)


def test_exit_histogram() -> None:
    exit_step = torch.tensor([1, 1, 3, 4, 4, 4])
    correct = torch.tensor([True, False, True, True, True, False])
    hist = exit_histogram(exit_step, correct, 4)
    assert list(hist.columns) == ["step", "count", "fraction", "accuracy"]
    assert hist["step"].tolist() == [1, 2, 3, 4]
    assert hist["count"].tolist() == [2, 0, 1, 3]
    assert hist["count"].sum() == 6
    assert hist["fraction"].tolist() == pytest.approx([2 / 6, 0, 1 / 6, 3 / 6])
    acc = hist["accuracy"].tolist()
    assert acc[0] == 0.5 and math.isnan(acc[1]) and acc[2] == 1.0 and acc[3] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        exit_histogram([0, 1], [True, True], 4)


def test_exit_matrix() -> None:
    # 3 videos, T = 3, K = 2; classifier j's top class per video:
    top = np.array([[0, 1, 1], [1, 1, 0], [0, 0, 0]])
    logits = np.where(np.arange(2)[None, None] == top[..., None], 1.0, 0.0)
    targets = np.array([1, 1, 0])
    exit_step = np.array([1, 1, 3])
    m = exit_matrix(logits, exit_step, targets)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m[0], [0.5, 1.0, 0.5])  # videos 0 and 1
    assert np.isnan(m[1]).all()  # nobody exited at step 2
    np.testing.assert_allclose(m[2], [1.0, 1.0, 1.0])  # video 2
    multi = np.array([[0, 1], [1, 1], [1, 0]])
    mm = exit_matrix(torch.from_numpy(logits), exit_step, multi, multi_label=True)
    np.testing.assert_allclose(mm[0], [0.5, 1.0, 1.0])
    with pytest.raises(ValueError):
        exit_matrix(logits, exit_step, targets, multi_label=True)


def test_frames_and_gflops() -> None:
    frames = torch.tensor([1, 2, 3, 10])
    assert mean_frames(frames) == 4.0
    assert mean_gflops(frames, 4.12) == pytest.approx(16.48)


def test_per_class_frames() -> None:
    table = per_class_frames([1, 3, 10, 4], [0, 0, 2, 2], num_classes=4)
    assert table["class"].tolist() == [0, 1, 2, 3]
    assert table["count"].tolist() == [2, 0, 2, 0]
    means = table["mean_frames"].tolist()
    assert means[0] == 2.0 and means[2] == 7.0 and math.isnan(means[1]) and math.isnan(means[3])
    multi = per_class_frames([2, 4], np.array([[1, 1, 0], [0, 1, 0]]), num_classes=3)
    assert multi["count"].tolist() == [1, 2, 0]
    assert multi["mean_frames"].tolist()[:2] == [2.0, 3.0]
