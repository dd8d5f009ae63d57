"""Corpus labeling (pipelines/label.py, pipelines/labeling/).

One labeling run of a mixed corpus (good videos, corrupt, truncated, zero-byte, missing,
non-video entries and unparsable manifest rows) on the session Ray cluster is shared by
the tests that read its output; the kill-and-rerun test and the S3 test make their own.
The model is a random tiny network whose gates are calibrated on the corpus so that the
videos exit at different steps (a random network's gates are otherwise near-constant).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures.kill import kill_label_run_after_parts

from frameexit.backbones import backbone_spec
from frameexit.checkpoint import load_model_checkpoint, save_model_checkpoint
from frameexit.config import load_config
from frameexit.flops import step_gflops
from frameexit.model import build_model
from frameexit.policy import get_policy
from frameexit.testing.clips import write_clip
from frameexit.transforms import frames_to_tensor
from frameexit.video import open_video
from pipelines import labeling
from pipelines.labeling import STATUS_BAD_ROW, STATUS_OK, read_labels, run_labeling

ROOT = Path(__file__).resolve().parents[1]
T = 6
MODEL_OVERRIDES = [
    "model.backbone=tiny",
    "model.feature_dim=128",
    "model.num_classes=3",
    f"model.num_steps={T}",
    "model.image_size=64",
]
RUN_OVERRIDES = [
    "label.batch_size=2",
    "label.part_size=3",
    "label.concurrency=2",
    "label.cpus_per_actor=0.5",
]
COMPARED = ["input_id", "video", "status", "label", "label_ids", "exit_step", "frames_decoded"]


# --------------------------------------------------------------------------- helpers


def _policy_frames(model, uri: str) -> torch.Tensor:
    """The model's T policy frames of a video, transformed: ``[T, 3, S, S]``."""
    m = model.cfg
    spec = backbone_spec(m.backbone)
    with open_video(uri) as reader:
        raw = reader.get(get_policy(m.policy)(reader.num_frames, m.num_steps))
    return frames_to_tensor(raw, image_size=m.image_size, mean=spec.mean, std=spec.std)


def _calibrated_model(cfg, videos: list[str]):
    """Random model whose gate g_t fires for about 40 % of the videos at each step, with a margin."""
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    frames = torch.stack([_policy_frames(model, v) for v in videos])
    with torch.no_grad():
        logits = model(frames).gate_logits
        for t, gate in enumerate(model.gates):
            column = logits[:, t]
            scale = 4.0 / column.std().clamp_min(1e-6)
            # cut halfway between two videos' logits (not at one of them: a video sitting
            # exactly on the 0.5 threshold would exit by float noise of the batch size)
            ordered = column.sort().values
            cut = (ordered[int(0.6 * len(ordered))] + ordered[int(0.6 * len(ordered)) - 1]) / 2
            gate.linear.weight.mul_(scale)
            gate.linear.bias.copy_((gate.linear.bias - cut) * scale)
    return model


