"""Secrets are masked by value, not only by key name: every string of the storage options,
of the credential files and of the credential environment variables is scrubbed from every
file and log line written, whatever its key (issue 20, item 4)."""

from __future__ import annotations

import io
import json
import logging
import secrets
import urllib.parse
from pathlib import Path

import pytest
import torch

from frameexit.checkpoint import save_model_checkpoint
from frameexit.config import config_from_dict, config_yaml, load_config, redacted, save_config
from frameexit.model import build_model
from frameexit.storage import (
    REDACTED,
    SecretFilter,
    install_secret_filter,
    known_secrets,
    redact,
    register_secrets,
    scrub,
)
from pipelines.common import EXIT_CONFIG, EXIT_FAILURE, run_command


def fresh() -> str:
    """A secret no other test (and nothing else in the process) has seen."""
    return "Sk" + secrets.token_urlsafe(24)


def nest(path: str, value: object) -> dict:
    """``{"a": {"b": value}}`` for ``"a.b"``."""
    out: object = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out  # type: ignore[return-value]


# the key names each storage library reads its credentials from, and unusual ones
LIBRARY_KEYS = [
    "key",  # s3fs
    "secret",
    "token",
    "client_kwargs.aws_secret_access_key",
    "client_kwargs.aws_session_token",  # botocore
    "s3_additional_kwargs.SSECustomerKey",
    "config_kwargs.SecretAccessKey",
    "account_key",  # adlfs
    "sas_token",
    "connection_string",
    "client_secret",
    "credential",
    "my_weird_field",  # no credential-like name at all
    "client_kwargs.extra.opaque",
]


@pytest.fixture
def log_text():
    """A handler on the root logger with the project's filter, as setup_logging installs
    it; yields a function returning what was written."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = logging.getLogger("frameexit").level
    logging.getLogger("frameexit").setLevel(logging.INFO)
    install_secret_filter()
    try:
        yield stream.getvalue
    finally:
        root.removeHandler(handler)
        logging.getLogger("frameexit").setLevel(level)


@pytest.mark.parametrize("path", LIBRARY_KEYS)
def test_option_values_leave_no_file_or_log_line_whatever_their_key(
    path: str, tmp_path, log_text
) -> None:
    secret = fresh()
    options = {"endpoint_url": "http://127.0.0.1:9000", **nest(path, secret)}
    cfg = config_from_dict({"data": {"storage_options": options}})
    # the written config (save_config, and the same redacted(cfg) in a checkpoint)
    written = save_config(cfg, str(tmp_path / "config.yaml"))
    text = Path(written).read_text()
    assert secret not in text and REDACTED in text
    assert "http://127.0.0.1:9000" in text  # the endpoint is a setting, kept
    model = build_model(
        config_from_dict(
            {"model": {"backbone": "tiny", "num_classes": 3, "num_steps": 2, "feature_dim": 8}}
        ).model
    )
    save_model_checkpoint(model, redacted(cfg), str(tmp_path / "m.pt"))
    assert secret.encode() not in (tmp_path / "m.pt").read_bytes()
    # a log line that quotes it, under any key, or bare
    log = logging.getLogger("frameexit.test")
    log.info("options %s", cfg.data.storage_options)
    log.warning("failed with %s", secret)
    assert secret not in log_text() and "failed with ***" in log_text()
    assert "127.0.0.1:9000" in log_text()


def test_gcsfs_token_as_a_dict_and_as_a_key_file(tmp_path, log_text) -> None:
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(fresh() * 2 for _ in range(3))
    pem += "\n-----END PRIVATE KEY-----\n"
    key_id = fresh()
    account = {
        "type": "service_account",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": "x@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    as_dict = config_from_dict({"data": {"storage_options": {"token": account}}})
    assert pem not in config_yaml(as_dict) and key_id not in config_yaml(as_dict)
    logging.getLogger("frameexit.test").error("bad token %r", account)  # escaped newlines
    for line in pem.splitlines()[1:-1]:
        assert line not in log_text()
    assert key_id not in log_text()

    path = tmp_path / "key.json"
    other = {**account, "private_key_id": fresh(), "private_key": pem.replace("Sk", "Qz")}
    path.write_text(json.dumps(other))
    register_secrets({"token": str(path)})
    message = f"refresh failed for key {other['private_key_id']}: {other['private_key']}"
    assert scrub(message) == f"refresh failed for key {REDACTED}: {REDACTED}"


def test_short_values_are_masked_by_key_only() -> None:
    options = {"secret": "s3cr3t", "my_field": "s3cr3t", "cache_type": "bytes"}
    register_secrets(options)
    assert redact(options) == {"secret": REDACTED, "my_field": "s3cr3t", "cache_type": "bytes"}
    assert scrub("the bytes of s3cr3t") == "the bytes of s3cr3t"  # too short to match
    assert scrub("the bytes of s3cr3t", options) == f"the bytes of {REDACTED}"  # its key


def test_public_option_values_are_kept() -> None:
    options = {
        "endpoint_url": "https://minio.internal:9000",
        "client_kwargs": {"region_name": "eu-central-1"},
        "secret": fresh(),
    }
    register_secrets(options)
    assert "https://minio.internal:9000" not in known_secrets()
    masked = redact({"data": {"storage_options": options}})["data"]["storage_options"]
    assert masked["endpoint_url"] == "https://minio.internal:9000"
    assert masked["client_kwargs"] == {"region_name": "eu-central-1"}
    text = "could not reach https://minio.internal:9000 in eu-central-1"
    assert scrub(text) == text


def test_aws_credential_files_are_scrubbed_from_an_error(tmp_path, monkeypatch, caplog) -> None:
    """The secrets of ~/.aws/credentials and ~/.aws/config (any profile, as botocore reads
    them, AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE) never reach the error log."""
    key, token, other = fresh(), fresh(), fresh()
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = AKIA{fresh()[:16]}\naws_secret_access_key = {key}\n"
        f"[prod]\naws_secret_access_key={other}\naws_session_token = {token}\n"
    )
    config = tmp_path / "config"
    nested_secret = fresh()
    config.write_text(
        f"[profile dev]\nregion = eu-west-1\ns3 =\n    aws_secret_access_key = {nested_secret}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))

    def main(argv):
        raise RuntimeError(f"SignatureDoesNotMatch for {key} / {token} / {nested_secret}")

    with caplog.at_level(logging.ERROR):
        assert run_command(main, []) == EXIT_FAILURE
    assert "SignatureDoesNotMatch" in caplog.text
    for value in (key, token, nested_secret):
        assert value not in caplog.text  # the message and the traceback
    assert scrub(f"x {other} y") == f"x {REDACTED} y"
    assert "eu-west-1" not in known_secrets()


def test_credential_variables_are_scrubbed(monkeypatch, log_text) -> None:
    account_key = fresh() + "=="
    signature = fresh() + "/+="
    session = fresh()
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={account_key};"
        "EndpointSuffix=core.windows.net",
    )
    monkeypatch.setenv(
        "AZURE_STORAGE_SAS_TOKEN",
        f"sv=2022-11-02&ss=b&sig={urllib.parse.quote(signature, safe='')}",
    )
    monkeypatch.setenv("AWS_SESSION_TOKEN", session)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", (client := fresh()))
    log = logging.getLogger("frameexit.test")
    log.error("auth failed: key %s sig %s token %s client %s", account_key, signature,
              session, client)  # fmt: skip
    log.error("url https://acct.blob.core.windows.net/c/v.mp4?sp=r&sig=%s", signature)
    for value in (account_key, signature, urllib.parse.quote(signature, safe=""), session):
        assert value not in log_text()
    assert client not in log_text()
    assert scrub("AccountName=acct;") == "AccountName=acct;"  # the account is no secret


def test_a_traceback_is_scrubbed_too(log_text) -> None:
    secret = fresh()
    register_secrets({"anything": secret})
    try:
        raise ValueError(f"boom {secret}")
    except ValueError:
        logging.getLogger("frameexit.test").exception("it failed")
    assert "ValueError: boom ***" in log_text() and secret not in log_text()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "v=%s", (secret,), None)
    assert SecretFilter().filter(record) and record.getMessage() == "v=***"


def test_a_mistyped_storage_options_override_never_prints_its_secret(caplog) -> None:
    """The entry point fails on the override (exit 2) and the error line names the field
    without the secret, nor the YAML parser's cut of it."""
    from pipelines.train import main

    key, secret = fresh(), fresh()
    argv = [f"data.storage_options={{key: {key}, secret: {secret}"]  # the } is missing
    with caplog.at_level(logging.INFO):
        assert run_command(main, argv) == EXIT_CONFIG
    assert "data.storage_options: cannot parse value" in caplog.text
    for value in (key, secret):
        assert value not in caplog.text
        assert value[-10:] not in caplog.text and value[:10] not in caplog.text

    caplog.clear()
    weird = fresh()
    argv = [f"data.storage_options.my_weird_field={weird}", "model.num_steps=0"]
    with caplog.at_level(logging.INFO):
        assert run_command(main, argv) == EXIT_CONFIG
    assert "model.num_steps" in caplog.text
    assert scrub(f"value {weird}") == f"value {REDACTED}"  # registered from the command line


