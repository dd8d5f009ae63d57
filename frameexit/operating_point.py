"""Operating points: which exit score, which per-step thresholds, and what they guarantee.

The paper exits when the gate's probability reaches τ = 0.5; nothing bounds what a user
loses. An :class:`OperatingPoint` is an exit score (``frameexit.exits``: ``gate``,
``confidence``, ``gate+confidence``), per-step thresholds λ_1..λ_T and, when calibrated,
a finite-sample guarantee chosen by Learn-then-Test (Angelopoulos et al., 2021) with
fixed-sequence testing::

    shape data (train split)  ──fit_family──► λ(α_1) … λ(α_m)   conservative → aggressive
                                               (λ(α_0) = never exit early, risk 0)
    calibration videos (n)    ──per member j: loss_i = 1 if the label at video i's exit
                                differs from its all-T label (disagreement), or it is
                                wrong where all T is right (accuracy drop); k_j = Σ loss
                              ──p_j = P(Binomial(n, ε) ≤ k_j); accept while p_j ≤ δ
                              ──► the last accepted member (none: all T steps)

Then P(risk > ε) ≤ δ over the draw of the calibration videos, for videos exchangeable
with them: a uniform random sample of the corpus being labeled is. Accuracy drop ≤
P(exit wrong ∧ all-T right) ≤ disagreement, so either bound also bounds the drop.

The family's shape may be fitted on any data but the calibration set: per step, the
smallest threshold at which the exits' precision (agreement with f_T, smoothed, taken
monotone from the top) reaches a level p; α walks p from 1 down to ``min_precision``, so
every λ_t is non-increasing along the family (:func:`fit_family`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from frameexit.exits import exit_steps

#: The paper's exit threshold τ (gate probability) when nothing else is chosen.
PAPER_THRESHOLD = 0.5
RISKS = ("disagreement", "accuracy_drop")
FAMILIES = ("constant", "fitted")


@dataclass
class OperatingPoint:
    """An exit score and per-step thresholds, with what chose them.

    ``thresholds`` has T values; a video exits at the first step t < T whose score is ≥
    λ_t (``inf``: never at that step), else f_T answers. ``rule``: ``paper`` (gate, one τ),
    ``fixed`` (thresholds given by hand) or ``calibrated`` (Learn-then-Test: ``risk`` ≤
    ``bound`` with probability ≥ 1 − ``delta`` over ``calibration_videos`` videos).
    ``fallback`` says why a calibration kept all T steps (never silently)."""

    score: str
    thresholds: list[float]
    rule: str = "fixed"
    risk: str | None = None
    bound: float | None = None
    delta: float | None = None
    calibration_videos: int = 0
    calibrated_on: str = ""
    member: int = 0  # index in the family (0 = never exit early)
    family_size: int = 0
    empirical_risk: float | None = None  # losses / n at the chosen member
    risk_upper_bound: float | None = None  # one-sided (1 − δ) Clopper-Pearson bound there
    mean_steps: float | None = None  # on the calibration videos
    fallback: str | None = None
    family: list[list[float]] | None = field(default=None, repr=False)

    @property
    def exits_early(self) -> bool:
        """Whether any video can leave before step T."""
        return any(math.isfinite(v) for v in self.thresholds[:-1])

    def exit_steps(self, scores: np.ndarray) -> np.ndarray:
        """1-based exit step of every video from its exit scores ``[N, T]``."""
        return exit_steps(scores, np.asarray(self.thresholds, dtype=np.float64))

    def describe(self) -> str:
        """One line for logs and summaries."""
        shown = ", ".join("-" if not math.isfinite(v) else f"{v:.3g}" for v in self.thresholds[:-1])
        if self.rule == "paper":
            return f"paper rule: gate probability >= {self.thresholds[0]:g} at every step"
        if self.rule == "calibrated" and self.bound is not None:
            head = (
                f"calibrated {self.score} exits: {self.risk} <= {self.bound:g} with probability "
                f">= {1 - (self.delta or 0):g} (Learn-then-Test on {self.calibration_videos} "
                f"videos of {self.calibrated_on or 'held-out data'})"
            )
            if self.fallback:
                return f"{head}; FELL BACK to all T steps: {self.fallback}"
            return f"{head}; thresholds [{shown}]"
        return f"{self.score} >= [{shown}] (fixed thresholds)"

    def to_dict(self, *, with_family: bool = True) -> dict[str, Any]:
        """JSON-safe dict (``inf`` as None)."""
        out = asdict(self)
        out["thresholds"] = [_finite_or_none(v) for v in self.thresholds]
        if self.family is not None and with_family:
            out["family"] = [[_finite_or_none(v) for v in row] for row in self.family]
        else:
            out.pop("family")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        """Inverse of :meth:`to_dict` (None thresholds back to ``inf``)."""
        values = dict(data)
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in values.items() if k in known}
        values["thresholds"] = [_inf_if_none(v) for v in values["thresholds"]]
        if values.get("family") is not None:
            values["family"] = [[_inf_if_none(v) for v in row] for row in values["family"]]
        return cls(**values)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _inf_if_none(value: float | None) -> float:
    return math.inf if value is None else float(value)


def paper_rule(threshold: float, num_steps: int) -> OperatingPoint:
    """The paper's rule: gate probability ≥ τ at every step."""
    return OperatingPoint(score="gate", thresholds=[float(threshold)] * num_steps, rule="paper")


