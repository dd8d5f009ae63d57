"""`frameexit check` on a real local Ray cluster: one row per input with its status and
reason, a clean manifest training reads, and a rerun that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from frameexit.testing.clips import write_clip
from pipelines.check import main as check_main


@pytest.mark.ray
def test_check_a_corpus_with_every_kind_of_bad_file(ray_cluster, tiny_corpus, tmp_path):
    good = tiny_corpus.table["video"].tolist()[:4]
    data = Path(good[0]).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 40)
    liar = str(tmp_path / "overstated.avi")
    write_clip(liar, codec="mjpeg", pix_fmt="yuvj420p", num_frames=30, avi_declared_frames=90)
    expected = {v: "ok" for v in good}
    expected.update({
        str(tmp_path / "truncated.mp4"): "truncated", str(tmp_path / "zero.mp4"): "empty",
        str(tmp_path / "notes.mp4"): "not_video", str(tmp_path / "missing.mp4"): "missing",
        liar: "ok",
    })  # fmt: skip
    table = tiny_corpus.table.iloc[:1].copy()
    rows = pd.concat([table.assign(video=v) for v in expected], ignore_index=True)
    manifest = str(tmp_path / "in.parquet")
    rows.to_parquet(manifest, index=False)
    (tmp_path / "classes.json").write_text(json.dumps(list(tiny_corpus.class_names)))
    out = str(tmp_path / "checked")
    args = ["--manifest", manifest, "--output", out, "--no-progress", "data.decode_concurrency=2"]
    summary = check_main(args)
    assert summary["complete"] and summary["inputs"] == len(expected)
    checked = pd.read_parquet(Path(out) / "checked.parquet")
    assert len(checked) == len(expected)
    assert dict(zip(checked["video"], checked["status"], strict=True)) == expected
    bad = checked[checked["status"] != "ok"]
    assert bad["reason"].str.len().gt(0).all()
    ok = checked[checked["status"] == "ok"].set_index("video")
    assert (ok["width"] > 0).all() and (ok["fps"] > 0).all() and ok["codec"].notna().all()
    assert ok.loc[liar, "num_frames"] == 30 and "declares 90" in ok.loc[liar, "warning"]
    np.testing.assert_allclose(ok["duration"], ok["num_frames"] / ok["fps"])

    clean = str(Path(out) / "manifest.parquet")
    usable = pd.read_parquet(clean)
    assert sorted(usable["video"]) == sorted(v for v, s in expected.items() if s == "ok")
    assert (Path(out) / "classes.json").exists()
    by_status = pd.read_parquet(Path(out) / "summary.parquet").set_index("status")["count"]
    assert by_status.to_dict() == pd.Series(list(expected.values())).value_counts().to_dict()

    # training reads the clean manifest as it is, with the frame counts the check measured
    from frameexit.config import config_from_dict
    from pipelines.data import DecodeVideos, load_split

    cfg = config_from_dict({"model": {"backbone": "tiny", "num_classes": 3, "num_steps": 3,
                                      "image_size": 32, "feature_dim": 16},
                            "data": {"manifest": clean}})  # fmt: skip
    split = str(usable["split"].iloc[0])
    decoded = DecodeVideos(cfg, split, train=False)(load_split(cfg, split))
    assert sorted(decoded["num_frames"]) == sorted(
        usable[usable["split"] == split]["num_frames"].astype(int)
    )

    again = check_main(args)  # resumes: nothing left to open
    assert again["checked_this_run"] == 0 and again["complete"]

    # A rerun on the manifest reordered, with a row inserted: every video keeps its own
    # result (joined by input id, not by row number) and only the new one is opened.
    added = str(tmp_path / "added-missing.mp4")
    edited = pd.concat([rows.iloc[::-1], table.assign(video=added)], ignore_index=True)
    edited = pd.concat([edited.iloc[:2], edited.iloc[-1:], edited.iloc[2:-1]], ignore_index=True)
    edited.to_parquet(manifest, index=False)
    rerun = check_main(args)
    assert rerun["complete"] and rerun["checked_this_run"] == 1
    checked = pd.read_parquet(Path(out) / "checked.parquet")
    assert dict(zip(checked["video"], checked["status"], strict=True)) == {
        **expected, added: "missing"
    }  # fmt: skip
    assert list(checked["video"]) == list(edited["video"])  # the manifest's order now
    ok = checked[checked["status"] == "ok"].set_index("video")
    assert ok.loc[liar, "num_frames"] == 30
    usable = pd.read_parquet(clean)
    assert sorted(usable["video"]) == sorted(v for v, s in expected.items() if s == "ok")


@pytest.mark.ray
def test_the_clean_manifest_keeps_the_class_map_of_the_whole_corpus(
    ray_cluster, tiny_corpus, tmp_path
):
    # no classes.json beside the input; class "a" has only a missing video
    good = tiny_corpus.table["video"].tolist()[:2]
    rows = pd.DataFrame({
        "video": [str(tmp_path / "gone.mp4"), *good],
        "labels": [["a"], ["b"], ["c"]],
        "split": ["train"] * 3,
    })  # fmt: skip
    manifest = str(tmp_path / "plain.parquet")
    rows.to_parquet(manifest, index=False)
    out = tmp_path / "checked"
    summary = check_main(["--manifest", manifest, "--output", str(out), "--no-progress"])
    assert summary["usable"] == 2 and summary["by_status"] == {"missing": 1, "ok": 2}
    assert json.loads((out / "classes.json").read_text()) == ["a", "b", "c"]
    from frameexit.manifests import load_manifest

    clean = load_manifest(str(out / "manifest.parquet"))
    assert clean.class_names == ["a", "b", "c"]
    assert [list(ids) for ids in clean.table["label_ids"]] == [[1], [2]]


@pytest.mark.ray
def test_a_video_that_crashes_its_worker_is_isolated_in_a_large_task(
    ray_cluster, tiny_corpus, tmp_path
):
    """One task of 40 videos, one of which kills the worker checking it: the task is
    skipped, its videos are checked again in smaller tasks, and only that video ends
    `crashed`; the 39 others are `ok` and nothing is lost."""
    from frameexit.testing import hooks

    source = tiny_corpus.table["video"].tolist()[0]
    names = [f"v{i:02d}.mp4" for i in range(39)] + ["poison.mp4"]
    for name in names:
        (tmp_path / name).symlink_to(source)
    table = tiny_corpus.table.iloc[:1].copy()
    rows = pd.concat([table.assign(video=str(tmp_path / n)) for n in names], ignore_index=True)
    manifest = str(tmp_path / "in.parquet")
    rows.to_parquet(manifest, index=False)
    (tmp_path / "classes.json").write_text(json.dumps(list(tiny_corpus.class_names)))
    out = str(tmp_path / "checked")
    args = ["--manifest", manifest, "--output", out, "--no-progress",
            "data.decode_concurrency=2", "label.check_task_videos=40"]  # fmt: skip
    with hooks.switched_on({"check.kill_worker_on": "poison"}):
        summary = check_main(args)
    assert summary["complete"] and summary["inputs"] == 40
    checked = pd.read_parquet(Path(out) / "checked.parquet").set_index("video")
    assert len(checked) == 40
    assert checked.loc[str(tmp_path / "poison.mp4"), "status"] == "crashed"
    assert (checked.drop(index=str(tmp_path / "poison.mp4"))["status"] == "ok").all()


def test_check_tasks_are_bounded_whatever_the_corpus_size():
    from frameexit.config import load_config
    from pipelines.check import task_videos

    cfg = load_config(None, [])
    assert task_videos(10_000_000, cfg) == 1000  # was 625,000 at the default concurrency
    assert task_videos(100, cfg) == 8
    small = load_config(None, ["label.check_task_videos=5"])
    assert task_videos(10_000, small) == 5
