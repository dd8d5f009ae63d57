"""Typed configuration: dataclasses, YAML files and ``a.b=value`` overrides.

Layering (lowest to highest): dataclass defaults → YAML file (any fsspec URI) →
command-line overrides. ``validate()`` runs last and raises
:class:`frameexit.errors.ConfigError` naming the dotted field, so a bad config fails
before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from frameexit.config_parsing import (
    apply_overrides,
    build,
    choice,
    deep_copy,
    integer,
    number,
    parse_override,
    positive,
    read_yaml,
    unit_interval,
)
from frameexit.errors import ConfigError
from frameexit.fields import (
    config_help,
    fields_with,
    fingerprint_of,
    flatten,
    setting,
)
from frameexit.video.options import DecodeOptions

VARIANTS = ("paper", "official")
GATE_INPUTS = ("features", "features+confidence")
__all__ = [
    "Config", "DataConfig", "ExitConfig", "LabelConfig", "ModelConfig", "StageConfig",
    "TrainConfig", "apply_overrides", "check_beta", "config_from_dict", "config_help",
    "config_to_dict", "config_yaml", "fields_with", "fingerprint_of", "flatten", "load_config",
    "parse_override", "redacted", "save_config", "upgrade",
]  # fmt: skip

#: ε_t = β·exp(t/2) at or above ln 2 lets a wrong single-label prediction (p_true < 0.5)
#: earn an "exit" pseudo-label
LN2 = math.log(2.0)


@dataclass
class ModelConfig:
    """The FrameExit network: backbone Φ, pooling Ψ, T classifiers and T gates."""

    backbone: str = "tiny"
    pretrained: str | None = None  # None: random init; "imagenet"; or a state_dict path/URI
    feature_dim: int = 4096
    num_classes: int = 10
    num_steps: int = 10  # T
    pooling: str = "max"
    gate_hidden: int = 64
    variant: str = "paper"  # "paper" or "official" (the authors' released code)
    multi_label: bool = False
    image_size: int | None = None  # None: the backbone's own (112 tiny, 224, 160 x3d_s)
    clip_length: int | None = None  # frames per step; None: the backbone's own (13 x3d_s)
    policy: str = setting("coarse_to_fine", checkpoint_override=True)
    # the paper's rule, gate probability >= τ at every step, when set; None: the
    # checkpoint's operating point (exit.*), or τ = 0.5 when it has none
    exit_threshold: float | None = setting(None, checkpoint_override=True)
    # official variant: step-1 exit on the top softmax score
    first_step_threshold: float = setting(0.99, checkpoint_override=True)
    # what the gates see: "features" (the paper: z_{t-1}, z_t) or "features+confidence"
    # (also f_t's output statistics); None: from exit.score
    gate_inputs: str | None = None

    def validate(self, prefix: str = "model") -> None:
        """Check every field against the registries (names) and the backbone's spec;
        fill ``image_size`` / ``clip_length`` left empty from the spec."""
        from frameexit.backbones import backbone_spec, list_backbones
        from frameexit.policy import list_policies
        from frameexit.pooling import list_poolings

        if self.backbone not in list_backbones():
            raise ConfigError(
                f"{prefix}.backbone",
                f"unknown backbone {self.backbone!r}; registered: {', '.join(list_backbones())}",
            )
        spec = backbone_spec(self.backbone)
        if self.image_size is None:
            self.image_size = spec.default_image_size
        if self.clip_length is None:
            self.clip_length = spec.clip_length
        positive(prefix, "feature_dim", self.feature_dim)
        positive(prefix, "num_classes", self.num_classes)
        positive(prefix, "num_steps", self.num_steps)
        positive(prefix, "gate_hidden", self.gate_hidden)
        positive(prefix, "image_size", self.image_size)
        positive(prefix, "clip_length", self.clip_length)
        if not spec.is_3d and self.clip_length != 1:
            raise ConfigError(
                f"{prefix}.clip_length",
                f"backbone {self.backbone!r} is 2D (one frame per step): clip_length must be 1, "
                f"got {self.clip_length}; clips need a 3D backbone (x3d_s)",
            )
        choice(prefix, "pooling", self.pooling, list_poolings())
        choice(prefix, "variant", self.variant, VARIANTS)
        choice(prefix, "policy", self.policy, list_policies())
        if self.exit_threshold is not None:
            unit_interval(prefix, "exit_threshold", self.exit_threshold, allow_above=True)
        unit_interval(prefix, "first_step_threshold", self.first_step_threshold)
        if self.gate_inputs is not None:
            choice(prefix, "gate_inputs", self.gate_inputs, GATE_INPUTS)
            if self.variant == "official" and self.gate_inputs != "features":
                raise ConfigError(
                    f"{prefix}.gate_inputs",
                    "the official variant's gates see features only (the authors' design)",
                )


@dataclass
class DataConfig:
    """Where the videos are and how they are batched."""

    manifest: str = ""  # URI of a manifest; empty = the embedded synthetic default
    storage_options: dict[str, Any] = setting(default_factory=dict, resumable=True)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = 16
    decode_concurrency: int = setting(2, resumable=True)
    augment: bool = True
    # how videos are opened and decoded (frameexit.video.DecodeOptions): backend "auto"
    # (= "pyav": for every index the frame a sequential decode outputs there) or "decord"
    # (opt-in, wrong on open GOPs, AVI, MPEG-TS, edit lists); fetch "auto" reads remote
    # objects of at least range_min_bytes by byte ranges, smaller ones whole; timeout_s
    # bounds one video's decode; a video over max_bytes gets a final `too_large` row
    decode: DecodeOptions = field(
        default_factory=lambda: DecodeOptions(timeout_s=60.0, max_bytes=8 * 1024**3)
    )
    # where manifest rows may point: URI prefixes (s3://bucket/videos/, /data/videos/).
    # Empty: the manifest's own bucket (remote manifests) or its directory tree (local
    # ones), plus the synthetic default's corpus. A row outside is a `bad_manifest_row`.
    allowed_prefixes: list[str] = setting(default_factory=list, resumable=True)
    # plain http(s) video URIs are refused unless allowed; link-local and cloud metadata
    # addresses are refused always
    allow_http: bool = setting(False, resumable=True)

    def validate(self, prefix: str = "data") -> None:
        # `decode` checked itself when it was made (DecodeOptions is frozen)
        if self.decode.timeout_s is None:
            raise ConfigError(f"{prefix}.decode.timeout_s", "a run needs a time bound per video")
        positive(prefix, "batch_size", self.batch_size)
        positive(prefix, "decode_concurrency", self.decode_concurrency)
        for i, allowed in enumerate(self.allowed_prefixes):
            if not isinstance(allowed, str) or not allowed:
                raise ConfigError(
                    f"{prefix}.allowed_prefixes[{i}]", f"must be a URI prefix, got {allowed!r}"
                )
        if not isinstance(self.allow_http, bool):
            raise ConfigError(
                f"{prefix}.allow_http", f"must be true or false, got {self.allow_http!r}"
            )


@dataclass
class StageConfig:
    """Optimiser schedule of one training stage (Adam, step decay at milestones)."""

    epochs: int = setting(35, resumable=True)  # more epochs: extend a run
    lr: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [16, 30])
    gamma: float = 0.1
    weight_decay: float = 0.0

    def validate(self, prefix: str) -> None:
        positive(prefix, "epochs", self.epochs)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{prefix}.lr", f"must be a positive number, got {self.lr}")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ConfigError(
                f"{prefix}.milestones", f"must be increasing epochs >= 1, got {self.milestones}"
            )
        number(prefix, "gamma", self.gamma, minimum=0, maximum=1, open_low=True)
        number(prefix, "weight_decay", self.weight_decay, minimum=0)


@dataclass
class TrainConfig:
    """Both training stages on Ray Train, and where the run's outputs go."""

    storage: str = "runs"  # URI: local directory or s3://bucket/prefix
    name: str = "frameexit"
    num_workers: int = setting(2, resumable=True)
    cpus_per_worker: float = setting(0.5, resumable=True)
    use_gpu: bool = setting(False, resumable=True)
    mixed_precision: bool = True  # bf16 autocast, GPU only
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(epochs=10, lr=1e-4, milestones=[5, 8])
    )
    beta: float = 1e-3
    max_failures: int = setting(1, resumable=True)
    seed: int = 0
    # validate on data.val_split every N epochs (and after the last)
    val_every: int = setting(1, resumable=True)
    # experiment tracking: "tensorboard" (event files in {run}/tensorboard), "mlflow"
    tracking: list[str] = setting(default_factory=lambda: ["tensorboard"], resumable=True)
    # MLflow tracking URI; empty: a local file store {run}/mlruns
    mlflow_uri: str = setting("", resumable=True)
    # the run's writer lease ({run}/_lease.json): a second job with the same name waits
    # for nothing and refuses; a crashed job's lease expires after this long
    lease_seconds: float = setting(120.0, resumable=True)

    def validate(self, prefix: str = "train") -> None:
        if not self.storage:
            raise ConfigError(f"{prefix}.storage", "must be a local path or URI")
        if not self.name or "/" in self.name:
            raise ConfigError(
                f"{prefix}.name", f"must be a non-empty name without '/', got {self.name!r}"
            )
        positive(prefix, "num_workers", self.num_workers)
        number(prefix, "cpus_per_worker", self.cpus_per_worker, minimum=0, open_low=True)
        number(prefix, "beta", self.beta, minimum=0, open_low=True)
        integer(prefix, "max_failures", self.max_failures, minimum=0)
        integer(prefix, "seed", self.seed, minimum=0)
        positive(prefix, "val_every", self.val_every)
        number(prefix, "lease_seconds", self.lease_seconds, minimum=5)
        for i, kind in enumerate(self.tracking):
            choice(prefix, f"tracking[{i}]", kind, ("tensorboard", "mlflow"))
        self.stage1.validate(f"{prefix}.stage1")
        self.stage2.validate(f"{prefix}.stage2")