def paper_threshold(model_cfg: Any) -> float:
    """The paper's τ of a model config: ``model.exit_threshold``, else 0.5."""
    value = getattr(model_cfg, "exit_threshold", None)
    return PAPER_THRESHOLD if value is None else float(value)


# --- the family -----------------------------------------------------------------------


def fit_family(
    scores: np.ndarray,
    agree: np.ndarray,
    *,
    size: int = 100,
    min_precision: float = 0.5,
) -> np.ndarray:
    """Per-step threshold vectors ``[size, T]``, ordered from conservative to aggressive,
    fitted on shape data (never the calibration videos).

    ``scores [N, T]`` exit scores, ``agree [N, T]`` whether f_t's label is acceptable at
    step t (equals f_T's, or is right). Member j targets precision p_j, with 1 − p_j
    geometric from the best precision reached down to 1 − ``min_precision``: λ_t(p) is
    the smallest observed score s whose admitted exits (score ≥ s) have a smoothed
    precision (agree + 1) / (count + 2) ≥ p; ``inf`` where none does. Step T's value is always ``inf`` (f_T answers anyway). Each
    λ_t is non-increasing in j (tested)."""
    scores = np.asarray(scores, dtype=np.float64)
    agree = np.asarray(agree, dtype=bool)
    if scores.ndim != 2 or scores.shape != agree.shape:
        raise ValueError(
            f"scores and agree must be [N, T] alike, got {scores.shape}, {agree.shape}"
        )
    n, steps = scores.shape
    curves = []
    for t in range(steps - 1):
        order = np.argsort(-scores[:, t], kind="stable")
        s, ok = scores[order, t], agree[order, t]
        precision = (np.cumsum(ok) + 1) / (np.arange(1, n + 1) + 2)
        # a threshold at s[i] admits every video with score >= s[i]: the last index of
        # each tie group. λ_t(p) = the lowest threshold whose admitted set reaches p, so
        # lowering p can only lower it (the family is monotone)
        last = np.r_[s[1:] != s[:-1], True]
        curves.append((s[last], precision[last]))
    # error levels 1 - p spaced geometrically from the best precision any step reaches
    # down to min_precision: dense where users set their bounds (a few percent)
    best = max((float(c[1].max()) for c in curves if len(c[1])), default=1.0)
    low = max(1.0 - best, 1e-4)
    high = max(1.0 - min_precision, low)
    levels = 1.0 - np.geomspace(low, high, size)
    family = np.full((size, steps), np.inf)
    for t, (s, precision) in enumerate(curves):
        for j, level in enumerate(levels):
            reach = np.nonzero(precision >= level - 1e-12)[0]
            if len(reach):
                family[j, t] = s[reach[-1]]
    return family


