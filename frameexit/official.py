"""Load the authors' released checkpoints (Qualcomm-AI-research/FrameExit) into FrameExit.

Their released model differs from the paper; ``ModelConfig(variant="official")`` builds
ours the same way (see :mod:`frameexit.model`):

* Φ: torchvision ResNet-50 without ``fc`` (their ``backbone`` = ``Sequential`` of its
  children), then per frame ``mlp.layers`` = Linear(2048→4096), BatchNorm1d, ReLU;
* Ψ: max pooling; ``classifiers.{0..T-1}`` = Linear(4096→K);
* gates ``exit_selector.{0..T-2}`` for steps 2..T: 1×1 conv 4096→128, BN, ReLU, 1×1 conv
  128→64, BN, ReLU (shared by both streams), ``linear`` 128→1 on [h(z_t), h(z_{t-1})];
  the sigmoid is a *continue* probability (exit when < 0.5). The gate of step T is
  never used at inference (f_T answers anyway) but is loaded;
* step 1 exits when max softmax(f_1(z_1)) > first threshold (0.99 ActivityNet,
  0.95 Mini-Kinetics);
* frames: T = 10 uniformly pre-sampled, visited in the order [5, 0, 9, 2, 7, 4, 6, 3, 8, 1]
  (``policy="official"``); 224×224, ImageNet mean/std.

Key mapping (theirs → ours), after removing ``module.`` prefixes (DataParallel)::

    backbone.{i}.*            → backbone.trunk.{conv1,bn1,relu,maxpool,layer1..4,avgpool}[i].*
    mlp.layers.{0,1}.*        → backbone.projection.{0,1}.*
    classifiers.{t}.*         → classifiers.{t}.*
    exit_selector.{i}.conv1.* → gates.{i+1}.mlp.0.*   (weight [128,4096,1,1] → [128,4096])
    exit_selector.{i}.bn1.*   → gates.{i+1}.mlp.1.*
    exit_selector.{i}.conv2.* → gates.{i+1}.mlp.3.*
    exit_selector.{i}.bn2.*   → gates.{i+1}.mlp.4.*
    exit_selector.{i}.linear.*→ gates.{i+1}.linear.*  (verbatim; the model negates it)
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from frameexit.config import ModelConfig
from frameexit.errors import CheckpointError

log = logging.getLogger("frameexit.official")

# Children of torchvision's ResNet in order; their ``backbone`` is Sequential(children[:-1]).
RESNET_CHILDREN: tuple[str, ...] = (
    "conv1",
    "bn1",
    "relu",
    "maxpool",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "avgpool",
)

# Released checkpoints: file name and the step-1 softmax threshold of their configs.
OFFICIAL_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "activitynet": {
        "file": "activitynet_checkpoint_25gmac.pth",
        "first_step_threshold": 0.99,
        "num_classes": 200,
    },
    "minikinetics": {
        "file": "minikinetics_checkpoint_19.7gmac.pth",
        "first_step_threshold": 0.95,
        "num_classes": 200,
    },
}

_GATE_PARTS = {
    "conv1": "mlp.0",
    "bn1": "mlp.1",
    "conv2": "mlp.3",
    "bn2": "mlp.4",
    "linear": "linear",
}


def official_config(dataset: str) -> ModelConfig:
    """The ModelConfig matching a released checkpoint (``activitynet`` or ``minikinetics``)."""
    try:
        info = OFFICIAL_CHECKPOINTS[dataset]
    except KeyError:
        known = ", ".join(OFFICIAL_CHECKPOINTS)
        raise ValueError(f"unknown official checkpoint {dataset!r}; known: {known}") from None
    return ModelConfig(
        backbone="resnet50",
        feature_dim=4096,
        num_classes=info["num_classes"],
        num_steps=10,
        pooling="max",
        gate_hidden=64,
        variant="official",
        multi_label=False,
        image_size=224,
        policy="official",
        first_step_threshold=info["first_step_threshold"],
    )


def map_official_key(key: str) -> str | None:
    """Our parameter name for one of theirs (``module.`` already removed); None if unknown."""
    if match := re.fullmatch(r"backbone\.(\d+)\.(.+)", key):
        index = int(match.group(1))
        if index < len(RESNET_CHILDREN):
            return f"backbone.trunk.{RESNET_CHILDREN[index]}.{match.group(2)}"
        return None
    if match := re.fullmatch(r"mlp\.layers\.([01])\.(.+)", key):
        return f"backbone.projection.{match.group(1)}.{match.group(2)}"
    if re.fullmatch(r"classifiers\.(\d+)\.(weight|bias)", key):
        return key
    if match := re.fullmatch(r"exit_selector\.(\d+)\.(conv1|bn1|conv2|bn2|linear)\.(.+)", key):
        index, part, rest = int(match.group(1)), match.group(2), match.group(3)
        return f"gates.{index + 1}.{_GATE_PARTS[part]}.{rest}"
    return None


def _read_state_dict(source: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    import fsspec

    uri = os.fspath(source)
    try:
        with fsspec.open(uri, "rb") as handle:
            payload = handle.read()
    except FileNotFoundError as error:
        raise CheckpointError(f"{uri}: checkpoint not found") from error
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{uri}: not a loadable state_dict ({error})") from error


def unwrap_state_dict(blob: Mapping[str, Any]) -> dict[str, Tensor]:
    """The bare state_dict: unwrap ``{"state_dict": …}`` / ``{"model": …}``, strip ``module.``."""
    for wrapper in ("state_dict", "model"):
        inner = blob.get(wrapper)
        if isinstance(inner, Mapping):
            blob = inner
            break
    state: dict[str, Tensor] = {}
    for key, value in blob.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"entry {key!r} is not a tensor ({type(value).__name__})")
        while key.startswith("module."):
            key = key[len("module.") :]
        state[key] = value
    return state


def convert_official_state_dict(
    blob: Mapping[str, Any], target: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Map the authors' state_dict onto our names and shapes (``target`` = our state_dict).

    Raises CheckpointError listing unexpected keys (theirs with no place in our model),
    missing keys (ours they do not provide; only BatchNorm ``num_batches_tracked`` may
    be missing, from old checkpoints) and shape mismatches.
    """
    state = unwrap_state_dict(blob)
    converted: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        ours = map_official_key(key)
        if ours is None or ours not in target:
            unexpected.append(key if ours is None else f"{key} (→ {ours})")
            continue
        expected = target[ours].shape
        if ours.startswith("gates.") and value.dim() == 4 and value.shape[2:] == (1, 1):
            value = value.reshape(value.shape[:2])  # 1×1 conv → linear
        if value.shape != expected:
            mismatched.append(f"{key}: {list(value.shape)} vs ours {ours} {list(expected)}")
            continue
        converted[ours] = value
    missing = [
        key for key in target if key not in converted and not key.endswith("num_batches_tracked")
    ]
    error = CheckpointError.mismatch(
        "official checkpoint does not fit the model",
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )
    if error is not None:
        raise error
    return converted


