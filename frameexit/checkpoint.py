"""Model checkpoints: a state_dict plus the resolved config, at any fsspec URI.

The file is a plain ``torch.save`` of ``{"format", "config", "model", "extra"}`` where
every value is a tensor or a primitive, so it loads with ``weights_only=True``: nothing
a user did not write is ever unpickled. A ``.safetensors`` URI stores the same content
(config and extra as JSON metadata).

``extra["operating_point"]`` (stage-2 checkpoints of a training run) is the operating
point chosen on held-out data (``frameexit.operating_point``); a loaded model carries it
as ``model.operating_point`` and uses it unless a caller names another rule.
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from frameexit.config import Config, ModelConfig, config_from_dict, config_to_dict
from frameexit.errors import CheckpointError
from frameexit.storage import read_bytes, write_bytes

if TYPE_CHECKING:
    from frameexit.model import FrameExit

FORMAT = "frameexit-checkpoint-v1"


def save_model_checkpoint(
    model: torch.nn.Module,
    cfg: Config,
    uri: str,
    *,
    extra: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights and ``cfg`` to ``uri`` (write to a temp name, then move)."""
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
    carries the checkpoint's operating point (``model.operating_point``, or None)."""
    state, cfg, extra = read_model_checkpoint(uri, storage_options=storage_options)
    cfg.model.pretrained = None  # the checkpoint already holds the weights
    model = model_from_state(cfg.model, state, source=uri)
    model.operating_point = operating_point_of(extra, source=uri)
    return model.to(device).eval(), cfg


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
