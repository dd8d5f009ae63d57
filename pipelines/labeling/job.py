"""Resolving a labeling job on the driver: config, model, class names, the fingerprint."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from frameexit.config import (
    Config,
    fields_with,
    fingerprint_of,
    load_config,
    save_config,
)
from frameexit.errors import ConfigError
from frameexit.operating_point import PAPER_THRESHOLD, OperatingPoint, constant_family
from frameexit.storage import (
    absolute_uri,
    exists,
    join_uri,
    options_for,
    read_bytes,
    redact,
    write_text,
)
from pipelines.labeling.inputs import LabelInputs, read_inputs
from pipelines.labeling.parts import clear_output, list_parts
from pipelines.labeling.schema import CONFIG_NAME, FINGERPRINT_NAME, ID_SCHEME, OUTPUT_VERSION

log = logging.getLogger("frameexit.pipelines.label")

#: With a checkpoint the model comes from it; only the model fields declared
#: ``checkpoint_override`` (inference-time behaviour) may change.
MODEL_INFERENCE_FIELDS = tuple(f.split(".", 1)[1] for f in fields_with("checkpoint_override"))


@dataclass
class LabelJob:
    """Everything the driver resolved before labeling starts."""

    cfg: Config
    input: str
    output: str
    checkpoint: str | None
    weights: dict[str, Any]
    step_gflops: float
    class_names: list[str]
    fingerprint: dict[str, Any]
    # the exit rule (None: all T steps); in calibration mode, set once calibrated
    operating_point: OperatingPoint | None = None
    # calibration mode (label.calibration_videos > 0): what to calibrate
    calibration: dict[str, Any] | None = None
    family: Any = None  # [m, T] threshold family walked by the calibration


def resolve_operating_point(cfg: Config, model: Any) -> OperatingPoint | None:
    """The exit rule of a labeling run without calibration: None with
    ``label.early_exit=false`` (all T), else the model's own default
    (``FrameExit.default_operating_point``: ``--threshold``, the checkpoint's operating
    point, the paper's τ = 0.5), with a warning when nothing bounds what exits cost."""
    if not cfg.label.early_exit:
        return None
    if cfg.model.exit_threshold is None and model.operating_point is None:
        log.warning(
            "the model carries no operating point: exiting by the paper's rule (gate "
            "probability >= %g); nothing bounds how many labels differ from all T steps. "
            "Calibrate on this corpus with --calibrate N --max-disagreement EPS",
            PAPER_THRESHOLD,
        )
    return model.default_operating_point()


def calibration_family(cfg: Config, stored: OperatingPoint | None, num_steps: int):
    """The score and threshold family a corpus calibration walks: the checkpoint's own
    (the one its operating point was calibrated over) when its score is the one asked
    for, else the shape-free constant family."""
    import numpy as np

    score = cfg.exit.score_or(stored.score if stored is not None else None)
    if stored is not None and stored.family and stored.score == score:
        return score, np.asarray(stored.family, dtype=np.float64)
    size = cfg.exit.family_size
    return score, constant_family(size, num_steps)


def resolve_config(
    checkpoint: str | None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Config, dict[str, Any] | None, OperatingPoint | None]:
    """The run's config and, with a checkpoint, its weights and operating point.

    Without a checkpoint: defaults ← ``config_file`` ← ``overrides`` (the model is random).
    With one: the model section is the checkpoint's; command-line overrides may change
    only ``model.exit_threshold``, ``model.first_step_threshold`` and ``model.policy``;
    everything else (label, data) comes from ``config_file`` and the overrides.
    """
    if checkpoint is None:
        return load_config(config_file, overrides), None, None
    from frameexit.checkpoint import checkpoint_config, operating_point_of

    cfg, state, extra = checkpoint_config(checkpoint, config_file, overrides)
    return cfg, state, operating_point_of(extra, source=checkpoint)


def resolve_class_names(
    cfg: Config,
    num_classes: int,
    *,
    classes_uri: str | None = None,
    checkpoint: str | None = None,
    checkpoint_manifest: str | None = None,
    input_names: Sequence[str] = (),
) -> list[str]:
    """Class names for the model's K outputs, in this order: ``--classes``; the names the
    checkpoint stores (training writes them); the class map beside the manifest the model
    was trained on (checkpoints written before names were stored); the input manifest's
    (a guess: warned); else ``class_<i>`` (warned loudly:
    ``frameexit.checkpoint.placeholder_class_names``)."""
    from frameexit.checkpoint import placeholder_class_names, read_checkpoint_class_names
    from frameexit.manifests import class_map_uri_for, read_class_names

    def options(uri: str) -> dict[str, Any] | None:
        return options_for(uri, cfg.data.storage_options) or None

    if classes_uri:
        names = read_class_names(classes_uri, storage_options=options(classes_uri))
        if len(names) != num_classes:
            raise ConfigError(
                "--classes", f"{classes_uri} has {len(names)} names, the model {num_classes}"
            )
        return names
    tried: list[str] = []
    if checkpoint:
        stored = read_checkpoint_class_names(checkpoint, storage_options=options(checkpoint))
        if stored is not None:
            return stored
        tried.append(f"the checkpoint {checkpoint} stores none")
    if checkpoint_manifest:
        beside = class_map_uri_for(checkpoint_manifest)
        try:
            names = read_class_names(beside, storage_options=options(beside))
        except Exception as error:  # noqa: BLE001 - said below, then the next source
            tried.append(f"the training class map {beside} is unreadable ({error})")
        else:
            if len(names) == num_classes:
                log.info("class names from the training class map %s", beside)
                return names
            tried.append(f"the training class map {beside} has {len(names)} names")
    if input_names and len(input_names) == num_classes:
        if checkpoint:
            log.warning(
                "class names GUESSED from the input manifest's class map (%s): they are "
                "right only if the model was trained with the same classes in the same "
                "order; pass --classes to be sure",
                "; ".join(tried) or "the model has none",
            )
        return list(input_names)
    if input_names:
        tried.append(f"the input manifest names {len(input_names)} classes")
    return placeholder_class_names(
        num_classes, "; ".join(tried) or "the model has none and none was given", logger=log
    )


def prepare_job(
    input_uri: str,
    output_uri: str,
    *,
    checkpoint: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    classes_uri: str | None = None,
) -> tuple[LabelJob, LabelInputs]:
    """Resolve config and model (driver side) and read the inputs."""
    import torch

    from frameexit.checkpoint import model_from_state
    from frameexit.flops import step_gflops
    from frameexit.model import build_model

    cfg, state, stored = resolve_config(checkpoint, config_file, overrides)
    input_uri, output_uri = absolute_uri(input_uri), absolute_uri(output_uri)
    checkpoint = absolute_uri(checkpoint) if checkpoint else None
    if state is None:
        log.warning(
            "no --checkpoint: labeling with a RANDOMLY INITIALISED %s model (seed "
            "train.seed=%d); the labels mean nothing",
            cfg.model.backbone,
            cfg.train.seed,
        )
        torch.manual_seed(cfg.train.seed)
        model = build_model(copy.deepcopy(cfg.model))
    else:
        model = model_from_state(cfg.model, state, source=checkpoint)
    model.eval()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    gflops = step_gflops(model, cfg.model.image_size).total
    inputs = read_inputs(
        input_uri,
        storage_options=options_for(input_uri, cfg.data.storage_options),
        exclude_prefix=output_uri,
        allowed_prefixes=cfg.data.allowed_prefixes,
        allow_http=cfg.data.allow_http,
    )
    names = resolve_class_names(
        cfg,
        cfg.model.num_classes,
        classes_uri=classes_uri,
        checkpoint=checkpoint,
        checkpoint_manifest=cfg.data.manifest if checkpoint and cfg.data.manifest else None,
        input_names=inputs.class_names,
    )
    weights_digest = hashlib.sha256()
    for key in sorted(weights):
        weights_digest.update(key.encode())
        weights_digest.update(weights[key].numpy().tobytes())
    point, calibration, family = None, None, None
    steps = cfg.model.num_steps
    if cfg.label.calibration_videos and cfg.label.early_exit:
        if cfg.model.exit_threshold is not None:
            raise ConfigError(
                "label.calibration_videos",
                "--calibrate chooses the exit thresholds; it cannot be combined with "
                "--threshold / model.exit_threshold",
            )
        risk, bound = cfg.exit.risk
        if risk != "disagreement":
            raise ConfigError(
                "exit.max_accuracy_drop",
                "a corpus calibration has no ground truth: bound exit.max_disagreement "
                "(it also bounds the accuracy drop)",
            )
        score, family = calibration_family(cfg, stored, steps)
        calibration = {
            "videos": int(cfg.label.calibration_videos),
            "seed": int(cfg.label.calibration_seed),
            "score": score,
            "risk": risk,
            "bound": bound,
            "delta": float(cfg.exit.delta),
            "family_sha256": hashlib.sha256(family.tobytes()).hexdigest()[:32],
        }
    else:
        model.operating_point = stored
        point = resolve_operating_point(cfg, model)
    fingerprint = {
        "id_scheme": ID_SCHEME,
        "output_version": OUTPUT_VERSION,
        "checkpoint": checkpoint,
        "weights_sha256": weights_digest.hexdigest()[:32],
        # the config fields declared `fingerprint` (frameexit.fields): the model, the
        # decode backend (decord's frames differ from the exact decoder's on some files),
        # early exit on or off, top_k, the multi-label threshold
        **fingerprint_of(cfg),
        # the rule that produced the rows: a fixed operating point, or the calibration
        # that chooses one (its result is in _calibration.json)
        "operating_point": None if point is None else point.to_dict(with_family=False),
        "calibration": calibration,
        "class_names": names,
    }
    job = LabelJob(
        cfg, input_uri, output_uri, checkpoint, weights, gflops, names, fingerprint,
        operating_point=point, calibration=calibration, family=family,
    )  # fmt: skip
    return job, inputs


def check_fingerprint(
    job: LabelJob, options: Mapping[str, Any], *, overwrite: bool, append: bool = False
) -> None:
    """Refuse to add rows to an output made with other settings, or from another input
    unless ``append`` (shards); ``overwrite`` clears the output first. Writes the record
    (``_labeling.json``: settings and the inputs labeled into it) and ``_config.yaml``,
    both without credentials."""
    if overwrite:
        clear_output(job.output, options)
    uri = join_uri(job.output, FINGERPRINT_NAME)
    settings = json.loads(json.dumps(redact(job.fingerprint)))  # as written: JSON types
    source = redact(job.input)
    inputs = [source]
    if exists(uri, storage_options=options):
        recorded = json.loads(read_bytes(uri, storage_options=options))
        before = recorded.get("settings", {})
        differ = sorted(k for k in settings if before.get(k) != settings[k])
        if differ:
            raise ConfigError(
                "--output",
                f"{job.output} holds labels made with other settings ({', '.join(differ)} "
                "differ); rerun with the same settings, another --output, or --overwrite",
            )
        known = list(recorded.get("inputs", []))
        others = [k for k in known if k != source]
        if others and not append:
            # without --append a run makes the output exactly its input, so it would
            # compact away every other shard's rows
            held = "also holds" if source in known else "holds"
            raise ConfigError(
                "--output",
                f"{job.output} {held} the labels of {', '.join(others)}, not only of {source}: "
                "labeling without --append would remove their rows (the output is exactly "
                "the current input). Use --append to add or rerun a shard, another --output, "
                "or --overwrite",
            )
        inputs = known + ([source] if source not in known else [])
    elif list_parts(job.output, options):
        raise ConfigError("--output", f"{job.output} has parts but no {FINGERPRINT_NAME}")
    record = {"settings": settings, "inputs": inputs, "append": bool(append)}
    write_text(uri, json.dumps(record, indent=1, sort_keys=True), storage_options=options)
    save_config(job.cfg, join_uri(job.output, CONFIG_NAME), storage_options=options)