def constant_family(size: int = 200, num_steps: int = 10) -> np.ndarray:
    """The shape-free family: one threshold λ for every step t < T, walked from
    1 − 10⁻⁴ down to 0 with 1 − λ geometric (dense where confident scores sit). Needs no
    shape data; on the synthetic benchmark it spends fewer frames at the same risk than a
    family fitted on the training split (whose scores are not those of held-out videos)."""
    values = 1.0 - np.geomspace(1e-4, 1.0, size)
    family = np.repeat(values[:, None], num_steps, axis=1)
    family[:, -1] = np.inf
    return family


# --- Learn-then-Test ------------------------------------------------------------------


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ k)."""
    from scipy.stats import binom

    return float(binom.cdf(k, n, p))


def min_calibration_videos(bound: float, delta: float) -> int:
    """The fewest videos with which even zero losses reject "risk > ε" at level δ:
    (1 − ε)^n ≤ δ."""
    return int(math.ceil(math.log(delta) / math.log1p(-bound)))


def risk_upper_bound(losses: int, n: int, delta: float) -> float:
    """One-sided (1 − δ) Clopper-Pearson upper bound on a risk with ``losses`` of ``n``."""
    from scipy.stats import beta

    if losses >= n:
        return 1.0
    return float(beta.ppf(1 - delta, losses + 1, n - losses))


def step_losses(
    step_labels: np.ndarray,
    *,
    risk: str,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """Loss of exiting at each step ``[N, T]`` (bool). ``step_labels [N, T]`` are f_t's
    answers (class ids, or any hashable per-step label-set code for multi-label);
    ``disagreement``: differs from step T's; ``accuracy_drop``: wrong while step T is right
    (needs ``targets [N]`` of the same kind)."""
    labels = np.asarray(step_labels)
    final = labels[:, -1:]
    if risk == "disagreement":
        return labels != final
    if risk == "accuracy_drop":
        if targets is None:
            raise ValueError("an accuracy-drop bound needs the true labels")
        truth = np.asarray(targets).reshape(-1, 1)
        return (labels != truth) & (final == truth)
    raise ValueError(f"risk must be one of {', '.join(RISKS)}; got {risk!r}")


def calibrate(
    family: np.ndarray,
    scores: np.ndarray,
    losses: np.ndarray,
    *,
    score: str,
    risk: str,
    bound: float,
    delta: float,
    calibrated_on: str = "",
) -> OperatingPoint:
    """Learn-then-Test with fixed-sequence testing over ``family`` on calibration videos.

    ``scores [n, T]`` their exit scores, ``losses [n, T]`` the loss of exiting at each
    step (:func:`step_losses`). Returns the last member whose p-value P(Bin(n, ε) ≤ k) is
    ≤ δ, walking from the first; all T steps with ``fallback`` set when the first member
    already fails or ``n`` is below :func:`min_calibration_videos`."""
    if not 0 < bound < 1:
        raise ValueError(f"the risk bound must be in (0, 1), got {bound}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    family = np.asarray(family, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    losses = np.asarray(losses, dtype=bool)
    n, steps = scores.shape
    if family.ndim != 2 or family.shape[1] != steps:
        raise ValueError(f"the family must be [m, {steps}], got {family.shape}")
    base = dict(
        score=score, risk=risk, bound=float(bound), delta=float(delta), calibration_videos=n,
        calibrated_on=calibrated_on, family_size=len(family), family=family.tolist(),
    )  # fmt: skip
    needed = min_calibration_videos(bound, delta)
    if n < needed:
        return OperatingPoint(
            thresholds=[math.inf] * steps, rule="calibrated", empirical_risk=0.0,
            risk_upper_bound=risk_upper_bound(0, n, delta) if n else 1.0, mean_steps=float(steps),
            fallback=f"{n} calibration videos are too few to bound {risk} at {bound:g} with "
            f"probability {1 - delta:g}: at least {needed} are needed",
            **base,
        )  # fmt: skip
    rows = np.arange(n)
    chosen, chosen_losses, chosen_steps = 0, 0, np.full(n, steps)
    for j, thresholds in enumerate(family, start=1):
        exit_at = exit_steps(scores, thresholds)
        k = int(losses[rows, exit_at - 1].sum())
        if binomial_cdf(k, n, bound) > delta:
            break
        chosen, chosen_losses, chosen_steps = j, k, exit_at
    thresholds = [math.inf] * steps if chosen == 0 else family[chosen - 1].tolist()
    fallback = None
    if chosen == 0:
        fallback = (
            f"no member of the {score} family keeps {risk} <= {bound:g} with probability "
            f"{1 - delta:g} on these {n} videos (the least aggressive one already fails)"
        )
    return OperatingPoint(
        thresholds=thresholds, rule="calibrated", member=chosen,
        empirical_risk=chosen_losses / n, risk_upper_bound=risk_upper_bound(chosen_losses, n, delta),
        mean_steps=float(chosen_steps.mean()), fallback=fallback, **base,
    )  # fmt: skip


def family_curve(
    family: np.ndarray, scores: np.ndarray, losses: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Risk and mean exit step of every member on some videos (for tables and plots)."""
    n = len(scores)
    rows = np.arange(n)
    risks, steps = [], []
    for thresholds in np.asarray(family, dtype=np.float64):
        exit_at = exit_steps(scores, thresholds)
        risks.append(float(losses[rows, exit_at - 1].mean()) if n else 0.0)
        steps.append(float(exit_at.mean()) if n else 0.0)
    return np.asarray(risks), np.asarray(steps)


