"""Config layering (defaults → YAML → overrides) and validation naming the field."""

from __future__ import annotations

import pytest
import yaml

from frameexit.config import Config, load_config, parse_override, save_config
from frameexit.errors import ConfigError


def test_defaults_follow_the_paper() -> None:
    cfg = load_config()
    assert cfg.model.num_steps == 10
    assert cfg.model.pooling == "max"
    assert cfg.model.gate_hidden == 64
    assert cfg.model.exit_threshold is None  # the operating point decides; else paper's τ
    from frameexit.operating_point import PAPER_THRESHOLD

    assert PAPER_THRESHOLD == 0.5
    assert cfg.train.stage1.epochs == 35 and cfg.train.stage1.milestones == [16, 30]
    assert cfg.train.stage2.epochs == 10 and cfg.train.stage2.milestones == [5, 8]
    assert cfg.train.stage1.lr == pytest.approx(1e-4)


def test_yaml_then_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"num_steps": 8, "pooling": "mean"}, "train": {"beta": "1e-5"}})
    )
    cfg = load_config(str(path), ["model.num_steps=4", "train.stage1.milestones=[2, 3]"])
    assert cfg.model.num_steps == 4  # override wins over the file
    assert cfg.model.pooling == "mean"  # file wins over the default
    assert cfg.train.beta == pytest.approx(1e-5)  # YAML 1.1 string "1e-5" coerced
    assert cfg.train.stage1.milestones == [2, 3]


def test_save_and_reload_round_trip(tmp_path) -> None:
    cfg = load_config(None, ["model.num_classes=7", "data.manifest=s3://b/m.parquet"])
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    again = load_config(str(tmp_path / "resolved.yaml"))
    assert again == cfg


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.num_steps=0", "model.num_steps"),
        ("model.pooling=median", "model.pooling"),
        ("model.backbone=vgg99", "model.backbone"),
        ("model.exit_threshold=-1", "model.exit_threshold"),
        ("model.num_classes=ten", "model.num_classes"),
        ("train.stage1.milestones=[30, 16]", "train.stage1.milestones"),
        ("train.stage2.lr=0", "train.stage2.lr"),
        ("train.beta=0", "train.beta"),
        ("label.multi_label_threshold=2", "label.multi_label_threshold"),
        ("model.no_such_field=1", "model.no_such_field"),
        ("nosection.x=1", "nosection"),
        ("data.augment=maybe", "data.augment"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.field == field
    assert field in str(info.value)


def test_malformed_override_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError):
        parse_override("model.num_steps")
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad))


def test_config_is_a_plain_dataclass() -> None:
    assert isinstance(Config().validate(), Config)


def test_errors_survive_pickling() -> None:
    """Ray ships errors between processes: the typed fields must come back intact."""
    import pickle

    from frameexit.errors import ManifestError, VideoDecodeError

    error = pickle.loads(pickle.dumps(ConfigError("model.num_steps", "must be >= 1")))
    assert (error.field, error.reason) == ("model.num_steps", "must be >= 1")
    assert str(error) == "model.num_steps: must be >= 1"
    decode = pickle.loads(pickle.dumps(VideoDecodeError("s3://b/v.mp4", "empty", "0 bytes")))
    assert (decode.uri, decode.kind, decode.reason) == ("s3://b/v.mp4", "empty", "0 bytes")
    manifest = pickle.loads(pickle.dumps(ManifestError("m.csv", "no label", line=3)))
    assert (manifest.uri, manifest.reason, manifest.line) == ("m.csv", "no label", 3)


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.decode.timeout_s=.inf", "data.decode.timeout_s"),
        ("data.decode.timeout_s=.nan", "data.decode.timeout_s"),
        ("train.beta=.inf", "train.beta"),
        ("train.cpus_per_worker=.nan", "train.cpus_per_worker"),
        ("train.stage1.gamma=2", "train.stage1.gamma"),
        ("train.seed=-1", "train.seed"),
        ("label.cpus_per_actor=0", "label.cpus_per_actor"),
        ("label.gpus_per_actor=-1", "label.gpus_per_actor"),
        ("label.lease_seconds=1", "label.lease_seconds"),
        ("label.max_actor_restarts=-2", "label.max_actor_restarts"),
        ("label.memory_per_actor_mb=0", "label.memory_per_actor_mb"),
        ("label.multi_label_threshold=1.5", "label.multi_label_threshold"),
    ],
)
def test_every_number_is_finite_and_in_range_naming_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.field == field


