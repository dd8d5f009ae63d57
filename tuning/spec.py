"""What a sweep covers: ``cfg.sweep`` as a typed, validated :class:`SweepSpec`.

Every key is optional; errors name ``sweep.<key>``. The grid is backbones × T (stage-1
units) × β (gate trainings), plus a post-hoc grid of exit thresholds per trained model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frameexit.config import Config
from frameexit.errors import ConfigError
from frameexit.exits import DEFAULT_THRESHOLDS
from frameexit.storage import absolute_uri, join_uri

DEFAULT_BETAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
SEARCHERS = ("grid", "optuna")


@dataclass
class SweepSpec:
    """What ``cfg.sweep`` may hold (every key optional). Errors name ``sweep.<key>``."""

    backbones: list[str] = field(default_factory=list)  # default: [model.backbone]
    num_steps: list[int] = field(default_factory=list)  # default: [model.num_steps]
    betas: list[float] = field(default_factory=lambda: list(DEFAULT_BETAS))
    searcher: str = "grid"  # "grid" | "optuna" (multi-objective over T and log β)
    num_samples: int = 12  # optuna: number of β trials in all
    beta_range: list[float] = field(default_factory=lambda: [1e-6, 1e-2])  # optuna
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    storage: str = ""  # default: {train.storage}/sweeps/{train.name}
    trial_cpus: float = 0.25  # held by the trial process itself
    stage2_num_workers: int = 1  # Ray Train workers of a β trial (gates on cached features)
    # a β trial whose cached train + val features take at most this many MB in memory
    # trains its gates in its own process (no Ray Train start-up); 0 = always Ray Train
    stage2_in_process_mb: float = 1024.0
    test: bool = True  # also cache data.test_split (when it has videos): test_* columns
    max_concurrent: int = 0  # β trials at once; 0 = as many as the cluster's CPUs allow
    stage1_concurrency: int = 1  # stage-1 units at once (each is a full DDP run)
    max_failures: int = 1  # retries per trial before it counts as failed
    eval_plots: bool = True  # per-trial Fig. 3/4/5 PNGs from evaluate (False: tables only)
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Config) -> SweepSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(cfg.sweep) - known)
        if unknown:
            raise ConfigError(
                f"sweep.{unknown[0]}", f"unknown key; known: {', '.join(sorted(known))}"
            )
        spec = cls(**cfg.sweep)
        spec.backbones = [str(b) for b in (spec.backbones or [cfg.model.backbone])]
        spec.num_steps = list(spec.num_steps or [cfg.model.num_steps])
        spec.storage = absolute_uri(
            spec.storage or join_uri(absolute_uri(cfg.train.storage), "sweeps", cfg.train.name)
        )
        spec.betas = [_number("sweep.betas", b) for b in spec.betas]
        spec.thresholds = [_number("sweep.thresholds", t) for t in spec.thresholds]
        spec.beta_range = [_number("sweep.beta_range", b) for b in spec.beta_range]
        spec.validate()
        return spec

    def validate(self) -> None:
        if not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in self.num_steps
        ):
            raise ConfigError("sweep.num_steps", f"must be integers >= 1, got {self.num_steps}")
        if self.searcher not in SEARCHERS:
            raise ConfigError(
                "sweep.searcher", f"must be one of {SEARCHERS}, got {self.searcher!r}"
            )
        if self.searcher == "grid" and not self.betas:
            raise ConfigError("sweep.betas", "must hold at least one β")
        lo, hi = (self.beta_range + [0, 0])[:2]
        if self.searcher == "optuna" and not (len(self.beta_range) == 2 and 0 < lo < hi):
            raise ConfigError(
                "sweep.beta_range",
                f"must be [low, high] with 0 < low < high, got {self.beta_range}",
            )
        if self.num_samples < 1:
            raise ConfigError("sweep.num_samples", f"must be >= 1, got {self.num_samples}")
        if not self.trial_cpus > 0:
            raise ConfigError(
                "sweep.trial_cpus", f"must be > 0 (Tune refuses 0), got {self.trial_cpus}"
            )
        for name in ("stage2_num_workers", "stage1_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sweep.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.max_concurrent < 0:
            raise ConfigError(
                "sweep.max_concurrent", f"must be >= 0 (0 = auto), got {self.max_concurrent}"
            )
        for name in ("eval_plots", "test"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"sweep.{name}", f"must be true or false, got {getattr(self, name)!r}"
                )
        if not (
            isinstance(self.stage2_in_process_mb, int | float)
            and not isinstance(self.stage2_in_process_mb, bool)
            and 0 <= self.stage2_in_process_mb < float("inf")
        ):
            raise ConfigError(
                "sweep.stage2_in_process_mb",
                f"must be a number of MB >= 0 (0 = always Ray Train), got "
                f"{self.stage2_in_process_mb!r}",
            )
        if self.max_failures < 0:
            raise ConfigError("sweep.max_failures", f"must be >= 0, got {self.max_failures}")


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(name, f"must be numbers, got {value!r}") from error
    if not np.isfinite(number):
        raise ConfigError(name, f"must be finite, got {value!r}")
    return number