def _per_video(model, uri: str, *, exit: bool = True):
    """The model's own early exit on one video (batch of 1)."""
    frames = _policy_frames(model, uri)
    return model.early_exit(lambda step, active: frames[step : step + 1], 1, exit=exit)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    return None if not isinstance(value, list) and pd.isna(value) else value


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal outputs: same ids, statuses, labels, exit steps, frames; scores to float noise."""
    a, b = a.set_index("input_id").sort_index(), b.set_index("input_id").sort_index()
    assert list(a.index) == list(b.index)
    for column in COMPARED[1:]:
        assert [_plain(v) for v in a[column]] == [_plain(v) for v in b[column]], column
    for x, y in zip(a["scores"], b["scores"], strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mixed(tiny_corpus, tmp_path_factory):
    """A plain-CSV manifest of good and bad entries, with the expected status of each."""
    root = tmp_path_factory.mktemp("mixed")
    good = tiny_corpus.table["video"].tolist()[:6]
    data = Path(good[0]).read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "zero.mp4").write_bytes(b"")
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "notes.txt").write_text("not a video\n" * 40)
    expected = {v: STATUS_OK for v in good}
    expected.update(
        {
            str(root / "truncated.mp4"): "truncated",
            str(root / "zero.mp4"): "empty",
            str(root / "random.mp4"): "not_video",
            str(root / "notes.txt"): "not_video",
            str(root / "missing.mp4"): "missing",
        }
    )
    lines = ["video,note"] + [f"{v},x" for v in expected]
    lines += [",no video here", "a,b,c", f"{good[0]},same video twice"]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, MODEL_OVERRIDES)
    model = _calibrated_model(cfg, good)
    checkpoint = str(root / "model.pt")
    save_model_checkpoint(model, cfg, checkpoint)
    return {
        "manifest": str(manifest),
        "expected": expected,
        "bad_rows": 2,  # the repeat of good[0] is an entry of its own (``#n=2``)
        "checkpoint": checkpoint,
        "good": good,
        "root": root,
    }


@pytest.fixture(scope="module")
def mixed_run(ray_cluster, mixed, tmp_path_factory):
    """One uninterrupted labeling run of the mixed corpus: (summary, output rows)."""
    out = str(tmp_path_factory.mktemp("labels") / "out")
    summary = run_labeling(
        mixed["manifest"],
        out,
        checkpoint=mixed["checkpoint"],
        overrides=RUN_OVERRIDES,
        progress=False,
    )
    return summary, read_labels(out), out


# --------------------------------------------------------------------------- tests


@pytest.mark.ray
def test_mixed_corpus_one_row_per_input_with_its_status(mixed, mixed_run):
    summary, rows, out = mixed_run
    entries = len(mixed["expected"]) + 1 + mixed["bad_rows"]  # + the repeat of good[0]
    assert summary["complete"] and summary["inputs"] == entries
    assert len(rows) == summary["inputs"] and rows["input_id"].is_unique
    videos = rows[rows["status"] != STATUS_BAD_ROW]
    assert dict(zip(videos["video"], videos["status"], strict=True)) == mixed["expected"]
    bad = rows[rows["status"] == STATUS_BAD_ROW]
    assert len(bad) == mixed["bad_rows"]
    assert all("line" in e for e in bad["error"])  # each names its manifest line
    repeats = rows[rows["video"] == mixed["good"][0]]
    assert sorted(repeats["input_id"]) == [f"{mixed['good'][0]}#n=1", f"{mixed['good'][0]}#n=2"]
    assert (repeats["status"] == STATUS_OK).all() and repeats["label"].nunique() == 1
    errors = videos[videos["status"] != STATUS_OK]
    assert errors["error"].str.len().gt(0).all() and errors["exit_step"].isna().all()
    assert (errors["frames_decoded"] == 0).all() and (errors["gflops"] == 0).all()
    ok = videos[videos["status"] == STATUS_OK]
    assert ok["error"].isna().all() and (ok["scores"].map(len) == 3).all()
    assert summary["run"]["errors_by_kind"] == {
        "empty": 1, "missing": 1, "not_video": 2, "truncated": 1
    }  # fmt: skip
    # the directory itself is a Parquet dataset of exactly these rows
    assert len(pd.read_parquet(out)) == len(rows)


@pytest.mark.ray
def test_early_exit_equals_the_models_own_per_video_inference(mixed, mixed_run):
    _, rows, _ = mixed_run
    model, cfg = load_model_checkpoint(mixed["checkpoint"])
    per_step = step_gflops(model, cfg.model.image_size).total
    ok = rows[rows["status"] == STATUS_OK]
    assert len(ok) == len(mixed["good"]) + 1  # good[0] is in the input twice
    steps = set()
    for row in ok.itertuples():
        own = _per_video(model, row.video)
        scores = own.scores[0]
        top = torch.argsort(scores, descending=True)[: cfg.label.top_k].tolist()
        assert row.exit_step == int(own.exit_step[0]) and row.frames_decoded == row.exit_step
        assert list(row.label_ids) == top and row.label == f"class_{top[0]}"
        np.testing.assert_allclose(row.scores, scores[top].numpy(), rtol=1e-4, atol=1e-6)
        assert row.gflops == pytest.approx(row.exit_step * per_step)
        steps.add(row.exit_step)
    assert len(steps) > 1, "the calibrated gates should let videos exit at different steps"


def test_labeler_without_exit_and_a_video_cut_short(mixed, tmp_path):
    """No Ray: all-T mode equals the model's forward at step T, and a video cut short
    (its header declares 48 frames, about 29 are present) is labeled from the frames present,
    with a warning saying so — not failed as ``truncated`` though most of it decodes. (A
    read that fails at a later step: ``tests/test_frameexit_inference.py``.)"""
    cut = str(tmp_path / "cut.mp4")
    write_clip(cut, num_frames=48, container_options={"movflags": "faststart"})
    data = Path(cut).read_bytes()
    Path(cut).write_bytes(data[: int(len(data) * 0.7)])
    model, cfg = load_model_checkpoint(mixed["checkpoint"])
    cfg.label.early_exit = False
    labeler = labeling.VideoLabeler(
        cfg,
        model.state_dict(),
        [],
        step_gflops=1.0,
    )
    videos = mixed["good"][:2] + [cut]
    batch = pd.DataFrame(
        {"row": [0, 1, 2], "input_id": videos, "video": videos, "start": np.nan, "end": np.nan}
    )
    rows = labeler.label(batch).to_pandas()
    assert list(rows["status"]) == [STATUS_OK] * 3
    assert list(rows["exit_step"]) == [T] * 3 and list(rows["gflops"]) == [T] * 3
    for row in rows[:2].itertuples():
        with torch.no_grad():
            step_t = model(_policy_frames(model, row.video)[None]).logits[0, -1].softmax(-1)
        np.testing.assert_allclose(row.scores, step_t[list(row.label_ids)].numpy(), rtol=1e-4)
    short = rows.iloc[2]
    present = int(short["num_frames"])  # ~29: the encoder's output size varies a little
    assert 20 <= present < 48 and short["frames_decoded"] == T
    assert f"declares 48 frames, {present} are present" in short["warning"]
    assert rows["warning"][:2].isna().all() and short["label"]
    # data.decode.backend=pyav (exact PyAV path for every file): the same rows
    cfg.data.decode = cfg.data.decode.replace(backend="pyav")
    exact = labeling.VideoLabeler(cfg, model.state_dict(), [], step_gflops=1.0)
    assert exact.cfg.data.decode.backend == "pyav"
    again = exact.label(batch).to_pandas()
    assert list(again["status"]) == list(rows["status"])
    assert list(again["label"][:2]) == list(rows["label"][:2])
    for x, y in zip(again["scores"][:2], rows["scores"][:2], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_parts_are_named_by_content_and_read_back_once(tmp_path):
    table = labeling.rows_to_table(
        [
            labeling.output_row(row=i, input_id=f"v{i}", video=f"v{i}", status=STATUS_OK)
            for i in range(3)
        ]
    )
    out = str(tmp_path / "out")
    first = labeling.write_part(out, table)
    again = labeling.write_part(out, table.slice(0, 3).take([2, 0, 1]))  # same rows, reordered
    assert first == again and len(labeling.list_parts(out)) == 1
    labeling.write_part(out, table.slice(1, 1))  # a racing writer committing a row again
    assert list(read_labels(out)["input_id"]) == ["v0", "v1", "v2"]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_compaction_never_deletes_the_part_it_just_wrote(tmp_path):
    """A rewritten part is named after the ids it keeps; when that is the name of another
    part the same compaction removes (its rows lost), the kept winner must survive.
    Parts: {x, y@2} (x loses), {y@1} (loses; its name is the rewrite's), {x@2}."""
    out = str(tmp_path / "out")

    def row(i: str, attempts: int) -> dict:
        return labeling.output_row(
            row=0 if i == "x" else 1, input_id=i, video=i, status=STATUS_OK,
            attempts=attempts, labels=[f"{i}@{attempts}"],
        )  # fmt: skip

    for rows in [[row("x", 1), row("y", 2)], [row("y", 1)], [row("x", 2)]]:
        labeling.write_part(out, labeling.rows_to_table(rows))
    assert len(labeling.list_parts(out)) == 3
    counts = labeling.compact(out, None, None)
    assert counts["rows_dropped"] == 2
    labels = read_labels(out).set_index("input_id")["labels"]
    assert {k: list(v) for k, v in labels.items()} == {"x": ["x@2"], "y": ["y@2"]}
    assert len(labeling.list_parts(out)) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_kill_midway_and_rerun_gives_the_rows_of_an_uninterrupted_run(
    ray_cluster, mixed, mixed_run, tmp_path
):
    out = str(tmp_path / "out")
    args = [
        "--input", mixed["manifest"], "--output", out, "--checkpoint", mixed["checkpoint"],
        "--no-progress", "label.batch_size=1", "label.part_size=2", *RUN_OVERRIDES[2:],
    ]  # fmt: skip
    kill_label_run_after_parts(args, out, ray_cluster["address"], parts=3)
    partial = read_labels(out)
    total = mixed_run[0]["inputs"]
    assert 0 < len(partial) < total and partial["input_id"].is_unique

    from pipelines.label import main

    summary = main(args)  # the same command, in this process (same cluster)
    assert summary["run"]["videos"] + summary["run"]["bad_manifest_rows"] == total - len(partial)
    _same_rows(read_labels(out), mixed_run[1])
    assert summary["complete"] and summary["total"]["videos"] == total


@pytest.mark.ray
@pytest.mark.s3
def test_s3_input_and_output(ray_cluster, moto_s3, mixed, mixed_run, tmp_path):
    local = tmp_path / "corpus"
    local.mkdir()
    for video in mixed["good"][:3]:
        shutil.copy(video, local / Path(video).name)
    (local / "zero.mp4").write_bytes(b"")
    shutil.copy(mixed["checkpoint"], local / "model.pt")
    bucket = moto_s3.create_bucket()
    from frameexit.storage import upload_dir, write_bytes

    opts = moto_s3.storage_options
    upload_dir(str(local), f"{bucket}/in", storage_options=opts)
    uris = [f"{bucket}/in/{Path(v).name}" for v in mixed["good"][:3]]
    uris += [f"{bucket}/in/zero.mp4", f"{bucket}/in/missing.mp4"]
    write_bytes(
        f"{bucket}/in/list.csv", ("video\n" + "\n".join(uris) + "\n").encode(), storage_options=opts
    )
    out = f"{bucket}/labels"
    summary = run_labeling(
        f"{bucket}/in/list.csv",
        out,
        checkpoint=f"{bucket}/in/model.pt",
        overrides=[*RUN_OVERRIDES, f"data.storage_options={json.dumps(opts)}"],
        progress=False,
    )
    assert summary["complete"]
    rows = read_labels(out, storage_options=opts)
    assert list(rows["video"]) == uris
    assert list(rows["status"]) == [STATUS_OK] * 3 + ["empty", "missing"]
    local_rows = mixed_run[1].drop_duplicates("video").set_index("video")  # good[0] twice
    for row in rows[:3].itertuples():
        same = local_rows.loc[next(v for v in mixed["good"] if v.endswith(Path(row.video).name))]
        assert row.exit_step == same["exit_step"] and list(row.label_ids) == list(same["label_ids"])
    fs = moto_s3.filesystem()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(out[5:]))
    assert "_labeling.json" in names and "_summary.json" in names
    assert all(n.startswith(("part-", "_")) for n in names)