def test_field_roles_are_read_from_the_fields() -> None:
    """Resume, the labeling fingerprint, checkpoint overrides and ``--help`` all read the
    roles declared on the fields (frameexit.fields), not lists kept beside them."""
    from frameexit.config import (
        Config,
        config_help,
        fields_with,
        fingerprint_of,
        load_config,
    )

    resumable = fields_with("resumable")
    # extend a run, move it, track it: yes; what shapes the model, data or optimiser: no
    for name in ("train.stage1.epochs", "train.stage2.epochs", "train.num_workers",
                 "data.decode.timeout_s", "data.decode.fetch", "data.storage_options",
                 "exit", "exit.delta", "label", "sweep"):  # fmt: skip
        assert name in resumable, name
    for name in ("train.stage1.lr", "train.beta", "model.num_steps", "data.manifest",
                 "data.decode.backend", "data.decode.max_bytes", "data.batch_size"):  # fmt: skip
        assert name not in resumable, name
    assert set(fields_with("checkpoint_override")) == {
        "model.exit_threshold", "model.first_step_threshold", "model.policy"
    }  # fmt: skip
    cfg = load_config(None, ["data.decode.backend=pyav", "label.top_k=3"])
    fingerprint = fingerprint_of(cfg)
    assert set(fingerprint) == {
        "model", "decode_backend", "early_exit", "top_k", "multi_label_threshold"
    }  # fmt: skip
    assert fingerprint["decode_backend"] == "pyav" and fingerprint["top_k"] == 3
    assert fingerprint["model"]["num_steps"] == Config().model.num_steps
    text = config_help("label")
    assert "label.top_k = 5" in text and "data.decode.backend = 'auto'" in text
    assert "exit.delta" in text and "train.beta" not in text and "model." not in text
    check = config_help("check")
    assert "data.decode.timeout_s" in check and "label.lease_seconds" in check
    assert "label.top_k" not in check and "exit." not in check
    train = config_help("train")
    assert "model.num_steps" in train and "train.beta" in train and "label." not in train


def test_save_and_load_config_round_trip_without_credentials(tmp_path) -> None:
    from frameexit.config import load_config, redacted, save_config

    cfg = load_config(
        None, ['data.storage_options={"key": "AKIA-SECRET", "secret": "s3cr3t"}', "train.beta=0.002"]
    )
    uri = save_config(cfg, str(tmp_path / "config.yaml"))
    text = (tmp_path / "config.yaml").read_text()
    assert "s3cr3t" not in text and "AKIA-SECRET" not in text
    back = load_config(uri)
    assert back == redacted(cfg) and back.train.beta == 0.002
    assert back.data.storage_options["secret"] != "s3cr3t"


def test_resume_accepts_a_run_recorded_with_the_earlier_decode_names(tmp_path) -> None:
    """A run whose config.yaml has data.decode_backend, ... (before data.decode) resumes;
    a changed decode backend (not resumable: it changes the frames) still refuses."""
    import yaml

    from frameexit.config import config_to_dict, load_config
    from pipelines.pipeline import check_resume

    cfg = load_config(None, [f"train.storage={tmp_path}", "train.name=old"])
    recorded = config_to_dict(cfg)
    decode = recorded["data"].pop("decode")
    recorded["data"].update(
        decode_backend=decode["backend"], decode_fetch=decode["fetch"],
        decode_timeout_s=decode["timeout_s"], decode_range_min_bytes=decode["range_min_bytes"],
        max_video_bytes=decode["max_bytes"],
    )  # fmt: skip
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    check_resume(cfg)
    check_resume(load_config(None, [f"train.storage={tmp_path}", "train.name=old",
                                    "data.decode.timeout_s=30"]))  # fmt: skip
    with pytest.raises(ConfigError, match="data.decode.backend"):
        check_resume(load_config(None, [f"train.storage={tmp_path}", "train.name=old",
                                        "data.decode.backend=decord"]))  # fmt: skip
