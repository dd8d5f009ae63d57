"""The one fault-injection hook (frameexit.testing.hooks): named points, switched on by
tests, read by production code through ``hooks.value`` only."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from frameexit.testing import hooks

ROOT = Path(__file__).resolve().parents[1]


def test_points_are_off_unless_switched_on_and_names_are_checked(monkeypatch) -> None:
    monkeypatch.delenv(hooks.ENV, raising=False)
    assert hooks.value("label.part_delay_s") is None
    with hooks.switched_on({"label.part_delay_s": 0.5}):
        assert hooks.value("label.part_delay_s") == 0.5
        with hooks.switched_on({"label.kill_worker_on": "bad.mp4"}):  # nested: both on
            assert hooks.active() == {"label.part_delay_s": 0.5, "label.kill_worker_on": "bad.mp4"}
        assert hooks.active() == {"label.part_delay_s": 0.5}
    assert hooks.ENV not in os.environ
    with pytest.raises(KeyError, match="unknown test hook"):
        hooks.value("label.no_such_point")
    with pytest.raises(KeyError, match="unknown test hook"), hooks.switched_on({"typo": 1}):
        pass
    env = hooks.environment({"label.exit_before_compact": True}, base={"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert json.loads(env[hooks.ENV]) == {"label.exit_before_compact": True}


def test_production_code_injects_faults_only_through_the_hook() -> None:
    """No environment variable read for a test, no ``os._exit``, outside ``hooks``."""
    offenders = []
    for path in [*ROOT.glob("frameexit/**/*.py"), *ROOT.glob("pipelines/**/*.py"),
                 *ROOT.glob("tuning/**/*.py")]:  # fmt: skip
        if path.name == "hooks.py":
            continue
        text = path.read_text()
        if "os._exit(" in text or re.search(r"FRAMEEXIT_(INJECT|LABEL_PART|LABEL_EXIT)", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
