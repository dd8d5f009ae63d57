"""Model checkpoints: a state_dict plus the resolved config, at any fsspec URI.

The file is a plain ``torch.save`` of ``{"format", "config", "model", "extra"}`` where
every value is a tensor or a primitive, so it loads with ``weights_only=True``: nothing
a user did not write is ever unpickled. A ``.safetensors`` URI stores the same content
(config and extra as JSON metadata).

``extra["operating_point"]`` (stage-2 checkpoints of a training run) is the operating
point chosen on held-out data (``frameexit.operating_point``); a loaded model carries it
as ``model.operating_point`` and uses it unless a caller names another rule.

``extra["class_names"]`` names the model's K outputs (the training manifest's class map,
written by training and by the official converter when it knows them); a loaded model
carries it as ``model.class_names`` (None for a checkpoint without names). Whatever must
name outputs without them calls :func:`placeholder_class_names`, which warns.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from frameexit.config import Config, ModelConfig, config_from_dict, config_to_dict
from frameexit.errors import CheckpointError
from frameexit.storage import read_bytes, write_bytes

if TYPE_CHECKING:
    from frameexit.model import FrameExit

FORMAT = "frameexit-checkpoint-v1"
CLASS_NAMES_KEY = "class_names"

log = logging.getLogger("frameexit.checkpoint")


def save_model_checkpoint(
    model: torch.nn.Module,
    cfg: Config,
    uri: str,
    *,
    extra: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Write ``model``'s weights and ``cfg`` to ``uri`` (write to a temp name, then move).
    ``class_names`` (one per output, ``cfg.model.num_classes`` of them) go into
    ``extra["class_names"]``, where :func:`load_model_checkpoint` finds them."""
    if class_names is not None:
        names = checked_class_names(class_names, cfg.model.num_classes, source=uri)
        extra = {**(extra or {}), CLASS_NAMES_KEY: names}
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    if uri.endswith(".safetensors"):
        from safetensors.torch import save

        metadata = {
            "format": FORMAT,
            "config": json.dumps(config_to_dict(cfg)),
            "extra": json.dumps(extra or {}),
        }
        payload = save(state, metadata=metadata)
    else:
        buffer = io.BytesIO()
        torch.save(
            {"format": FORMAT, "config": config_to_dict(cfg), "model": state, "extra": extra or {}},
            buffer,
        )
        payload = buffer.getvalue()
    write_bytes(uri, payload, storage_options=storage_options)


