"""Labeling under every change and fault: exactly one visible row per current input.

Each case ends by checking the directory itself (``pd.read_parquet(output)``, what any
reader sees) against the ids of the current input, besides ``read_labels``:

* an input edited between runs (a bad row fixed, a row removed, one inserted), repeats
  and several segments of one video, an output path with glob characters, a planted
  secret that must appear in no byte written (outputs, logs, Ray's logs);
* retryable rows (decode timeouts; S3 503 SlowDown, resets and stalls from a loopback
  fault proxy) retried by the rerun, final rows not;
* a second run on the same output while the first holds the lease; a crashed run's lease;
* an actor killed mid-batch; a poison video that kills its worker (``crashed``);
* the driver killed after its last commit, before compaction and summary;
* a worker node killed mid-run on a multi-node cluster (``test_label_node_loss``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from frameexit.checkpoint import save_model_checkpoint
from frameexit.config import load_config
from frameexit.errors import ConfigError
from frameexit.model import build_model
from frameexit.storage import upload_dir
from frameexit.testing import hooks
from frameexit.testing.faults import FaultProxy
from pipelines import labeling
from pipelines.labeling import STATUS_BAD_ROW, STATUS_OK, read_labels, run_labeling
from pipelines.lease import Lease

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["model.backbone=tiny", "model.feature_dim=32", "model.num_classes=3",
         "model.num_steps=4", "model.image_size=32", "model.gate_hidden=8"]  # fmt: skip
RUN = ["label.batch_size=2", "label.part_size=2", "label.concurrency=2",
       "label.cpus_per_actor=0.5"]  # fmt: skip
SECRET = "PLANTED-Secret-7f3a9c"


@pytest.fixture(scope="module")
def env(tiny_corpus, tmp_path_factory):
    """Videos of the tiny corpus and a small random checkpoint."""
    root = tmp_path_factory.mktemp("faults")
    cfg = load_config(None, MODEL)
    model = build_model(cfg.model)
    checkpoint = str(root / "model.pt")
    save_model_checkpoint(model, cfg, checkpoint)
    return {"videos": tiny_corpus.table["video"].tolist(), "checkpoint": checkpoint, "root": root}


def _csv(path: Path, rows: list[str]) -> str:
    path.write_text("video,start,end\n" + "\n".join(rows) + "\n")
    return str(path)


def _visible(out: str) -> pd.DataFrame:
    """What a plain reader of the directory sees."""
    return pd.read_parquet(out)


def _exactly(out: str, ids: set[str]) -> pd.DataFrame:
    rows = read_labels(out)
    visible = _visible(out)
    assert sorted(visible["input_id"]) == sorted(ids), "the directory holds other rows"
    assert sorted(rows["input_id"]) == sorted(ids)
    return rows


def _label(manifest: str, out: str, env: dict, *extra: str, **kwargs):
    return run_labeling(
        manifest, out, checkpoint=env["checkpoint"], overrides=[*RUN, *extra],
        progress=False, **kwargs,
    )  # fmt: skip


@pytest.mark.ray
def test_input_edits_repeats_segments_glob_path_and_no_secret(
    ray_cluster, env, tmp_path, capfd, caplog
):
    a, b, c, d, e = env["videos"][:5]
    out = str(tmp_path / "labels[v2]*?")  # glob characters in the output path
    secret_options = json.dumps(
        {"secret": SECRET, "client_kwargs": {"endpoint_url": f"http://u:{SECRET}@127.0.0.1:9"}}
    )
    first = _csv(
        tmp_path / "in.csv",
        [f"{a},,", ",0,1", f"{b},,", f"{a},,", f"{c},0,0.5", f"{c},0.5,1"],  # row 2: no video
    )
    summary = _label(first, out, env, f"data.storage_options={secret_options}")
    assert summary["complete"] and summary["inputs"] == 6
    rows = _exactly(
        out,
        {f"{a}#n=1", f"{a}#n=2", f"{b}#n=1", f"{c}#t=0,0.5&n=1", f"{c}#t=0.5,1&n=1"}
        | {i for i in read_labels(out)["input_id"] if i.startswith("bad:")},
    )
    assert (rows["status"] == STATUS_OK).sum() == 5 and (
        rows["status"] == STATUS_BAD_ROW
    ).sum() == 1
    segments = rows[rows["video"] == c].sort_values("start")
    assert segments["start"].tolist() == [0, 0.5] and segments["end"].tolist() == [0.5, 1]
    assert (segments["num_frames"] < rows[rows["video"] == a]["num_frames"].iloc[0]).all()
    labeled_once = dict(zip(rows["input_id"], rows["run_id"], strict=True))

    # Same input again: nothing to do (the glob-character path is seen as committed).
    again = _label(first, out, env)
    assert again["run"]["videos"] == 0 and again["complete"]

    # The input edited: the bad row fixed (now d), b removed, e inserted at the top.
    second = _csv(tmp_path / "in.csv", [f"{e},,", f"{a},,", f"{d},,", f"{a},,", f"{c},0,0.5",
                                        f"{c},0.5,1"])  # fmt: skip
    summary = _label(second, out, env)
    expected = {f"{e}#n=1", f"{a}#n=1", f"{d}#n=1", f"{a}#n=2", f"{c}#t=0,0.5&n=1",
                f"{c}#t=0.5,1&n=1"}  # fmt: skip
    rows = _exactly(out, expected)
    assert summary["complete"] and summary["stale_rows_removed"] == 2  # b and the bad row
    assert summary["run"]["videos"] == 2  # only d and e were labeled
    kept = {
        i: r for i, r in zip(rows["input_id"], rows["run_id"], strict=True) if i in labeled_once
    }
    assert kept == {i: labeled_once[i] for i in kept}, "unchanged entries were relabeled"

    # The planted secret is in no byte under the output, nor in any log.
    for path in Path(out).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    text = capfd.readouterr()
    assert SECRET not in text.out + text.err and SECRET not in caplog.text
    for path in Path(ray_cluster["temp_dir"]).rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ".json"):
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.ray
def test_timeouts_are_retried_by_the_rerun_and_final_errors_are_not(ray_cluster, env, tmp_path):
    a, b = env["videos"][:2]
    missing = f"{tmp_path}/missing.mp4"
    manifest = _csv(tmp_path / "in.csv", [f"{a},,", f"{b},,", f"{missing},,"])
    ids = {f"{a}#n=1", f"{b}#n=1", f"{missing}#n=1"}
    out = str(tmp_path / "out")
    summary = _label(manifest, out, env, "data.decode.timeout_s=1e-4")  # nothing opens in time
    rows = _exactly(out, ids).set_index("input_id")
    # the videos cannot open in 0.1 ms; the missing file may be found missing first
    assert (rows.loc[[f"{a}#n=1", f"{b}#n=1"], "status"] == "timeout").all()
    assert rows.loc[[f"{a}#n=1", f"{b}#n=1"], "retryable"].all() and summary["complete"]
    missing_first = rows.loc[f"{missing}#n=1", "status"]
    assert missing_first in ("timeout", "missing")

    # label.retry=false keeps them; the default rerun labels them again (attempt 2).
    assert _label(manifest, out, env, "label.retry=false")["run"]["videos"] == 0
    summary = _label(manifest, out, env)
    rows = _exactly(out, ids).set_index("input_id")
    retried = 3 if missing_first == "timeout" else 2
    assert summary["run"]["retried"] == retried and summary["run"]["videos"] == retried
    assert rows.loc[f"{a}#n=1", "status"] == STATUS_OK and rows.loc[f"{a}#n=1", "attempts"] == 2
    assert rows.loc[f"{missing}#n=1", "status"] == "missing"  # final now
    assert not rows.loc[f"{missing}#n=1", "retryable"]
    # a final row is never retried
    assert _label(manifest, out, env)["run"]["videos"] == 0


@pytest.mark.ray
@pytest.mark.s3
def test_s3_slowdown_resets_and_stalls_are_retryable(ray_cluster, env, moto_s3, tmp_path):
    local = tmp_path / "videos"
    local.mkdir()
    names = ["slow.mp4", "reset.mp4", "stall.mp4", "fine.mp4"]
    for name, video in zip(names, env["videos"], strict=False):
        (local / name).write_bytes(Path(video).read_bytes())
    bucket = moto_s3.create_bucket()
    upload_dir(str(local), f"{bucket}/v", storage_options=moto_s3.storage_options)
    manifest = _csv(tmp_path / "in.csv", [f"{bucket}/v/{n},," for n in names])
    out = str(tmp_path / "out")
    with FaultProxy(moto_s3.endpoint_url, stall_s=12.0) as proxy:
        # botocore's own retries off (total_max_attempts; its legacy max_attempts counts
        # retries, with a random throttling backoff of up to seconds): s3fs alone then
        # tries 5 times, ~2 s of backoff, well inside the 6 s decode budget
        options = {
            **moto_s3.storage_options,
            "endpoint_url": proxy.endpoint_url,
            "config_kwargs": {"retries": {"total_max_attempts": 1}},
        }
        proxy.rules = {"slow.mp4": "slowdown", "reset.mp4": "reset", "stall.mp4": "stall"}
        overrides = [f"data.storage_options={json.dumps(options)}", "data.decode.timeout_s=6"]
        _label(manifest, out, env, *overrides)
        ids = {f"{bucket}/v/{n}#n=1" for n in names}
        rows = _exactly(out, ids).set_index("video")
        assert rows.loc[f"{bucket}/v/slow.mp4", "status"] == "throttled"
        assert rows.loc[f"{bucket}/v/reset.mp4", "status"] == "unavailable"
        assert rows.loc[f"{bucket}/v/stall.mp4", "status"] == "timeout"
        assert rows.loc[f"{bucket}/v/fine.mp4", "status"] == STATUS_OK
        assert rows["retryable"].sum() == 3
        assert proxy.faults["slowdown"] >= 2 and proxy.faults["reset"] >= 1  # the client retried
        proxy.rules = {}  # the storage recovers
        summary = _label(manifest, out, env, *overrides)
    rows = _exactly(out, ids)
    assert (rows["status"] == STATUS_OK).all() and summary["run"]["retried"] == 3
    assert sorted(rows["attempts"]) == [1, 2, 2, 2]


@pytest.mark.ray
def test_a_second_run_on_the_same_output_refuses(ray_cluster, env, tmp_path):
    manifest = _csv(tmp_path / "in.csv", [f"{env['videos'][0]},,"])
    out = str(tmp_path / "out")
    with Lease(out, None, seconds=60), pytest.raises(ConfigError, match="--output.*being"):
        _label(manifest, out, env)
    assert not list(Path(out).glob("part-*"))  # the refused run touched nothing
    assert _label(manifest, out, env)["complete"]


def _actor_pids() -> list[int]:
    """PIDs of the labeling actors (Ray names worker processes after their actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"MapWorker(MapBatches(VideoLabeler))" in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.ray
@pytest.mark.slow
def test_an_actor_killed_mid_batch_and_a_poison_video(ray_cluster, env, tmp_path, monkeypatch):
    videos = env["videos"][:8]
    manifest = _csv(tmp_path / "in.csv", [f"{v},," for v in videos])
    ids = {f"{v}#n=1" for v in videos}

    # An actor SIGKILLed while it labels: its batches are retried, nothing is lost.
    out = str(tmp_path / "killed")
    killed = []

    def kill_one() -> None:
        deadline = time.monotonic() + 120
        while not labeling.list_parts(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = _actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_one)
    killer.start()
    with hooks.switched_on({"label.part_delay_s": 0.7}):
        summary = _label(manifest, out, env)
    killer.join()
    assert killed, "no actor was running to be killed"
    rows = _exactly(out, ids)
    assert (rows["status"] == STATUS_OK).all() and summary["complete"]

    # A video that kills its worker whenever it is opened: a final `crashed` row, the
    # job finishes, every other video is labeled.
    poison = Path(videos[3]).name
    out = str(tmp_path / "poison")
    with hooks.switched_on({"label.kill_worker_on": poison}):
        summary = _label(manifest, out, env)
    rows = _exactly(out, ids).set_index("input_id")
    assert rows.loc[f"{videos[3]}#n=1", "status"] == "crashed"
    assert not rows.loc[f"{videos[3]}#n=1", "retryable"]
    assert (rows.drop(index=f"{videos[3]}#n=1")["status"] == STATUS_OK).all()
    assert summary["complete"] and summary["run"]["errors_by_kind"] == {"crashed": 1}
    # a rerun does not open it again (final), and still the same rows
    with hooks.switched_on({"label.kill_worker_on": poison}):
        assert _label(manifest, out, env)["run"]["videos"] == 0


@pytest.mark.ray
def test_driver_killed_between_last_commit_and_compaction(ray_cluster, env, tmp_path):
    a, b, c = env["videos"][:3]
    out = str(tmp_path / "out")
    manifest = _csv(tmp_path / "in.csv", [f"{a},,", f"{b},,"])
    _label(manifest, out, env, "data.decode.timeout_s=1e-4")  # two retryable rows
    _csv(tmp_path / "in.csv", [f"{a},,", f"{c},,"])  # b removed, c added
    args = ["--input", manifest, "--output", out, "--checkpoint", env["checkpoint"],
            "--no-progress", *RUN]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "label.py"), *args],
        env={
            **hooks.environment({"label.exit_before_compact": True}),
            "RAY_ADDRESS": ray_cluster["address"],
        },  # fmt: skip
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr.decode()[-3000:]
    visible = _visible(out)
    assert len(visible) > 2  # a's old timeout row and its retry, and b's stale row: not compacted
    from pipelines.label import main

    summary = main(args)  # the same command again
    rows = _exactly(out, {f"{a}#n=1", f"{c}#n=1"})
    assert (rows["status"] == STATUS_OK).all() and summary["complete"]
    assert summary["run"]["videos"] == 0  # everything was committed before the kill


