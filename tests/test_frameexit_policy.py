"""Sampling policies: Algorithm 1 exactly, short videos, baselines, the authors' order."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from frameexit import policy
from frameexit.policy import (
    coarse_to_fine,
    get_policy,
    list_policies,
    official_order,
    official_presample,
    random_policy,
    sequential,
    uniform,
)


def reference_algorithm1(n: int) -> list[int]:
    """Algorithm 1 as written in the paper (1-based), with exact rational linspace."""
    s = [math.floor(Fraction(n + 1, 2)), 1, n]
    q = 2
    while len(s) < n:
        interval = [math.floor(1 + Fraction(i * (n - 1), q)) for i in range(q + 1)]
        for a, b in zip(interval, interval[1:], strict=False):
            mid = math.floor(Fraction(a + b, 2))
            if mid not in s:
                s.append(mid)
        q *= 2
    return s


@pytest.mark.parametrize("steps", [4, 8, 10, 16])
def test_coarse_to_fine_matches_reference(steps: int) -> None:
    for n in range(max(3, steps), 501):
        expected = [frame - 1 for frame in reference_algorithm1(n)[:steps]]
        assert coarse_to_fine(n, steps) == expected, n


def test_full_order_is_a_permutation_matching_reference() -> None:
    for n in range(3, 130):
        order = coarse_to_fine(n, n)
        assert sorted(order) == list(range(n))
        assert order == [f - 1 for f in reference_algorithm1(n)]


def test_worked_example_n10() -> None:
    assert [i + 1 for i in coarse_to_fine(10, 10)] == [5, 1, 10, 3, 7, 2, 4, 6, 8, 9]
    assert coarse_to_fine(10, 3) == [4, 0, 9]


def test_exact_integer_arithmetic_on_huge_videos() -> None:
    # float linspace would be inexact here; the exact rule is 1 + floor(i (N-1) / q)
    n = 10**17 + 3
    order = coarse_to_fine(n, 7)
    expected_1based = [(n + 1) // 2, 1, n]
    q2 = [1, 1 + (n - 1) // 2, n]
    expected_1based += [(q2[0] + q2[1]) // 2, (q2[1] + q2[2]) // 2]
    q4 = [1 + (i * (n - 1)) // 4 for i in range(5)]
    expected_1based += [(q4[0] + q4[1]) // 2, (q4[1] + q4[2]) // 2]
    assert order == [f - 1 for f in expected_1based]


def test_builds_only_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = []
    original = policy._algorithm1

    def counting(n: int):
        for frame in original(n):
            taken.append(frame)
            yield frame

    monkeypatch.setattr(policy, "_algorithm1", counting)
    assert len(coarse_to_fine(10**6, 10)) == 10
    assert len(taken) == 10


@pytest.mark.parametrize(
    ("n", "steps", "expected"),
    [
        (1, 1, [0]),
        (1, 4, [0, 0, 0, 0]),
        (2, 1, [0]),
        (2, 5, [0, 1, 0, 1, 0]),
        (3, 3, [1, 0, 2]),
        (3, 7, [1, 0, 2, 1, 0, 2, 1]),
        (5, 8, [2, 0, 4, 1, 3, 2, 0, 4]),
    ],
)
def test_short_videos_cycle_through_algorithm1_order(
    n: int, steps: int, expected: list[int]
) -> None:
    assert coarse_to_fine(n, steps) == expected


def test_short_videos_all_frames_first() -> None:
    for n in range(1, 16):
        out = coarse_to_fine(n, 16)
        assert len(out) == 16
        assert sorted(out[:n]) == list(range(n))
        assert out[n:] == [out[i % n] for i in range(n, 16)]


@pytest.mark.parametrize("name", list_policies())
def test_every_policy_gives_num_steps_valid_indices(name: str) -> None:
    fn = get_policy(name)
    for n in (1, 2, 3, 7, 10, 11, 64, 1001):
        for steps in (1, 2, 4, 10, 16):
            out = fn(n, steps)
            assert len(out) == steps
            assert all(isinstance(i, int) and 0 <= i < n for i in out), (name, n, steps, out)
            if n >= steps and name != "official":
                assert len(set(out)) == steps  # distinct frames when the video is long enough


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        coarse_to_fine(0, 4)
    with pytest.raises(ValueError):
        coarse_to_fine(10, 0)
    with pytest.raises(ValueError, match="unknown policy"):
        get_policy("nope")


def test_sequential_and_uniform() -> None:
    assert sequential(10, 4) == [0, 1, 2, 3]
    assert sequential(3, 5) == [0, 1, 2, 0, 1]
    assert uniform(100, 4) == [12, 37, 62, 87]
    assert uniform(10, 10) == list(range(10))
    assert uniform(3, 6) == [0, 0, 1, 1, 2, 2]


def test_random_policy_is_seeded_and_distinct() -> None:
    a = random_policy(100, 10, seed=1)
    assert a == random_policy(100, 10, seed=1)
    assert a != random_policy(100, 10, seed=2)
    assert len(set(a)) == 10
    short = random_policy(3, 7, seed=0)
    assert sorted(short[:3]) == [0, 1, 2] and short[3:] == short[:3] + short[:1]
    assert get_policy("random")(50, 5) == random_policy(50, 5, seed=0)


def test_official_presample_matches_numpy_linspace() -> None:
    for n in range(1, 400):
        for steps in (2, 4, 10, 16):
            expected = np.clip(np.linspace(0, n, steps), 0, n - 1).astype(int).tolist()
            assert official_presample(n, steps) == expected
    assert official_presample(7, 1) == [0]


def test_official_order() -> None:
    slots = official_presample(100, 10)  # [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert slots == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert official_order(100, 10) == [55, 0, 99, 22, 77, 44, 66, 33, 88, 11]
    assert official_order(10, 10) == [5, 0, 9, 2, 7, 4, 6, 3, 8, 1]
    # other T: Algorithm 1's order over the T pre-sampled slots
    slots8 = official_presample(50, 8)
    assert official_order(50, 8) == [slots8[j] for j in coarse_to_fine(8, 8)]