def read_model_checkpoint(
    uri: str, *, storage_options: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    """Read ``(state_dict, config, extra)`` from a checkpoint written by this module."""
    try:
        payload = read_bytes(uri, storage_options=storage_options)
    except FileNotFoundError as error:
        raise CheckpointError(f"{uri}: checkpoint not found") from error
    if uri.endswith(".safetensors"):
        from safetensors.torch import load

        state = load(payload)
        metadata = _safetensors_metadata(payload)
        return (
            state,
            config_from_dict(json.loads(metadata["config"])),
            json.loads(metadata["extra"]),
        )
    try:
        blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{uri}: not a loadable checkpoint ({error})") from error
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{uri}: not a frameexit checkpoint (missing format {FORMAT!r})")
    return blob["model"], config_from_dict(blob["config"]), dict(blob.get("extra") or {})


def model_from_state(
    model_cfg: ModelConfig, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> FrameExit:
    """The network ``model_cfg`` describes with the weights ``state``, loaded strictly.

    The config is copied and its ``pretrained`` dropped (the state holds the weights, so
    nothing is downloaded or read twice). A state that does not fit raises
    :class:`CheckpointError` naming ``source`` and the first mismatching keys.
    """
    from frameexit.model import build_model

    check_declared_shapes(model_cfg, state, source=source)
    cfg = copy.deepcopy(model_cfg)
    cfg.pretrained = None
    model = build_model(cfg)
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{source}: does not fit the model of its config: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: does not match the model of its config; missing "
            f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )
    return model


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = state.get(key)
    shape = getattr(value, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else None


def check_declared_shapes(
    model_cfg: ModelConfig, state: Mapping[str, Any], *, source: str = "checkpoint"
) -> None:
    """Compare the fields that size the network (``num_steps``, ``num_classes``,
    ``feature_dim``, ``gate_hidden``) with the tensors of ``state`` before anything is
    allocated: a config declaring a huge ``num_classes`` next to small weights would
    otherwise build a model of that size first. Raises :class:`CheckpointError` naming
    the field."""

    def refuse(field: str, declared: int, found: int | str, where: str) -> None:
        raise CheckpointError(
            f"{source}: model.{field} is {declared} in its config, but its weights have "
            f"{found} ({where}); the checkpoint does not describe one model"
        )

    steps = {int(k.split(".")[1]) for k in state if re.fullmatch(r"classifiers\.\d+\.weight", k)}
    if not steps:
        raise CheckpointError(
            f"{source}: no classifiers.*.weight in its weights: model.num_classes and "
            "model.num_steps cannot be checked"
        )
    if len(steps) != model_cfg.num_steps or steps != set(range(len(steps))):
        refuse("num_steps", model_cfg.num_steps, len(steps), "classifiers.<t>.weight")
    weight = _shape(state, "classifiers.0.weight")
    if weight is None or len(weight) != 2:
        raise CheckpointError(f"{source}: classifiers.0.weight is not a matrix ({weight})")
    if weight[0] != model_cfg.num_classes:
        refuse("num_classes", model_cfg.num_classes, weight[0], "classifiers.0.weight rows")
    if weight[1] != model_cfg.feature_dim:
        refuse("feature_dim", model_cfg.feature_dim, weight[1], "classifiers.0.weight columns")
    # the gates' MLP ends in a Linear(…, gate_hidden): g_1's for the paper's gates, g_2's
    # for the official ones (their g_1 is a confidence rule without weights)
    key = "gates.1.mlp.3.weight" if model_cfg.variant == "official" else "gates.0.mlp.2.weight"
    hidden = _shape(state, key)
    if hidden is not None and hidden[0] != model_cfg.gate_hidden:
        refuse("gate_hidden", model_cfg.gate_hidden, hidden[0], f"{key} rows")


def load_model_checkpoint(
    uri: str, *, storage_options: dict[str, Any] | None = None, device: str = "cpu"
) -> tuple[torch.nn.Module, Config]:
    """Build the model its config describes and load its weights strictly; the model
    carries the checkpoint's operating point (``model.operating_point``, or None) and its
    class names (``model.class_names``, or None when the checkpoint has none)."""
    state, cfg, extra = read_model_checkpoint(uri, storage_options=storage_options)
    cfg.model.pretrained = None  # the checkpoint already holds the weights
    model = model_from_state(cfg.model, state, source=uri)
    model.operating_point = operating_point_of(extra, source=uri)
    model.class_names = class_names_of(extra, cfg.model.num_classes, source=uri)
    return model.to(device).eval(), cfg


def checkpoint_config(
    checkpoint: str, config_file: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Config, dict[str, torch.Tensor], dict[str, Any]]:
    """The config an inference run uses with ``checkpoint``: ``(config, state, extra)``.

    The model section is the checkpoint's (``pretrained`` dropped: the state holds the
    weights); overrides may change only the model fields declared ``checkpoint_override``
    (``model.exit_threshold``, ``model.first_step_threshold``, ``model.policy``), anything
    else of ``model.*`` is a :class:`ConfigError`; every other section (label, data) comes
    from the defaults, ``config_file`` and the overrides. ``data.manifest`` defaults to
    the training manifest (whose ``classes.json`` may name the outputs)."""
    from frameexit.config import fields_with, load_config
    from frameexit.errors import ConfigError
    from frameexit.storage import options_for

    allowed = tuple(f.split(".", 1)[1] for f in fields_with("checkpoint_override"))
    model_overrides = [o for o in overrides if o.lstrip("-").startswith("model.")]
    for text in model_overrides:
        key = text.lstrip("-").split("=", 1)[0]
        if key.split(".", 1)[1] not in allowed:
            raise ConfigError(
                key,
                "fixed by the checkpoint; only "
                + ", ".join(f"model.{f}" for f in allowed)
                + " may be overridden with --checkpoint",
            )
    cfg = load_config(config_file, [o for o in overrides if o not in model_overrides])
    options = options_for(checkpoint, cfg.data.storage_options)
    state, ckpt_cfg, extra = read_model_checkpoint(checkpoint, storage_options=options or None)
    merged = config_to_dict(cfg)
    merged["model"] = config_to_dict(ckpt_cfg)["model"]
    merged["model"]["pretrained"] = None
    merged["data"]["manifest"] = cfg.data.manifest or ckpt_cfg.data.manifest
    return config_from_dict(merged, model_overrides), state, extra


def checked_class_names(names: Sequence[str], num_classes: int, *, source: str) -> list[str]:
    """``names`` as a list of K distinct non-empty strings, else :class:`CheckpointError`."""
    names = list(names)
    if not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"{source}: class names must be non-empty strings")
    if len(names) != num_classes:
        raise CheckpointError(
            f"{source}: {len(names)} class names for a model of {num_classes} outputs"
        )
    if len(set(names)) != len(names):
        raise CheckpointError(f"{source}: duplicate class names")
    return names


def class_names_of(
    extra: Mapping[str, Any], num_classes: int, *, source: str = "checkpoint"
) -> list[str] | None:
    """The class names stored in a checkpoint's ``extra`` (None when it has none)."""
    names = extra.get(CLASS_NAMES_KEY)
    if names is None:
        return None
    return checked_class_names(names, num_classes, source=source)


def read_checkpoint_class_names(
    uri: str, *, storage_options: dict[str, Any] | None = None
) -> list[str] | None:
    """The class names stored in the checkpoint at ``uri`` (None when it has none), read
    cheaply: a safetensors header, or a local ``.pt`` memory-mapped (its tensors are not
    read); a remote ``.pt`` is read whole."""
    from frameexit.storage import is_local, local_path, open_uri

    if uri.endswith(".safetensors"):
        try:
            with open_uri(uri, "rb", storage_options=storage_options) as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
        except FileNotFoundError as error:
            raise CheckpointError(f"{uri}: checkpoint not found") from error
        metadata = header.get("__metadata__", {})
        config = json.loads(metadata.get("config", "{}"))
        extra = json.loads(metadata.get("extra", "{}"))
    elif is_local(uri):
        try:
            blob = torch.load(local_path(uri), map_location="cpu", weights_only=True, mmap=True)
        except FileNotFoundError as error:
            raise CheckpointError(f"{uri}: checkpoint not found") from error
        except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
            raise CheckpointError(f"{uri}: not a loadable checkpoint ({error})") from error
        config, extra = blob.get("config") or {}, dict(blob.get("extra") or {})
    else:
        _, cfg, extra = read_model_checkpoint(uri, storage_options=storage_options)
        config = config_to_dict(cfg)
    classes = int((config.get("model") or {}).get("num_classes", 0))
    return class_names_of(extra, classes, source=uri)


def padded_class_names(names: Sequence[str], num_classes: int, *, source: str) -> list[str]:
    """A class map for a model of ``num_classes`` outputs: a shorter map (a manifest
    whose classes do not use every output) gets ``class_<i>`` for the outputs without a
    class, with a warning; a longer one is an error."""
    names = list(names)
    if len(names) > num_classes:
        raise CheckpointError(
            f"{source}: {len(names)} classes for a model of {num_classes} outputs"
        )
    if len(names) < num_classes:
        log.warning(
            "%s names %d classes, the model has %d outputs: outputs %d..%d are named "
            "class_<i> (no class of the data set is theirs)",
            source, len(names), num_classes, len(names), num_classes - 1,
        )  # fmt: skip
        names += [f"class_{i}" for i in range(len(names), num_classes)]
    return checked_class_names(names, num_classes, source=source)


def placeholder_class_names(
    num_classes: int, why: str, *, logger: logging.Logger = log
) -> list[str]:
    """``class_0 .. class_<K-1>``, with a warning that the outputs have no names and how
    to give them: the one place a name is guessed."""
    logger.warning(
        "NO CLASS NAMES: %s. Labels will read class_0..class_%d instead of the names of "
        "the classes. Pass --classes classes.json (a JSON list, one name per output), or "
        "use a checkpoint written by training, which stores its class names",
        why,
        num_classes - 1,
    )
    return [f"class_{i}" for i in range(num_classes)]


def operating_point_of(extra: Mapping[str, Any], *, source: str = "checkpoint"):
    """The operating point stored in a checkpoint's ``extra`` (None when it has none)."""
    from frameexit.operating_point import OperatingPoint

    data = extra.get("operating_point")
    if not data:
        return None
    try:
        return OperatingPoint.from_dict(dict(data))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: unreadable operating point ({error})") from error


def _safetensors_metadata(payload: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header size, JSON)."""
    size = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + size])
    return header.get("__metadata__", {})


def store_operating_point(
    uri: str, point: Any, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Rewrite the checkpoint at ``uri`` with ``point`` (an ``OperatingPoint``) in its
    extra, so every consumer of the checkpoint uses it by default."""
    state, cfg, extra = read_model_checkpoint(uri, storage_options=storage_options)
    model = model_from_state(cfg.model, state, source=uri)
    extra = {**extra, "operating_point": point.to_dict()}
    save_model_checkpoint(model, cfg, uri, extra=extra, storage_options=storage_options)