@dataclass
class ExitConfig:
    """The operating point: exit score, risk bound and confidence (frameexit.operating_point).

    Training chooses it on the validation split and stores it in the stage-2 checkpoint;
    labeling with ``--calibrate N`` chooses it again on a random sample of the corpus.
    """

    # gate | confidence | gate+confidence (frameexit.exits); None: the checkpoint's
    # operating point's score when labeling with one, else confidence
    score: str | None = None
    # the risk bounded with probability >= 1 - delta (at most one of the two; neither:
    # max_disagreement = 0.05): the share of videos whose label differs from the all-T
    # label, or the top-1 accuracy lost against all T
    max_disagreement: float | None = None
    max_accuracy_drop: float | None = None
    delta: float = 0.1
    # the ordered threshold vectors Learn-then-Test walks: "constant" (one λ for every
    # step, shape-free) or "fitted" (per-step, fitted on the training split's outputs)
    family: str = "constant"
    family_size: int = 200

    def validate(self, prefix: str = "exit") -> None:
        from frameexit.exits import list_exit_scores
        from frameexit.operating_point import FAMILIES

        if self.score is not None:
            choice(prefix, "score", self.score, list_exit_scores())
        for name in ("max_disagreement", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None:
                number(prefix, name, value, minimum=0, maximum=1, open_low=True)
                if value >= 1:
                    raise ConfigError(f"{prefix}.{name}", f"must be below 1, got {value!r}")
        if self.max_disagreement is not None and self.max_accuracy_drop is not None:
            raise ConfigError(
                f"{prefix}.max_accuracy_drop",
                "set either exit.max_disagreement or exit.max_accuracy_drop, not both",
            )
        number(prefix, "delta", self.delta, minimum=0, maximum=1, open_low=True)
        if self.delta >= 1:
            raise ConfigError(f"{prefix}.delta", f"must be below 1, got {self.delta!r}")
        choice(prefix, "family", self.family, FAMILIES)
        positive(prefix, "family_size", self.family_size)

    def score_or(self, default: str | None = None) -> str:
        """``score``, else ``default``, else ``confidence``."""
        return self.score or default or DEFAULT_EXIT_SCORE

    @property
    def risk(self) -> tuple[str, float]:
        """``(risk name, bound)`` this config asks for."""
        if self.max_accuracy_drop is not None:
            return "accuracy_drop", float(self.max_accuracy_drop)
        if self.max_disagreement is not None:
            return "disagreement", float(self.max_disagreement)
        return "disagreement", DEFAULT_MAX_DISAGREEMENT


DEFAULT_MAX_DISAGREEMENT = 0.05
DEFAULT_EXIT_SCORE = "confidence"


@dataclass
class LabelConfig:
    """Corpus labeling with early exit (Ray Data batch inference)."""

    batch_size: int = 8
    concurrency: int = 2
    # None: 1 CPU per CPU actor; a GPU actor gets its node's CPUs per GPU share (decoding
    # feeds the GPU), resolved from the cluster when the job starts
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    # None: estimated from the model and the batch (weights, frames, decode buffers)
    memory_per_actor_mb: int | None = None
    max_actor_restarts: int = 16  # per actor; a video that kills its actor twice: `crashed`
    max_pipeline_restarts: int = 3  # a failed Ray Data run (lost node/objects) restarts
    early_exit: bool = setting(True, fingerprint="early_exit")
    # label a uniform random sample of this many inputs with all T first, calibrate the
    # operating point (exit.*) on it, then label the rest with it; 0: the checkpoint's
    calibration_videos: int = 0
    calibration_seed: int = 0
    top_k: int = setting(5, fingerprint="top_k")
    multi_label_threshold: float = setting(0.5, fingerprint="multi_label_threshold")
    part_size: int = setting(256, commands=("label", "check"))
    # a rerun labels again the rows of retryable errors (timeout, ...)
    retry: bool = setting(True, commands=("label", "check"))
    # an output's writer lease; a crashed run's expires
    lease_seconds: float = setting(120.0, commands=("label", "check"))
    # a retryable row (timeout, storage error, crash) is labeled again by at most this
    # many runs in all; then its row is final
    max_attempts: int = setting(3, commands=("label", "check"))
    # `frameexit check`: videos per task at most (what one crash or retry costs)
    check_task_videos: int = setting(1000, commands=("check",))
    # the model's device path (frameexit.inference.device_plan); None / "auto": what suits
    # the device — on a GPU bf16 autocast, channels_last, pinned non-blocking copies and
    # step t+1 decoded and copied while step t computes; on CPU none of them
    precision: str = "auto"  # auto | bf16 | fp32
    channels_last: bool | None = None
    prefetch_next_step: bool | None = None

    def validate(self, prefix: str = "label") -> None:
        positive(prefix, "batch_size", self.batch_size)
        positive(prefix, "concurrency", self.concurrency)
        positive(prefix, "top_k", self.top_k)
        positive(prefix, "part_size", self.part_size)
        if self.cpus_per_actor is not None:
            number(prefix, "cpus_per_actor", self.cpus_per_actor, minimum=0, open_low=True)
        number(prefix, "gpus_per_actor", self.gpus_per_actor, minimum=0)
        if self.memory_per_actor_mb is not None:
            positive(prefix, "memory_per_actor_mb", self.memory_per_actor_mb)
        integer(prefix, "max_actor_restarts", self.max_actor_restarts, minimum=0)
        integer(prefix, "max_pipeline_restarts", self.max_pipeline_restarts, minimum=0)
        integer(prefix, "calibration_videos", self.calibration_videos, minimum=0)
        integer(prefix, "calibration_seed", self.calibration_seed, minimum=0)
        unit_interval(prefix, "multi_label_threshold", self.multi_label_threshold)
        number(prefix, "lease_seconds", self.lease_seconds, minimum=5)
        positive(prefix, "max_attempts", self.max_attempts)
        positive(prefix, "check_task_videos", self.check_task_videos)
        choice(prefix, "precision", self.precision, ("auto", "bf16", "fp32"))
        for name in ("channels_last", "prefetch_next_step"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{prefix}.{name}", f"must be true, false or null, got {value!r}")


@dataclass
class Config:
    """Everything one run needs; written next to every run's outputs."""

    model: ModelConfig = setting(
        default_factory=ModelConfig, fingerprint="model", commands=("train",)
    )
    data: DataConfig = setting(
        default_factory=DataConfig, commands=("train", "label", "check", "evaluate")
    )
    train: TrainConfig = setting(default_factory=TrainConfig, commands=("train",))
    label: LabelConfig = setting(default_factory=LabelConfig, resumable=True, commands=("label",))
    exit: ExitConfig = setting(
        default_factory=ExitConfig, resumable=True, commands=("train", "label")
    )
    sweep: dict[str, Any] = setting(default_factory=dict, resumable=True)

    def validate(self) -> Config:
        from frameexit.exits import get_exit_score

        self.exit.validate("exit")
        # the exit score's registry entry says what the gates must see
        needed = get_exit_score(self.exit.score).gate_inputs if self.exit.score else None
        if self.model.gate_inputs is None:
            self.model.gate_inputs = needed or "features"
        elif needed is not None and self.model.gate_inputs != needed:
            raise ConfigError(
                "exit.score",
                f"{self.exit.score} needs gates trained with model.gate_inputs={needed}; "
                f"this model's see {self.model.gate_inputs}",
            )
        self.model.validate("model")
        self.data.validate("data")
        self.train.validate("train")
        self.label.validate("label")
        return self


def check_beta(beta: float, num_steps: int, *, multi_label: bool, name: str = "train.beta") -> None:
    """Before training gates: single-label pseudo-labels need ε_t = β·e^{t/2} < ln 2 at
    every step that can exit (t < T); from ln 2 on, a wrong prediction (p_true < 0.5) is
    labeled "exit". (Not part of ``validate``: a checkpoint trained so still loads.)"""
    if multi_label:
        return
    for t in range(1, num_steps):
        eps = beta * math.exp(t / 2)
        if eps >= LN2:
            raise ConfigError(
                name,
                f"β = {beta:g} gives ε_{t} = β·e^{{t/2}} = {eps:.3g} >= ln 2 at step {t}: wrong "
                f"predictions would be labeled 'exit'. Single-label data with T = {num_steps} "
                f"needs β < {LN2 / math.exp((num_steps - 1) / 2):.3g} (the paper uses 1e-6..1e-2)",
            )


#: Fields earlier versions wrote that no longer exist (dropped when a recorded config is
#: read back: old checkpoints and runs still load).
RETIRED_FIELDS = (("train", "operating_point_tolerance"),)
#: Fields earlier versions wrote under another name: (section, old name) -> path now.
#: Old configs, checkpoints, runs and ``a.b=value`` overrides keep working.
RENAMED_FIELDS = {
    ("data", "decode_backend"): ("data", "decode", "backend"),
    ("data", "decode_fetch"): ("data", "decode", "fetch"),
    ("data", "decode_timeout_s"): ("data", "decode", "timeout_s"),
    ("data", "decode_range_min_bytes"): ("data", "decode", "range_min_bytes"),
    ("data", "max_video_bytes"): ("data", "decode", "max_bytes"),
}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Nested config data in today's field names (retired fields dropped, renamed ones
    moved; a new name given too wins), in place."""
    for section, name in RETIRED_FIELDS:
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    for (section, old), path in RENAMED_FIELDS.items():
        part = data.get(section)
        if not isinstance(part, dict) or old not in part:
            continue
        value = part.pop(old)
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(path[:-1]), "must be a mapping")
        node.setdefault(path[-1], value)
    return data


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Build and validate a Config from nested plain data plus overrides."""
    merged = upgrade(apply_overrides(upgrade(deep_copy(dict(data))), overrides))
    return build(Config, merged, "").validate()


def load_config(
    path: str | None = None,
    overrides: Sequence[str] = (),
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the YAML at ``path`` (any fsspec URI), then ``a.b=value`` overrides."""
    data = read_yaml(path, storage_options) if path else {}
    return config_from_dict(data, overrides)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-safe) of a config."""
    return dataclasses.asdict(cfg)


def redacted(cfg: Config) -> Config:
    """A copy of ``cfg`` without credentials (``data.storage_options`` secrets masked):
    what is written to config.yaml, checkpoints and labeling outputs."""
    from frameexit.storage import redact

    return config_from_dict(redact(config_to_dict(cfg)))


def config_yaml(cfg: Config) -> str:
    """The config as YAML, credentials masked."""
    return yaml.safe_dump(config_to_dict(redacted(cfg)), sort_keys=False)


def save_config(cfg: Config, uri: str, *, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write the config (credentials masked) as YAML to ``uri`` (any URI, atomically);
    return ``uri``. :func:`load_config` reads it back."""
    from frameexit.storage import write_text

    write_text(uri, config_yaml(cfg), storage_options=storage_options)
    return uri