def load_official_checkpoint(
    model: nn.Module, state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str]
) -> nn.Module:
    """Load one of the authors' checkpoints (a state_dict or a path/URI) into ``model``.

    ``model`` must be a FrameExit built with ``variant="official"``, max pooling and a
    backbone with ``trunk`` (torchvision ResNet-50 names) and ``projection``
    (Linear, BatchNorm1d, ReLU), e.g. ``build_model(official_config("activitynet"))``.
    Files are read with ``torch.load(weights_only=True)``. Returns the model.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or cfg.variant != "official":
        raise CheckpointError("the authors' checkpoints need a model built with variant='official'")
    if cfg.pooling != "max":
        raise CheckpointError(f"the authors' model uses max pooling, not {cfg.pooling!r}")
    blob = _read_state_dict(state_dict_or_path)
    if not isinstance(blob, Mapping):
        raise CheckpointError(f"expected a state_dict (mapping), got {type(blob).__name__}")
    converted = convert_official_state_dict(blob, model.state_dict())
    model.load_state_dict(converted, strict=False)
    return model


def convert_official_checkpoint(
    dataset: str,
    source: str | os.PathLike[str],
    output_uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    class_names: Sequence[str] | str | None = None,
) -> str:
    """Turn an authors' ``.pth`` into a frameexit checkpoint that every entry point loads.

    The result carries :func:`official_config` as its model config, so
    ``pipelines/label.py --checkpoint OUTPUT`` labels with the released model exactly as
    their code runs it (official variant, policy and first-step rule). ``class_names``
    (a list, or the URI of a ``classes.json``: the 200 names in the order of their label
    ids) are stored in the checkpoint. Their release ships no class list and none is
    packaged here, so without it the checkpoint has no names: a warning says so, and
    ``predict``/``label`` need ``--classes``. Returns ``output_uri``.
    """
    from frameexit.checkpoint import checked_class_names, save_model_checkpoint
    from frameexit.config import Config
    from frameexit.model import build_model

    model_cfg = official_config(dataset)
    names = None
    if isinstance(class_names, str):
        from frameexit.manifests import read_class_names

        names = read_class_names(class_names, storage_options=storage_options)
    elif class_names is not None:
        names = list(class_names)
    if names is not None:
        names = checked_class_names(names, model_cfg.num_classes, source="--classes")
    else:
        log.warning(
            "NO CLASS NAMES stored in %s: the authors' release has no class list for %s and "
            "none was given (--classes classes.json, %d names in label-id order); its "
            "answers will read class_<i> unless predict/label get --classes",
            output_uri, dataset, model_cfg.num_classes,
        )  # fmt: skip
    model = load_official_checkpoint(build_model(model_cfg), source)
    cfg = Config(model=model_cfg)
    extra = {"source": os.fspath(source), "official_dataset": dataset}
    save_model_checkpoint(
        model, cfg, output_uri, extra=extra, storage_options=storage_options, class_names=names
    )
    return output_uri


def main(argv: list[str] | None = None) -> int:
    """``python -m frameexit.official --dataset activitynet --input X.pth --output Y.pt``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="frameexit convert-checkpoint",
        description="Convert an authors' released FrameExit checkpoint to a frameexit one.",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(OFFICIAL_CHECKPOINTS))
    parser.add_argument("--input", required=True, help="their .pth (path or URI)")
    parser.add_argument("--output", required=True, help="our checkpoint URI (.pt/.safetensors)")
    parser.add_argument(
        "--classes",
        help="classes.json naming the dataset's classes in label-id order (stored in the "
        "checkpoint; their release has none)",
    )
    args = parser.parse_args(argv)
    try:
        convert_official_checkpoint(args.dataset, args.input, args.output, class_names=args.classes)
    except CheckpointError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.output} (model.variant=official, dataset {args.dataset})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
