"""Typed configuration: dataclasses, YAML files and ``a.b=value`` overrides.

Layering (lowest to highest): dataclass defaults → YAML file (any fsspec URI) →
command-line overrides. ``validate()`` runs last and raises
:class:`frameexit.errors.ConfigError` naming the dotted field, so a bad config fails
before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from frameexit.errors import ConfigError

VARIANTS = ("paper", "official")
GATE_INPUTS = ("features", "features+confidence")
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
    policy: str = "coarse_to_fine"
    # the paper's rule, gate probability >= τ at every step, when set; None: the
    # checkpoint's operating point (exit.*), or τ = 0.5 when it has none
    exit_threshold: float | None = None
    first_step_threshold: float = 0.99  # official variant: step-1 exit on top softmax score
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
        _positive(prefix, "feature_dim", self.feature_dim)
        _positive(prefix, "num_classes", self.num_classes)
        _positive(prefix, "num_steps", self.num_steps)
        _positive(prefix, "gate_hidden", self.gate_hidden)
        _positive(prefix, "image_size", self.image_size)
        _positive(prefix, "clip_length", self.clip_length)
        if not spec.is_3d and self.clip_length != 1:
            raise ConfigError(
                f"{prefix}.clip_length",
                f"backbone {self.backbone!r} is 2D (one frame per step): clip_length must be 1, "
                f"got {self.clip_length}; clips need a 3D backbone (x3d_s)",
            )
        _choice(prefix, "pooling", self.pooling, list_poolings())
        _choice(prefix, "variant", self.variant, VARIANTS)
        _choice(prefix, "policy", self.policy, list_policies())
        if self.exit_threshold is not None:
            _unit_interval(prefix, "exit_threshold", self.exit_threshold, allow_above=True)
        _unit_interval(prefix, "first_step_threshold", self.first_step_threshold)
        if self.gate_inputs is not None:
            _choice(prefix, "gate_inputs", self.gate_inputs, GATE_INPUTS)
            if self.variant == "official" and self.gate_inputs != "features":
                raise ConfigError(
                    f"{prefix}.gate_inputs",
                    "the official variant's gates see features only (the authors' design)",
                )


@dataclass
class DataConfig:
    """Where the videos are and how they are batched."""

    manifest: str = ""  # URI of a manifest; empty = the embedded synthetic default
    storage_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = 16
    decode_concurrency: int = 2
    augment: bool = True
    decode_timeout_s: float = 60.0
    # "auto" (= "pyav" today): for every index the frame a sequential decode outputs there,
    # by construction; "decord": decord's own random access, opt-in (wrong on open GOPs,
    # AVI, MPEG-TS, edit lists: frameexit/video/decord_backend.py)
    decode_backend: str = "auto"
    # remote videos: "auto" reads objects of at least decode_range_min_bytes by byte
    # ranges (header + the packets decoded), smaller ones whole; or always "whole"/"ranges"
    decode_fetch: str = "auto"
    decode_range_min_bytes: int = 256 * 1024
    # a video over this size gets a final `too_large` row instead of being read (an
    # out-of-memory worker); None: no limit
    max_video_bytes: int | None = 8 * 1024**3

    def validate(self, prefix: str = "data") -> None:
        if self.decode_backend not in ("auto", "pyav", "decord"):
            raise ConfigError(
                f"{prefix}.decode_backend",
                f"must be one of auto, pyav, decord; got {self.decode_backend!r}",
            )
        if self.decode_fetch not in ("auto", "whole", "ranges"):
            raise ConfigError(
                f"{prefix}.decode_fetch",
                f"must be one of auto, whole, ranges; got {self.decode_fetch!r}",
            )
        if self.decode_backend == "decord" and self.decode_fetch == "ranges":
            raise ConfigError(
                f"{prefix}.decode_fetch", "decode_backend=decord reads whole files, not ranges"
            )
        _positive(prefix, "decode_range_min_bytes", self.decode_range_min_bytes)
        if self.max_video_bytes is not None:
            _positive(prefix, "max_video_bytes", self.max_video_bytes)
        _positive(prefix, "batch_size", self.batch_size)
        _positive(prefix, "decode_concurrency", self.decode_concurrency)
        _number(prefix, "decode_timeout_s", self.decode_timeout_s, minimum=0, open_low=True)


@dataclass
class StageConfig:
    """Optimiser schedule of one training stage (Adam, step decay at milestones)."""

    epochs: int = 35
    lr: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [16, 30])
    gamma: float = 0.1
    weight_decay: float = 0.0

    def validate(self, prefix: str) -> None:
        _positive(prefix, "epochs", self.epochs)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{prefix}.lr", f"must be a positive number, got {self.lr}")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ConfigError(
                f"{prefix}.milestones", f"must be increasing epochs >= 1, got {self.milestones}"
            )
        _number(prefix, "gamma", self.gamma, minimum=0, maximum=1, open_low=True)
        _number(prefix, "weight_decay", self.weight_decay, minimum=0)


@dataclass
class TrainConfig:
    """Both training stages on Ray Train, and where the run's outputs go."""

    storage: str = "runs"  # URI: local directory or s3://bucket/prefix
    name: str = "frameexit"
    num_workers: int = 2
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    mixed_precision: bool = True  # bf16 autocast, GPU only
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(epochs=10, lr=1e-4, milestones=[5, 8])
    )
    beta: float = 1e-3
    max_failures: int = 1
    seed: int = 0
    val_every: int = 1  # validate on data.val_split every N epochs (and after the last)
    # experiment tracking: "tensorboard" (event files in {run}/tensorboard), "mlflow"
    tracking: list[str] = field(default_factory=lambda: ["tensorboard"])
    mlflow_uri: str = ""  # MLflow tracking URI; empty: a local file store {run}/mlruns

    def validate(self, prefix: str = "train") -> None:
        if not self.storage:
            raise ConfigError(f"{prefix}.storage", "must be a local path or URI")
        if not self.name or "/" in self.name:
            raise ConfigError(
                f"{prefix}.name", f"must be a non-empty name without '/', got {self.name!r}"
            )
        _positive(prefix, "num_workers", self.num_workers)
        _number(prefix, "cpus_per_worker", self.cpus_per_worker, minimum=0, open_low=True)
        _number(prefix, "beta", self.beta, minimum=0, open_low=True)
        _integer(prefix, "max_failures", self.max_failures, minimum=0)
        _integer(prefix, "seed", self.seed, minimum=0)
        _positive(prefix, "val_every", self.val_every)
        for i, kind in enumerate(self.tracking):
            _choice(prefix, f"tracking[{i}]", kind, ("tensorboard", "mlflow"))
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
            _choice(prefix, "score", self.score, list_exit_scores())
        for name in ("max_disagreement", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None:
                _number(prefix, name, value, minimum=0, maximum=1, open_low=True)
                if value >= 1:
                    raise ConfigError(f"{prefix}.{name}", f"must be below 1, got {value!r}")
        if self.max_disagreement is not None and self.max_accuracy_drop is not None:
            raise ConfigError(
                f"{prefix}.max_accuracy_drop",
                "set either exit.max_disagreement or exit.max_accuracy_drop, not both",
            )
        _number(prefix, "delta", self.delta, minimum=0, maximum=1, open_low=True)
        if self.delta >= 1:
            raise ConfigError(f"{prefix}.delta", f"must be below 1, got {self.delta!r}")
        _choice(prefix, "family", self.family, FAMILIES)
        _positive(prefix, "family_size", self.family_size)

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
    early_exit: bool = True
    # label a uniform random sample of this many inputs with all T first, calibrate the
    # operating point (exit.*) on it, then label the rest with it; 0: the checkpoint's
    calibration_videos: int = 0
    calibration_seed: int = 0
    top_k: int = 5
    multi_label_threshold: float = 0.5
    part_size: int = 256
    retry: bool = True  # a rerun labels again the rows of retryable errors (timeout, ...)
    lease_seconds: float = 120.0  # an output's writer lease; a crashed run's expires
    # the model's device path (frameexit.inference.device_plan); None / "auto": what suits
    # the device — on a GPU bf16 autocast, channels_last, pinned non-blocking copies and
    # step t+1 decoded and copied while step t computes; on CPU none of them
    precision: str = "auto"  # auto | bf16 | fp32
    channels_last: bool | None = None
    prefetch_next_step: bool | None = None

    def validate(self, prefix: str = "label") -> None:
        _positive(prefix, "batch_size", self.batch_size)
        _positive(prefix, "concurrency", self.concurrency)
        _positive(prefix, "top_k", self.top_k)
        _positive(prefix, "part_size", self.part_size)
        if self.cpus_per_actor is not None:
            _number(prefix, "cpus_per_actor", self.cpus_per_actor, minimum=0, open_low=True)
        _number(prefix, "gpus_per_actor", self.gpus_per_actor, minimum=0)
        if self.memory_per_actor_mb is not None:
            _positive(prefix, "memory_per_actor_mb", self.memory_per_actor_mb)
        _integer(prefix, "max_actor_restarts", self.max_actor_restarts, minimum=0)
        _integer(prefix, "max_pipeline_restarts", self.max_pipeline_restarts, minimum=0)
        _integer(prefix, "calibration_videos", self.calibration_videos, minimum=0)
        _integer(prefix, "calibration_seed", self.calibration_seed, minimum=0)
        _unit_interval(prefix, "multi_label_threshold", self.multi_label_threshold)
        _number(prefix, "lease_seconds", self.lease_seconds, minimum=5)
        _choice(prefix, "precision", self.precision, ("auto", "bf16", "fp32"))
        for name in ("channels_last", "prefetch_next_step"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{prefix}.{name}", f"must be true, false or null, got {value!r}")


@dataclass
class Config:
    """Everything one run needs; written next to every run's outputs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    exit: ExitConfig = field(default_factory=ExitConfig)
    sweep: dict[str, Any] = field(default_factory=dict)

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


def _positive(prefix: str, name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{prefix}.{name}", f"must be an integer >= 1, got {value!r}")


def _integer(prefix: str, name: str, value: int, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{prefix}.{name}", f"must be an integer >= {minimum}, got {value!r}")


def _number(
    prefix: str,
    name: str,
    value: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_low: bool = False,
) -> None:
    """A finite number within [minimum, maximum] (``open_low``: strictly above minimum)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_low else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        low = "" if minimum is None else (f"> {minimum:g}" if open_low else f">= {minimum:g}")
        high = "" if maximum is None else f"<= {maximum:g}"
        bound = " and ".join(b for b in (low, high) if b)
        raise ConfigError(
            f"{prefix}.{name}",
            f"must be a finite number{' ' + bound if bound else ''}, got {value!r}",
        )


def _choice(prefix: str, name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{prefix}.{name}", f"must be one of {', '.join(choices)}; got {value!r}")


def _unit_interval(prefix: str, name: str, value: float, allow_above: bool = False) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value >= 0 and (allow_above or value <= 1)):
        bound = "[0, inf)" if allow_above else "[0, 1]"
        raise ConfigError(f"{prefix}.{name}", f"must be in {bound}, got {value!r}")


# --- building dataclasses from plain data ---------------------------------------------


def _coerce(value: Any, annotation: Any, dotted: str) -> Any:
    """Convert YAML data to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(dotted, f"must be a mapping, got {type(value).__name__}")
        return _build(annotation, value, dotted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, dotted)
            except ConfigError as error:
                errors.append(error.reason)
        raise ConfigError(dotted, "; ".join(errors))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(dotted, f"must be a list, got {value!r}")
        (item_type,) = args or (Any,)
        return [_coerce(item, item_type, f"{dotted}[{i}]") for i, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(dotted, f"must be a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(dotted, f"must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(dotted, f"must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(dotted, f"must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(dotted, f"must be a string, got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str, base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(where, f"unknown key; known keys: {', '.join(sorted(known))}")
    obj = base if base is not None else cls()
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else name
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            _build(type(current), value, dotted, base=current)
        else:
            setattr(obj, name, _coerce(value, hints[name], dotted))
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value parsed as a YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(key, f"cannot parse value {raw!r}: {error}") from error
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Merge ``a.b=value`` overrides into a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(path), f"{part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _read_yaml(uri: str) -> dict[str, Any]:
    import fsspec

    try:
        with fsspec.open(uri, "r") as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError as error:
        raise ConfigError("config", f"file not found: {uri}") from error
    except yaml.YAMLError as error:
        raise ConfigError("config", f"{uri} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError("config", f"{uri} must hold a mapping at the top level")
    return data


#: Fields earlier versions wrote that no longer exist (dropped when a recorded config is
#: read back: old checkpoints and runs still load).
RETIRED_FIELDS = (("train", "operating_point_tolerance"),)


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Build and validate a Config from nested plain data plus overrides."""
    merged = apply_overrides(_deep_copy(dict(data)), overrides)
    for section, name in RETIRED_FIELDS:
        if isinstance(merged.get(section), dict):
            merged[section].pop(name, None)
    return _build(Config, merged, "").validate()


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML at ``path`` (any fsspec URI), then ``a.b=value`` overrides."""
    data = _read_yaml(path) if path else {}
    return config_from_dict(data, overrides)


def config_help(sections: Sequence[str], *, fields: Sequence[str] | None = None) -> str:
    """The config fields of ``sections`` (``model``, ``data``, ``train``, ``label``) with
    their types and defaults, for a command's ``--help`` (``fields``: only these names)."""
    lines = ["config fields (set with --config FILE.yaml or a.b=value):"]
    defaults = Config()
    for section in sections:
        value = getattr(defaults, section)
        for f in dataclasses.fields(value):
            name = f"{section}.{f.name}"
            if fields is not None and name not in fields:
                continue
            current = getattr(value, f.name)
            if dataclasses.is_dataclass(current):
                for sub in dataclasses.fields(current):
                    shown = getattr(current, sub.name)
                    lines.append(f"  {name}.{sub.name} = {shown!r}")
                continue
            kind = str(f.type).replace("typing.", "")
            lines.append(f"  {name} = {current!r}  ({kind})")
    return "\n".join(lines)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-safe) of a config."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, uri: str) -> None:
    """Write the resolved config as YAML to ``uri`` (any fsspec URI)."""
    import fsspec

    with fsspec.open(uri, "w") as handle:
        yaml.safe_dump(config_to_dict(cfg), handle, sort_keys=False)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data
