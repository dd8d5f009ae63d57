"""frameexit.manifests.prepare: published annotation layouts → one manifest training reads.

Each format comes from a fixture in its published layout (tests/data/manifests); the
videos it names are written as real clips (some left out on purpose), so the prepared
manifest is decoded by the training ingestion unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from frameexit.config import config_from_dict
from frameexit.errors import ConfigError, ManifestError
from frameexit.manifests import load_manifest, read_class_names
from frameexit.manifests.prepare import (
    folder_corpus,
    parse_input,
    prepare_manifest,
    prepare_options,
    split_overrides,
)
from frameexit.manifests.prepare import main as prepare_main
from frameexit.testing.clips import write_clip
from pipelines.common import run_command

DATA = Path(__file__).parent / "data" / "manifests"


def _clips(paths) -> None:
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_clip(str(path), num_frames=24, width=48, height=32)


def _decodes(manifest: str, split: str) -> int:
    """The training ingestion reads the prepared manifest as it is: decoded videos."""
    from pipelines.data import DecodeVideos, load_split

    names = read_class_names(str(Path(manifest).parent / "classes.json"))
    cfg = config_from_dict(
        {
            "model": {
                "backbone": "tiny",
                "num_classes": len(names),
                "num_steps": 3,
                "image_size": 32,
                "feature_dim": 16,
            },  # fmt: skip
            "data": {"manifest": manifest},
        }
    )
    rows = load_split(cfg, split)
    return len(DecodeVideos(cfg, split, train=False)(rows)["frames"])


def test_kinetics_csvs_one_per_split_share_one_class_map(tmp_path):
    # the videos in the prepared manifest's folder tree: training reads it with the
    # default data.allowed_prefixes (videos elsewhere need the prefix listed)
    videos = tmp_path / "prepared" / "videos"
    inputs = [f"{split}={DATA / f'kinetics400_{split}.csv'}" for split in ("train", "val", "test")]
    tables = {s: load_manifest(str(DATA / f"kinetics400_{s}.csv"), save_class_map=False,
                               video_root=str(videos)).table for s in ("train", "val", "test")}  # fmt: skip
    every = pd.concat(tables.values(), ignore_index=True)
    missing = every["video"].iloc[-1]  # one annotated video "vanished" from the bucket
    _clips(v for v in every["video"] if v != missing)
    out = str(tmp_path / "prepared" / "manifest.parquet")
    report = prepare_manifest(inputs, out, video_root=str(videos))
    manifest = pd.read_parquet(out)
    assert report.summary()["missing_videos"] == 1 and missing not in set(manifest["video"])
    assert sorted(report.rows_per_split) == ["test", "train", "val"]
    names = read_class_names(str(tmp_path / "prepared" / "classes.json"))
    assert names == sorted(names) and set(names) >= {
        lab for ls in tables["val"]["labels"] for lab in ls
    }
    # the same class keeps its id in every split, a class absent from val included
    for row in manifest.itertuples():
        assert [names[i] for i in row.label_ids] == list(row.labels)
    val_classes = {lab for ls in manifest[manifest["split"] == "val"]["labels"] for lab in ls}
    assert set(names) - val_classes, "the fixture should have a class absent from val"
    assert _decodes(out, "train") == report.rows_per_split["train"]
    written = json.loads((tmp_path / "prepared" / "prepare_report.json").read_text())
    assert written["missing_videos"] == 1


def test_activitynet_json_video_level_and_segment_level(tmp_path):
    source = load_manifest(str(DATA / "activitynet_v1-3.json"), save_class_map=False,
                           video_root=str(tmp_path / "v"))  # fmt: skip
    _clips(source.table["video"])
    video_level = str(tmp_path / "video-level.parquet")  # the videos in its folder tree
    report = prepare_manifest([str(DATA / "activitynet_v1-3.json")], video_level,
                              video_root=str(tmp_path / "v"))  # fmt: skip
    videos = pd.read_parquet(video_level)
    assert len(videos) == len(source.table) and videos["video"].is_unique
    assert set(report.rows_per_split) <= {"train", "val", "test"}
    segment_level = str(tmp_path / "segment-level.parquet")
    prepare_manifest([str(DATA / "activitynet_v1-3.json")], segment_level,
                     video_root=str(tmp_path / "v"), level="segment")  # fmt: skip
    segments = pd.read_parquet(segment_level)
    annotated = sum(len(s) for s in source.table["segments"])
    assert len(segments[segments["start"].notna()]) == annotated
    several = segments.groupby("video").size().max()
    assert several >= 2, "the fixture has a video with several segments: several rows"
    assert (segments.dropna(subset=["start"])["labels"].map(len) == 1).all()
    assert _decodes(segment_level, "train") == (segments["split"] == "train").sum()


def test_hvu_tags_and_a_duplicate_row(tmp_path):
    hvu = tmp_path / "hvu_train.csv"
    shutil.copy(DATA / "HVU_Train_V1.0.csv", hvu)
    table = load_manifest(str(hvu), save_class_map=False, video_root=str(tmp_path / "v"),
                          duplicates="keep").table  # fmt: skip
    _clips(set(table["video"]))
    once = prepare_manifest([str(hvu)], str(tmp_path / "a" / "m.parquet"),
                            video_root=str(tmp_path / "v"))  # fmt: skip
    lines = hvu.read_text().splitlines()
    hvu.write_text("\n".join([*lines, lines[1]]) + "\n")  # the first row once more
    twice = prepare_manifest([str(hvu)], str(tmp_path / "b" / "m.parquet"),
                             video_root=str(tmp_path / "v"))  # fmt: skip
    assert twice.duplicates == once.duplicates + 1  # reported, not silently dropped
    manifest = pd.read_parquet(tmp_path / "b" / "m.parquet")
    assert len(manifest) == sum(once.rows_per_split.values())
    assert (manifest["labels"].map(len) > 1).any()  # multi-label tags
    assert set(manifest["split"]) == {"train"}  # from the file name


@pytest.mark.s3
def test_a_bucket_prefix_whose_folders_are_classes(moto_s3, s3_bucket, tmp_path):
    local = tmp_path / "corpus"
    _clips([local / "train" / "dog" / "a.mp4", local / "train" / "cat" / "b.mp4",
            local / "val" / "dog" / "c.mp4"])  # fmt: skip
    from frameexit.storage import upload_dir

    upload_dir(str(local), f"{s3_bucket}/corpus", storage_options=moto_s3.storage_options)
    found = folder_corpus(f"{s3_bucket}/corpus", storage_options=moto_s3.storage_options)
    assert sorted(zip(found["split"], found["labels"].map(tuple), strict=True)) == [
        ("train", ("cat",)), ("train", ("dog",)), ("val", ("dog",))
    ]  # fmt: skip
    out = f"{s3_bucket}/prepared/manifest.parquet"
    report = prepare_manifest([f"{s3_bucket}/corpus"], out, storage_options=moto_s3.storage_options)
    assert report.classes == ["cat", "dog"] and report.rows_per_split == {"train": 2, "val": 1}
    fs = moto_s3.filesystem()
    assert fs.exists(f"{s3_bucket[5:]}/prepared/classes.json")


def test_inputs_name_their_split():
    assert parse_input("val=s3://b/x.csv") == ("s3://b/x.csv", "val")
    assert parse_input("s3://b/x.csv") == ("s3://b/x.csv", None)
    assert parse_input("/data/train=1.csv") == ("/data/train=1.csv", None)


def test_segment_level_rejects_bad_segments_row_by_row(tmp_path):
    """Negative, inverted, null, NaN bounds and an unknown label: each a bad row with its
    reason (they were written as they were, or failed the run with TypeError/KeyError)."""
    _clips([tmp_path / "v" / "a.mp4", tmp_path / "v" / "b.mp4"])
    segments = [
        [{"label": "run", "start": 1.0, "end": 3.0},  # good
         {"label": "run", "start": -2.0, "end": 1.0},  # negative
         {"label": "jump", "start": 5.0, "end": 4.0},  # inverted
         {"label": "jump", "start": 2.0, "end": 2.0}],  # empty
        [{"label": "jump", "start": None, "end": 4.0},  # null start
         {"label": "run", "start": float("nan"), "end": 4.0},  # NaN
         {"label": "swim", "start": 0.0, "end": 1.0},  # unknown label
         {"label": "jump", "start": 0.5, "end": 1.5}],  # good
    ]  # fmt: skip
    source = tmp_path / "annotations.parquet"
    records = [
        {"video": f"v/{name}.mp4", "labels": ["run", "jump"], "split": "train", "segments": s}
        for name, s in zip("ab", segments, strict=True)
    ]
    pq.write_table(pa.Table.from_pylist(records), source)  # pyarrow keeps NaN (pandas: null)
    out = tmp_path / "segments.parquet"
    code = run_command(prepare_main, [str(source), "--output", str(out), "--level", "segment"])
    assert code == 0
    written = pd.read_parquet(out)
    assert sorted(zip(written["start"], written["end"], strict=True)) == [(0.5, 1.5), (1.0, 3.0)]
    bad = pd.read_parquet(tmp_path / "prepare_bad_rows.parquet")
    assert len(bad) == 6 and set(bad["source"]) == {str(source)}
    found = " | ".join(bad["reason"])
    for reason in (
        "segment 2 start -2.0 (must be a finite number >= 0)",
        "segment 3: end 4 <= start 5",
        "segment 4: end 2 <= start 2",
        "missing segment 1 start",
        "missing segment 2 start",  # NaN: no bound, as is_missing reads it
        "segment 3: label 'swim' is not in the class map",
    ):
        assert reason in found, reason
    assert json.loads((tmp_path / "prepare_report.json").read_text())["bad_rows"] == 6


def test_prepare_options_parse_like_the_other_commands(tmp_path):
    assert split_overrides(["train=a.csv", "data.storage_options.key=K", "b.csv", "val=s3://b/x.csv", "/d/a.b=1.csv",
                            "data.allowed_prefixes=[s3://b/v]"]) == (
        ["train=a.csv", "b.csv", "val=s3://b/x.csv", "/d/a.b=1.csv"],
        ["data.storage_options.key=K", "data.allowed_prefixes=[s3://b/v]"],
    )  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  storage_options: {key: K, secret: S}\n  allow_http: true\n")
    options, allowed, http = prepare_options(str(config), ["data.storage_options.secret=T"],
                                             '{"endpoint_url": "http://e"}')  # fmt: skip
    assert options == {"key": "K", "secret": "T", "endpoint_url": "http://e"} and http
    assert prepare_options(None, []) == ({}, [], False)
    with pytest.raises(ConfigError, match="data.storage_options") as info:
        prepare_options(None, [], '{"secret": "sup3r-s3cret",')
    assert "sup3r" not in str(info.value)


@pytest.mark.s3
def test_prepare_takes_credentials_from_config_overrides_or_environment(
    seaweedfs_s3, tmp_path, monkeypatch
):
    """Against a server that enforces credentials: --config, data.storage_options.*
    overrides and the ambient environment all work, as for the other commands."""
    import s3fs

    bucket = seaweedfs_s3.create_bucket()
    fs = seaweedfs_s3.filesystem()
    _clips([tmp_path / "v" / "dog" / "a.mp4", tmp_path / "v" / "cat" / "b.mp4"])
    fs.put(str(tmp_path / "v") + "/", f"{bucket[5:]}/corpus/", recursive=True)
    server = seaweedfs_s3
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data:\n  storage_options:\n    key: {server.key}\n    secret: {server.secret}\n"
        f"    endpoint_url: {server.endpoint_url}\n"
    )
    overrides = [f"data.storage_options.key={server.key}",
                 f"data.storage_options.secret={server.secret}",
                 f"data.storage_options.endpoint_url={server.endpoint_url}"]  # fmt: skip
    for name, extra in (("config", ["--config", str(config)]), ("overrides", overrides)):
        out = f"{bucket}/{name}/manifest.parquet"
        assert run_command(prepare_main, [f"{bucket}/corpus", "--output", out, *extra]) == 0
        assert fs.exists(f"{out[5:]}")
    wrong = [*overrides[:1], "data.storage_options.secret=wrong-secret", overrides[2]]
    out = f"{bucket}/wrong/manifest.parquet"
    assert run_command(prepare_main, [f"{bucket}/corpus", "--output", out, *wrong]) != 0
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    out = f"{bucket}/env/manifest.parquet"
    assert run_command(prepare_main, [f"{bucket}/corpus", "--output", out]) == 0
    assert fs.exists(f"{out[5:]}")


# --- dead ends: videos under another name, a header of another format, warnings -------


def _kinetics_videos_by_id(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    """kinetics400_train.csv and its videos downloaded as ``{youtube_id}.mp4`` (full
    videos, as youtube-dl names them), in a folder of their own."""
    csv = tmp_path / "k400" / "train.csv"
    csv.parent.mkdir(parents=True)
    shutil.copy(DATA / "kinetics400_train.csv", csv)
    table = load_manifest(str(csv), save_class_map=False, duplicates="keep").table
    videos = tmp_path / "k400" / "videos"
    _clips(videos / f"{youtube_id}.mp4" for youtube_id in table["youtube_id"])
    return csv, videos, table


def test_videos_named_by_id_fail_with_both_reports_and_the_uri_pattern_that_fits(tmp_path):
    csv, videos, table = _kinetics_videos_by_id(tmp_path)
    out = tmp_path / "out" / "manifest.parquet"
    argv = [str(csv), "--video-root", str(videos), "--output", str(out)]
    assert run_command(prepare_main, argv) == 2  # no usable row
    assert not out.exists()
    missing = pd.read_parquet(out.parent / "prepare_missing_videos.parquet")
    # every row after duplicates are dropped (a duplicate is counted, not a missing video)
    assert len(missing) == len(table) - report_duplicates(out) and len(missing)
    assert set(missing["source"]) == {str(csv)}
    bad = pd.read_parquet(out.parent / "prepare_bad_rows.parquet")
    assert len(bad) >= 1  # the fixture's unparsable rows, reported even so
    report = json.loads((out.parent / "prepare_report.json").read_text())
    hint = report["uri_pattern_hints"][str(csv)]
    assert f"{len(table)} of its {len(table)} rows" in hint
    assert "--uri-pattern '{root}/{youtube_id}.mp4'" in hint
    with pytest.raises(ManifestError, match=r"\{root\}/\{youtube_id\}\.mp4"):
        prepare_manifest([str(csv)], str(out), video_root=str(videos))
    # the hinted pattern works: full videos, the clip's times become the segment
    fixed = [*argv, "--uri-pattern", "{root}/{youtube_id}.mp4"]
    assert run_command(prepare_main, fixed) == 0
    manifest = pd.read_parquet(out)
    assert set(manifest["youtube_id"]) == set(table["youtube_id"])
    assert manifest["start"].notna().all()
    assert len(pd.read_parquet(out.parent / "prepare_missing_videos.parquet")) == 0


def report_duplicates(manifest: Path) -> int:
    return json.loads((manifest.parent / "prepare_report.json").read_text())["duplicates"]


def test_class_folder_layouts_and_other_containers_are_hinted(tmp_path):
    csv = tmp_path / "train.csv"
    shutil.copy(DATA / "kinetics400_train.csv", csv)
    table = load_manifest(str(csv), save_class_map=False).table
    videos = tmp_path / "videos"
    for row in table.itertuples():
        name = f"{row.youtube_id}_{int(row.time_start):06d}_{int(row.time_end):06d}.mkv"
        path = videos / row.labels[0] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x1aE\xdf\xa3")  # listed, never opened
    with pytest.raises(ManifestError) as error:
        prepare_manifest([str(csv)], str(tmp_path / "m.parquet"), video_root=str(videos))
    assert "'{root}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mkv'" in str(error.value)


def test_activitynet_videos_without_the_v_prefix_are_hinted(tmp_path):
    source = DATA / "activitynet_v1-3.json"
    table = load_manifest(str(source), save_class_map=False, video_root=str(tmp_path)).table
    videos = tmp_path / "videos"
    videos.mkdir()
    for uri in table["video"]:
        (videos / Path(uri).name.removeprefix("v_")).write_bytes(b"")
    with pytest.raises(ManifestError, match=r"--uri-pattern '\{root\}/\{id\}\.mp4'"):
        prepare_manifest([str(source)], str(tmp_path / "m.parquet"), video_root=str(videos))


def test_both_reports_are_written_when_nothing_is_left_out(tmp_path):
    csv, videos, table = _kinetics_videos_by_id(tmp_path)
    clean = csv.parent / "clean.csv"
    good = [line for line in csv.read_text().splitlines() if ",x," not in line]
    lines = [good[0], *(f"abseiling,{y},0,10,train,0" for y in table["youtube_id"])]
    clean.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "manifest.parquet"
    prepare_manifest([str(clean)], str(out), video_root=str(videos),
                     uri_pattern="{root}/{youtube_id}.mp4")  # fmt: skip
    assert len(pd.read_parquet(out.parent / "prepare_bad_rows.parquet")) == 0
    assert len(pd.read_parquet(out.parent / "prepare_missing_videos.parquet")) == 0


def test_a_header_of_another_format_is_refused_naming_both(tmp_path, caplog):
    hvu, kinetics = DATA / "HVU_Train_V1.0.csv", DATA / "kinetics400_train.csv"
    out = tmp_path / "m.parquet"
    with pytest.raises(ManifestError) as error:
        prepare_manifest([str(hvu)], str(out), fmt="kinetics", check_videos=False)
    message = str(error.value)
    assert "label,youtube_id,time_start,time_end" in message  # expected
    assert "Tags,youtube_id,time_start,time_end" in message  # found
    assert "--format hvu" in message
    with pytest.raises(ManifestError, match="expected columns Tags,youtube_id"):
        prepare_manifest([str(kinetics)], str(out), fmt="hvu", check_videos=False)
    with pytest.raises(ManifestError, match="does not fit format 'activitynet'"):
        prepare_manifest([str(kinetics)], str(out), fmt="activitynet", check_videos=False)
    argv = [str(hvu), "--format", "kinetics", "--no-check-videos", "--output", str(out)]
    assert run_command(prepare_main, argv) == 2
    assert not out.exists()
    # a Kinetics test list without labels still reads as Kinetics
    assert prepare_manifest([str(DATA / "kinetics400_test.csv")], str(out), fmt="kinetics",
                            check_videos=False).rows_per_split == {"test": 2}  # fmt: skip


def test_each_bad_row_is_warned_about_once(tmp_path, caplog):
    csv, videos, _ = _kinetics_videos_by_id(tmp_path)
    bad = load_manifest(str(csv), save_class_map=False).bad_rows
    assert len(bad)
    first_reason = str(bad.iloc[0]["reason"])
    out = tmp_path / "out" / "manifest.parquet"
    caplog.clear()  # the direct loads above warn on their own
    with caplog.at_level(logging.INFO, logger="frameexit"):
        prepare_manifest([str(csv)], str(out), video_root=str(videos),
                         uri_pattern="{root}/{youtube_id}.mp4")  # fmt: skip
    mentions = [r for r in caplog.records if first_reason in r.getMessage()]
    assert len(mentions) == 1, [r.getMessage() for r in mentions]
    assert "prepare_bad_rows.parquet" in mentions[0].getMessage()