@pytest.mark.ray
def test_append_keeps_the_rows_of_other_shards(ray_cluster, env, tmp_path):
    a, b = env["videos"][:2]
    shard1 = _csv(tmp_path / "s1.csv", [f"{a},,"])
    shard2 = _csv(tmp_path / "s2.csv", [f"{b},,"])
    out = str(tmp_path / "out")
    _label(shard1, out, env)
    with pytest.raises(ConfigError, match="--append"):
        _label(shard2, out, env)
    summary = _label(shard2, out, env, append=True)
    _exactly(out, {f"{a}#n=1", f"{b}#n=1"})
    assert summary["complete"] and summary["rows_of_other_inputs"] == 1


@pytest.mark.ray
@pytest.mark.slow
def test_a_worker_node_killed_mid_run(env, tmp_path):
    """A 3-node loopback cluster of its own (subprocess); a worker node holding a live
    labeling actor is removed after the first commit, while work is left; the job
    finishes with every row. 36 inputs (each video three times): enough work that the
    actors are still busy when the first part is committed."""
    videos = env["videos"][:12]
    manifest = _csv(tmp_path / "in.csv", [f"{v},," for v in videos * 3])
    out, result = str(tmp_path / "out"), tmp_path / "result.json"
    script = ROOT / "tests" / "fixtures" / "label_node_loss.py"
    proc = subprocess.run(
        [sys.executable, str(script), manifest, out, env["checkpoint"], str(result)],
        capture_output=True,
        timeout=420,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert proc.returncode == 0, proc.stdout.decode()[-2000:] + proc.stderr.decode()[-4000:]
    report = json.loads(result.read_text())
    killed = report["killed"]
    assert killed.get("node") and killed["hosted"], report  # a node with a live actor
    assert killed["at"] < report["ended"], report  # removed mid-run
    assert killed["ledger_nodes"] == [killed["driver_node"]], report  # on the driver's node
    assert killed["parts_before"] * 2 < len(videos) * 3, report  # rows were left (2 a part)
    assert report["summary"]["complete"]
    rows = _exactly(out, {f"{v}#n={n}" for v in videos for n in (1, 2, 3)})
    assert (rows["status"] == STATUS_OK).all()
