"""The `frameexit` console command: subcommands, their --help, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import frameexit_cli

BIN = Path(sys.executable).with_name("frameexit")


def test_the_console_script_is_installed_and_lists_every_command():
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("train", "label", "evaluate", "sweep", "prepare", "check", "convert-checkpoint"):
        assert f"  {name}" in out.stdout
    assert "exit codes" in out.stdout


@pytest.mark.parametrize(
    "command, fields",
    [
        ("train", ["model.backbone", "train.stage1.epochs", "train.tracking", "data.manifest"]),
        ("label", ["label.batch_size", "label.retry", "data.decode.timeout_s", "--append"]),
        ("evaluate", ["--views", "--split", "data.manifest"]),
        ("sweep", ["--num-steps", "--betas"]),
        ("prepare", ["--video-root", "--uri-pattern", "--level"]),
        ("check", ["--manifest", "data.decode_concurrency"]),
        ("convert-checkpoint", ["--dataset"]),
    ],
)
def test_every_subcommand_has_help_with_the_fields_it_reads(command, fields, capsys):
    assert frameexit_cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for field in fields:
        assert field in text, (command, field)


def test_exit_codes_a_scheduler_can_act_on(tmp_path, capsys):
    assert frameexit_cli.main(["no-such-command"]) == 2
    assert frameexit_cli.main(["train", "model.num_steps=0"]) == 2  # ConfigError, named
    assert (
        frameexit_cli.main(
            ["label", "--input", str(tmp_path / "nothing.csv"), "--output", str(tmp_path / "o")]
        )
        == 2
    )  # ManifestError: the manifest does not exist
    assert frameexit_cli.main(["prepare"]) == 2  # usage
    assert frameexit_cli.main([]) == 2
