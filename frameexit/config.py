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
    exit_threshold: float = 0.5
    first_step_threshold: float = 0.99  # official variant: step-1 exit on top softmax score

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
        _unit_interval(prefix, "exit_threshold", self.exit_threshold, allow_above=True)
        _unit_interval(prefix, "first_step_threshold", self.first_step_threshold)


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
    # "auto": decord where its random access is exact for the file, PyAV's exact seek
    # otherwise; "pyav": the exact PyAV path for every file; "decord": trust decord blindly
    decode_backend: str = "auto"

    def validate(self, prefix: str = "data") -> None:
        if self.decode_backend not in ("auto", "pyav", "decord"):
            raise ConfigError(
                f"{prefix}.decode_backend",
                f"must be one of auto, pyav, decord; got {self.decode_backend!r}",
            )
        _positive(prefix, "batch_size", self.batch_size)
        _positive(prefix, "decode_concurrency", self.decode_concurrency)
        if not self.decode_timeout_s > 0:
            raise ConfigError(
                f"{prefix}.decode_timeout_s", f"must be > 0, got {self.decode_timeout_s}"
            )


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
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"{prefix}.gamma", f"must be in (0, 1], got {self.gamma}")
        if self.weight_decay < 0:
            raise ConfigError(f"{prefix}.weight_decay", f"must be >= 0, got {self.weight_decay}")


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

    def validate(self, prefix: str = "train") -> None:
        if not self.storage:
            raise ConfigError(f"{prefix}.storage", "must be a local path or URI")
        if not self.name or "/" in self.name:
            raise ConfigError(
                f"{prefix}.name", f"must be a non-empty name without '/', got {self.name!r}"
            )
        _positive(prefix, "num_workers", self.num_workers)
        if not self.cpus_per_worker > 0:
            raise ConfigError(
                f"{prefix}.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}"
            )
        if not self.beta > 0:
            raise ConfigError(f"{prefix}.beta", f"must be > 0, got {self.beta}")
        if self.max_failures < 0:
            raise ConfigError(f"{prefix}.max_failures", f"must be >= 0, got {self.max_failures}")
        self.stage1.validate(f"{prefix}.stage1")
        self.stage2.validate(f"{prefix}.stage2")


@dataclass
class LabelConfig:
    """Corpus labeling with early exit (Ray Data batch inference)."""

    batch_size: int = 8
    concurrency: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    early_exit: bool = True
    top_k: int = 5
    multi_label_threshold: float = 0.5
    part_size: int = 256

    def validate(self, prefix: str = "label") -> None:
        _positive(prefix, "batch_size", self.batch_size)
        _positive(prefix, "concurrency", self.concurrency)
        _positive(prefix, "top_k", self.top_k)
        _positive(prefix, "part_size", self.part_size)
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ConfigError(f"{prefix}.cpus_per_actor", "resources must be >= 0")
        _unit_interval(prefix, "multi_label_threshold", self.multi_label_threshold)


@dataclass
class Config:
    """Everything one run needs; written next to every run's outputs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    sweep: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> Config:
        self.model.validate("model")
        self.data.validate("data")
        self.train.validate("train")
        self.label.validate("label")
        return self


def _positive(prefix: str, name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{prefix}.{name}", f"must be an integer >= 1, got {value!r}")


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


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Build and validate a Config from nested plain data plus overrides."""
    merged = apply_overrides(_deep_copy(dict(data)), overrides)
    return _build(Config, merged, "").validate()


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML at ``path`` (any fsspec URI), then ``a.b=value`` overrides."""
    data = _read_yaml(path) if path else {}
    return config_from_dict(data, overrides)


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