def label_codes(
    step_logits: np.ndarray, *, multi_label: bool, threshold: float = 0.5
) -> np.ndarray:
    """Per-step answers as comparable codes ``[N, T]``: the top-1 class id, or for
    multi-label a bit mask of the classes whose sigmoid is ≥ ``threshold``."""
    logits = np.asarray(step_logits, dtype=np.float32)
    if not multi_label:
        return logits.argmax(-1)
    on = 1 / (1 + np.exp(-logits)) >= threshold
    return codes_from_sets(on)


def codes_from_sets(on: np.ndarray) -> np.ndarray:
    """Boolean ``[..., K]`` label sets → one integer-like code per set (comparable)."""
    packed = np.packbits(np.asarray(on, dtype=bool), axis=-1)
    flat = packed.reshape(-1, packed.shape[-1])
    codes = np.array([row.tobytes() for row in flat], dtype=object)
    return codes.reshape(packed.shape[:-1])


def summary(point: OperatingPoint, step_gflops: float) -> dict[str, Any]:
    """The operating point's headline numbers for metrics and summaries (no family)."""
    out = point.to_dict(with_family=False)
    out["description"] = point.describe()
    if point.mean_steps is not None:
        out["calibration_gflops"] = float(point.mean_steps * step_gflops)
    return out


def choose_operating_point(
    *,
    score: str,
    risk: str,
    bound: float,
    delta: float,
    family_size: int,
    calibration: dict[str, np.ndarray],
    multi_label: bool,
    family: str = "constant",
    shape: dict[str, np.ndarray] | None = None,
    multi_label_threshold: float = 0.5,
    calibrated_on: str = "",
) -> OperatingPoint:
    """Build the ``family`` of ``score`` (``constant``: :func:`constant_family`;
    ``fitted``: :func:`fit_family` on ``shape``) and calibrate it on ``calibration``
    (``{"logits" [N, T, K], "gate_probs" [N, T], "target"}``, videos disjoint from
    ``shape``)."""
    from frameexit.exits import exit_scores

    def prepared(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scores = exit_scores(score, data["logits"], data["gate_probs"], multi_label=multi_label)
        codes = label_codes(
            data["logits"], multi_label=multi_label, threshold=multi_label_threshold
        )
        truth = None
        if risk == "accuracy_drop":
            target = np.asarray(data["target"])
            truth = codes_from_sets(target > 0.5) if multi_label else target
        return scores, step_losses(codes, risk=risk, targets=truth)

    cal_scores, cal_losses = prepared(calibration)
    if family == "fitted":
        if shape is None:
            raise ValueError("a fitted family needs shape data (videos not used to calibrate)")
        shape_scores, shape_losses = prepared(shape)
        thresholds = fit_family(shape_scores, ~shape_losses, size=family_size)
    elif family == "constant":
        thresholds = constant_family(family_size, cal_scores.shape[1])
    else:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    return calibrate(
        thresholds, cal_scores, cal_losses, score=score, risk=risk, bound=bound, delta=delta,
        calibrated_on=calibrated_on,
    )  # fmt: skip
