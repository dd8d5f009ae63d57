"""A quiet console and Ray as Ray users expect (issue 21).

The Ray tests run a tiny real job (a task that prints, a Ray Data pipeline writing
Parquet) through ``ensure_ray`` in a subprocess, as the entry points do, and read what
reached the terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipelines.common import ray_target
from pipelines.console import CPP_LOG_LINE, HiddenLines, restatement, shown

ROOT = Path(__file__).resolve().parents[1]

# What the README's main job printed before (issue 21), one line of each kind.
RAY_LINES = [
    "[2026-12-03 20:10:46,247 E 19849 19912] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: '0b26' has constructor arguments in the object store",
    "WARNING: 16 PYTHON worker processes have been started on node: 2ab1 with address: "
    "192.0.2.2, which is 4x the maximum expected startup concurrency (2).",
    "Failed to kill actor 7f3a, status: RpcError: RPC Error message: Socket closed",
    "Dataset dataset_0_0 execution finished in 17.07 seconds",
    "Progress bars disabled. To enable, set "
    "`ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "Data sink Parquet finished. 20 rows and 160.0B data written.",
]

TINY_JOB = """
import sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from pipelines.common import ensure_ray, setup_logging
import ray, ray.data

setup_logging()
ensure_ray(cpus_needed=1)

@ray.remote
def speak():
    print("[frameexit] hello from a worker", flush=True)
    print("noise from a worker", flush=True)
    print("Task was killed due to the node running low on memory.", flush=True)
    return 1

assert ray.get(speak.remote()) == 1
out = tempfile.mkdtemp()
ray.data.range(20).map_batches(lambda b: {"id": b["id"] * 2}).write_parquet(out)
print("rows", ray.data.read_parquet(out).count(), flush=True)
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
time.sleep(1.5)  # the log thread's last batch
"""

RAY_MARKERS = [
    "core_worker.cc",
    "(raylet)",
    "(gcs_server)",
    "execution finished",
    "Progress bars disabled",
    "Data sink Parquet finished",
    "Started a local Ray instance",
    "Starting execution",
    "noise from a worker",
    "(autoscaler)",
]


def test_only_the_projects_lines_are_shown_and_cpp_lines_are_recognised():
    assert shown("[frameexit] stage 1  epoch   1/3  loss 2.3")
    assert not any(shown(line) for line in RAY_LINES)
    assert CPP_LOG_LINE.match(RAY_LINES[0])
    assert not CPP_LOG_LINE.match("2026-12-03 20:09:30,097 frameexit.train: run /tmp/x")
    assert not CPP_LOG_LINE.match("[frameexit] stage 1")


def test_warnings_that_matter_are_restated_once_in_the_projects_words(tmp_path, caplog):
    assert restatement("Task was killed due to the node running low on memory.")[0] == "memory"
    assert restatement("ray.exceptions.OutOfMemoryError: Task was killed")[0] == "memory"
    assert restatement("The node with node id: 3f2 has been marked dead because")[0] == "node"
    assert all(restatement(line) is None for line in RAY_LINES)
    hidden = HiddenLines()
    hidden.add("raylet", RAY_LINES[1])  # before Ray has a session folder: kept in memory
    path = hidden.open(str(tmp_path))
    with caplog.at_level("WARNING", logger="frameexit.pipelines"):
        for _ in range(3):
            hidden.add("pid=7", "Task was killed due to the node running low on memory.")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "lack of memory" in said[0] and path in said[0]
    text = Path(path).read_text()
    assert "(raylet) WARNING: 16 PYTHON" in text and text.count("killed due to") == 3


def test_ray_target_follows_ray_init(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_target()[0] is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_target() == ("10.0.0.5:6379", "RAY_ADDRESS")
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_target()[0] is None  # nothing recorded: a private instance
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    address, why = ray_target()  # recorded by a head that is gone: not joined
    assert address is None and "127.0.0.1:1 is not running" in why


def _run_tiny_job(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "tiny_job.py"
    script.write_text(TINY_JOB)
    return subprocess.run(
        [sys.executable, str(script), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FRAMEEXIT_V"))}
    # a short, private temp root: no `ray start` record, short socket paths
    env.update(RAY_TMPDIR=tempfile.mkdtemp(prefix="fe-", dir="/tmp"), RAY_AUTH_MODE="disabled")
    env.update(extra)
    return env


@pytest.mark.ray
def test_a_quiet_run_shows_only_the_projects_lines(tmp_path):
    out = _run_tiny_job(_clean_env(), tmp_path)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-3000:]
    assert "[frameexit] hello from a worker" in out.stdout
    assert "rows 20" in out.stdout
    assert "Ray: started a private instance on this machine" in console
    for marker in RAY_MARKERS:
        assert marker not in console, marker
    # restated in our words, and the hidden lines kept in the session's logs folder
    assert "Ray killed a worker for lack of memory" in console
    hidden = next(
        Path(out.stderr.split("Ray's own log lines: ")[1].split()[0]).parent.glob(
            "frameexit-hidden-console.log"
        )
    )
    assert "noise from a worker" in hidden.read_text()


@pytest.mark.ray
def test_verbose_brings_rays_lines_back(tmp_path):
    out = _run_tiny_job(_clean_env(FRAMEEXIT_VERBOSE="1"), tmp_path)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-3000:]
    assert "noise from a worker" in console
    assert "execution finished" in console  # Ray Data's own notices
    assert "[frameexit] hello from a worker" in console


@pytest.mark.ray
def test_a_running_ray_start_head_is_joined_not_duplicated(ray_head, tmp_path):
    env = {k: v for k, v in ray_head["env"].items() if k != "RAY_ADDRESS"}
    temp_root = Path(tempfile.mkdtemp(prefix="fe-", dir="/tmp"))
    (temp_root / "ray").mkdir()
    # what `ray start --head` writes without --temp-dir (the fixture keeps its own)
    (temp_root / "ray" / "ray_current_cluster").write_text(ray_head["gcs"])
    env["RAY_TMPDIR"] = str(temp_root)
    out = _run_tiny_job(env, tmp_path)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-3000:]
    assert f"Ray: joined the cluster at {ray_head['gcs']}" in console
    port = ray_head["gcs"].rsplit(":", 1)[1]
    assert f":{port}\n" in out.stdout.split("GCS ", 1)[1]  # the head's GCS (as its node IP)
    assert "started a private instance" not in console
