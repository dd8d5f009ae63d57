"""The multi-node deployment files stay in step with the code they deploy."""

from __future__ import annotations

import json
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


# --- the manifests against the KubeRay v1 CRDs ---------------------------------------

CRDS = ROOT.parent / "shared" / "kuberay-crds"


def _crd_schema(kind: str) -> dict:
    name = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}[kind]
    path = CRDS / name
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(value, schema: dict):
    """Fill ``default``s of missing properties, recursively, as the API server does for a
    structural schema (objects: ``properties`` / ``additionalProperties``; arrays:
    ``items``)."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = json.loads(json.dumps(sub["default"]))
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(schema.get("properties", {})):
                value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(v, schema["items"]) for v in value]
    return value


def _openapi_to_jsonschema(schema):
    """OpenAPI v3 → JSON Schema: drop ``x-kubernetes-*`` and OpenAPI-only keywords, let
    ``x-kubernetes-int-or-string`` take an integer or a string, and refuse unknown fields
    (what ``kubectl apply``'s strict field validation does) unless the schema preserves
    them."""
    if isinstance(schema, list):
        return [_openapi_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, sub in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format"):
            continue
        out[key] = _openapi_to_jsonschema(sub)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    elif "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_manifests_validate_against_the_kuberay_crds_with_defaults_applied(path: Path) -> None:
    import jsonschema

    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    schema = _crd_schema(doc["kind"])
    defaulted = apply_defaults(json.loads(json.dumps(doc)), schema)
    validator = jsonschema.Draft7Validator(_openapi_to_jsonschema(schema))
    errors = sorted(validator.iter_errors(defaulted), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    spec = defaulted["spec"].get("rayClusterSpec", defaulted["spec"])
    for group in spec["workerGroupSpecs"]:
        assert group["replicas"] >= group.get("minReplicas", 0)  # defaults made it explicit


def test_the_labeling_job_gives_gpu_actors_their_nodes_cpus() -> None:
    from pipelines.labeling.run import decode_threads_for

    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-label.yaml").read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    cfg = load_config(None, [a for a in argv[2:] if "=" in a and not a.startswith("-")])
    assert cfg.label.gpus_per_actor > 0
    groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    (gpu,) = [g for g in groups if "nvidia.com/gpu" in _limits(g)]
    cpus, gpus = int(_limits(gpu)["cpu"]), int(_limits(gpu)["nvidia.com/gpu"])
    actors_per_node = gpus / cfg.label.gpus_per_actor
    assert cfg.label.cpus_per_actor is not None, "the RayJob sets label.cpus_per_actor"
    assert cfg.label.cpus_per_actor * actors_per_node <= cpus  # the actors fit the node
    assert cfg.label.cpus_per_actor * actors_per_node >= cpus - 1  # and use its CPUs
    assert decode_threads_for(cfg) >= 2 * cfg.label.cpus_per_actor
    assert cfg.label.concurrency == gpu["replicas"] * actors_per_node


def _limits(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container["resources"]["limits"]