def test_a_header_that_overstates_the_length_is_labeled_from_the_frames_present(mixed, tmp_path):
    """An AVI whose header declares 120 frames but holds 48 (real downloads do this): the
    policy runs over the 48 present frames, status ok, a warning says what was odd."""
    liar = str(tmp_path / "overstated.avi")
    write_clip(liar, codec="mjpeg", pix_fmt="yuvj420p", num_frames=48, avi_declared_frames=120)
    model, cfg = load_model_checkpoint(mixed["checkpoint"])
    labeler = labeling.VideoLabeler(cfg, model.state_dict(), [], step_gflops=1.0)
    batch = pd.DataFrame(
        {"row": [0], "input_id": [liar], "video": [liar], "start": np.nan, "end": np.nan}
    )
    (row,) = labeler.label(batch).to_pylist()
    assert row["status"] == STATUS_OK and row["num_frames"] == 48
    assert "declares 120 frames, 48 are present" in row["warning"]
    assert row["frames_decoded"] == row["exit_step"] >= 1


def test_a_video_over_the_size_limit_gets_a_final_too_large_row(mixed):
    """data.decode.max_bytes: refused before its bytes are read (no out-of-memory worker)."""
    model, cfg = load_model_checkpoint(mixed["checkpoint"])
    cfg.data.decode = cfg.data.decode.replace(max_bytes=1000)
    labeler = labeling.VideoLabeler(cfg, model.state_dict(), [], step_gflops=1.0)
    video = mixed["good"][0]
    batch = pd.DataFrame(
        {"row": [0], "input_id": [video], "video": [video], "start": np.nan, "end": np.nan}
    )
    (row,) = labeler.label(batch).to_pylist()
    assert row["status"] == "too_large" and not row["retryable"]
    assert "data.decode.max_bytes" in row["error"] and row["frames_decoded"] == 0