def test_an_override_secret_is_scrubbed_from_a_later_log_line_and_config(tmp_path, caplog):
    """``storage_options.my_weird_field=<secret>`` on a command line: the config file
    written and every log line of the run are clean."""
    secret = fresh()
    out = tmp_path / "config.yaml"

    def main(argv):
        cfg = load_config(None, argv)
        save_config(cfg, str(out))
        logging.getLogger("frameexit.test").warning("opening with %s", cfg.data.storage_options)
        raise OSError(f"connection to bucket refused ({secret})")

    argv = [f"data.storage_options.my_weird_field={secret}"]
    with caplog.at_level(logging.INFO):
        assert run_command(main, argv) == EXIT_FAILURE
    assert secret not in caplog.text and secret not in out.read_text()
    assert "my_weird_field: '***'" in out.read_text()


def test_checkpoint_config_keeps_no_option_value(tmp_path) -> None:
    """What a training run writes into its checkpoints: redacted(cfg)."""
    secret = fresh()
    cfg = config_from_dict(
        {
            "model": {"backbone": "tiny", "num_classes": 3, "num_steps": 2, "feature_dim": 8},
            "data": {"storage_options": {"s3_additional_kwargs": {"SSECustomerKey": secret},
                                         "profile_data": {"x": secret[::-1]}}},
        }
    )  # fmt: skip
    uri = str(tmp_path / "m.pt")
    save_model_checkpoint(build_model(cfg.model), redacted(cfg), uri)
    blob = torch.load(uri, weights_only=True)
    options = blob["config"]["data"]["storage_options"]
    assert options == {"s3_additional_kwargs": {"SSECustomerKey": REDACTED},
                       "profile_data": {"x": REDACTED}}  # fmt: skip
