"""The multi-node deployment files stay in step with the code they deploy."""

from __future__ import annotations

import fnmatch
import functools
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


def _pods(doc: dict) -> list[dict]:
    """The pod spec of every group (head and workers) of a RayCluster or RayJob."""
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def _containers(doc: dict) -> list[dict]:
    return [c for pod in _pods(doc) for c in pod["containers"]]


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


# --- the image holds everything `pip install .` gives ---------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerignored(path: str) -> bool:
    """Whether the image's build context leaves out ``path`` (relative to the repository
    root), by cluster/Dockerfile.dockerignore's patterns (BuildKit reads that file beside
    the Dockerfile in place of the root's .dockerignore)."""
    ignore = CLUSTER / "Dockerfile.dockerignore"
    patterns = [
        p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def _project_packages() -> list[str]:
    """The top-level packages `pip install .` installs (pyproject's packages.find)."""
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = find["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    return sorted({p.split(".")[0] for p in packages})


def _copied(source: str) -> bool:
    """Whether a source path of the repository reaches the image through a COPY."""
    for word, args in _dockerfile_instructions():
        if word != "COPY":
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for src in sources:
            src = src.rstrip("/") or "."
            covers = src in (".", "./") or source == src or source.startswith(src + "/")
            if covers and not _dockerignored(source):
                return True
    return False


def test_the_image_copies_and_installs_every_package_and_the_console_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    packages = _project_packages()
    assert {"frameexit", "frameexit_cli", "pipelines", "tuning"} <= set(packages)
    for package in packages:
        assert _copied(f"{package}/__init__.py"), f"cluster/Dockerfile does not copy {package}/"
    for needed in ("pyproject.toml", "README.md", "configs/synthetic.yaml",
                   "configs/base/paper.yaml"):  # fmt: skip
        assert _copied(needed), f"cluster/Dockerfile does not copy {needed}"
    runs = " && ".join(args for word, args in _dockerfile_instructions() if word == "RUN")
    assert re.search(r"pip install [^&]*-e \"?\.(\[[\w,]+\])?\"?", runs), (
        "the image must pip install the project itself"
    )
    for script, target in project["scripts"].items():
        module = target.split(":")[0]
        assert module.split(".")[0] in packages, f"{script} -> {module}, not a package"
        assert re.search(rf"(^|&&)\s*{script}\b", runs), f"the build does not run `{script}`"
        assert f"import {module.split('.')[0]}" in runs or f", {module}" in runs, module


def test_local_state_stays_out_of_the_image() -> None:
    for path in (".venv/bin/python", "runs/x/config.yaml", "data/synthetic-default/a.mp4",
                 ".git/HEAD", "frameexit/__pycache__/x.pyc"):  # fmt: skip
        assert not _copied(path), path


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_node_runs_with_token_auth_and_no_secrets_inline(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    for pod in _pods(doc):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"].get("valueFrom", {})
            for name, entry in env.items():
                if CREDENTIAL.search(name):
                    assert "value" not in entry, f"{name} must come from a Secret, not a value"
                    assert "secretKeyRef" in entry.get("valueFrom", {}), name
        # storage credentials: a service account (IRSA, Workload Identity) or Secret refs
        keys = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        assert pod.get("serviceAccountName") or "AWS_ACCESS_KEY_ID" in keys, path.name


CREDENTIAL = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


def _quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, factor in units.items():
        if str(text).endswith(unit):
            return float(str(text)[: -len(unit)]) * factor
    return float(text)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_pod_gives_the_object_store_a_memory_backed_dev_shm(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    for pod in _pods(doc):
        shm = {
            v["name"]: v["emptyDir"]
            for v in pod.get("volumes", [])
            if v.get("emptyDir", {}).get("medium") == "Memory"
        }
        assert shm, f"{path.name}: a pod without a memory-backed volume"
        for container in pod["containers"]:
            (mount,) = [
                m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"
            ]
            assert mount["name"] in shm
            size = _quantity(shm[mount["name"]]["sizeLimit"])
            memory = _quantity(container["resources"]["limits"]["memory"])
            assert 0.2 * memory <= size <= 0.5 * memory  # about Ray's 30 % object store


def test_the_training_job_resumes_on_resubmit(tmp_path: Path) -> None:
    """A resubmitted RayJob reruns the same entrypoint: with ``--resume`` it continues the
    config's run instead of starting ``NAME-2``, and the first submission, when the run
    does not exist yet, passes the resume check and starts it."""
    from pipelines.pipeline import check_resume

    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-train.yaml").read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert "--resume" in argv
    assert doc["spec"].get("backoffLimit", 0) >= 1  # a failed attempt is resubmitted
    overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
    config = str(ROOT / argv[argv.index("--config") + 1])
    cfg = load_config(config, [*overrides, f"train.storage={tmp_path}"])
    check_resume(cfg)  # nothing recorded yet: no refusal
    readme = (CLUSTER / "README.md").read_text()
    assert "--resume" in readme


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


@functools.cache
def _crd_schema(kind: str) -> dict:
    name = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}[kind]
    path = CRDS / name
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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
