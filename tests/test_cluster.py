"""The multi-node deployment files stay in step with the code they deploy."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from frameexit.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def _ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in deps if d.startswith("ray[")]
    return ray.split("==")[1]


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_images_pin_the_same_ray_and_torch_as_the_project() -> None:
    pin = _ray_pin()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{pin}-" in dockerfile
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for package in re.findall(r'"(torch(?:vision)?==[\d.]+)"', dockerfile):
        assert package in setup, f"Dockerfile pins {package}, scripts/setup.sh does not"
    for path in KUBERAY:
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == pin, path.name


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_node_runs_with_token_auth_and_no_secrets_inline(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    for container in _containers(doc):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        for secret in ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY"):
            assert "valueFrom" in env[secret], f"{secret} must come from a Secret"


@pytest.mark.parametrize(
    "path", [p for p in KUBERAY if p.name.startswith("rayjob")], ids=lambda p: p.name
)
def test_rayjob_entrypoints_name_real_scripts_and_valid_configs(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and (ROOT / argv[1]).is_file(), argv[:2]
    overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    if config:
        assert (ROOT / config).is_file(), config
    cfg = load_config(str(ROOT / config) if config else None, overrides)
    assert cfg.train.storage.startswith("s3://") or "--output" in argv


def test_launcher_config_keeps_auth_on() -> None:
    doc = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    starts = doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
