"""Manifest readers on small files in the published formats, bad rows, class maps, Parquet."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from frameexit.errors import ManifestError
from frameexit.manifests import (
    BAD_ROW_COLUMNS,
    CORE_COLUMNS,
    class_map_uri_for,
    detect_format,
    load_manifest,
    normalize_split,
    read_class_names,
    read_manifest_parquet,
    to_arrow,
    write_class_names,
    write_manifest,
)

DATA = Path(__file__).parent / "data" / "manifests"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A private copy of the fixture files (loading writes classes.json beside them)."""
    out = tmp_path / "manifests"
    shutil.copytree(DATA, out)
    return out


def only(files: Path, name: str) -> Path:
    """Copy one fixture into a folder of its own (its own classes.json)."""
    folder = files / f"only_{name.replace('.', '_')}"
    folder.mkdir()
    shutil.copy(files / name, folder / name)
    return folder / name


def reasons(load) -> dict[int, str]:
    return dict(zip(load.bad_rows["line"].tolist(), load.bad_rows["reason"], strict=True))


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


# --------------------------------------------------------------------------- ActivityNet


def test_activitynet(files: Path) -> None:
    path = only(files, "activitynet_v1-3.json")
    load = load_manifest(str(path), video_root="s3://bucket/anet")
    assert load.fmt == "activitynet"
    table = load.table.set_index(load.table["video"].str.rsplit("/", n=1).str[-1])
    assert list(table.index) == [
        "v_--0edUL8zmA.mp4",
        "v_--1DO2V4K74.mp4",
        "v_--6bJUbfpnQ.mp4",
        "v_--mFXNrRZ5E.mp4",
    ]
    assert load.table["video"][0] == "s3://bucket/anet/v_--0edUL8zmA.mp4"
    assert load.class_names == ["Belly dance", "Dodgeball", "Rock climbing"]
    # untrimmed: a video carries the set of its annotation labels
    assert table.loc["v_--0edUL8zmA.mp4", "labels"] == ["Dodgeball"]
    assert table.loc["v_--1DO2V4K74.mp4", "labels"] == ["Belly dance", "Rock climbing"]
    assert table.loc["v_--1DO2V4K74.mp4", "label_ids"] == [0, 2]
    assert table["split"].tolist() == ["train", "train", "val", "test"]
    assert table.loc["v_--mFXNrRZ5E.mp4", "labels"] == []  # testing: no annotations
    assert table.loc["v_--0edUL8zmA.mp4", "duration"] == pytest.approx(92.696)
    assert table["start"].isna().all() and table["end"].isna().all()
    segments = table.loc["v_--0edUL8zmA.mp4", "segments"]
    assert segments[1] == {"label": "Dodgeball", "start": 60.1, "end": 80.0}
    assert table.loc["v_--6bJUbfpnQ.mp4", "url"].endswith("--6bJUbfpnQ")

    got = reasons(load)
    assert set(load.bad_rows.columns) == set(BAD_ROW_COLUMNS)
    expected = {
        "-0AUqN7LhGQ": "unparsable annotation 1 segment start 'abc'",
        "-0BZpQ2XOWc": "missing subset",
        "-0CZw4S2a9U": "no annotations in subset 'training'",
        "-0dvAxHB3Yk": "annotation 1: empty label",
        "-0eJ3cSfzHI": "annotation 1: segment end 12 <= start 30",
    }
    want = {line_of(path, f'"{vid}"'): reason for vid, reason in expected.items()}
    lines = path.read_text().splitlines()
    second = [n for n, text in enumerate(lines, start=1) if '"--6bJUbfpnQ"' in text][1]
    first = line_of(path, '"--6bJUbfpnQ"')
    want[second] = f"duplicate video id '--6bJUbfpnQ' (first at line {first})"
    assert got == want
    assert table.loc["v_--6bJUbfpnQ.mp4", "labels"] == ["Belly dance"]  # the first one kept
    assert "-0AUqN7LhGQ" in load.bad_rows["raw"][0]
    # the class map was built once and stored beside the manifest
    assert load.class_map_uri == str(path.parent / "classes.json")
    assert read_class_names(load.class_map_uri) == load.class_names


def test_activitynet_uri_pattern_and_default_root(files: Path) -> None:
    path = only(files, "activitynet_v1-3.json")
    load = load_manifest(str(path), uri_pattern="{root}/{split}/{id}.mkv")
    assert load.table["video"][0] == str(path.parent / "train" / "--0edUL8zmA.mkv")
    bad = load_manifest(str(path), uri_pattern="{root}/{nope}.mp4")
    assert bad.table.empty
    assert sum("needs unknown field 'nope'" in r for r in bad.bad_rows["reason"]) == 4


def test_activitynet_fatal_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"database": {\n  "a": {"subset": "training",\n}')
    with pytest.raises(ManifestError) as info:
        load_manifest(str(broken))
    assert info.value.uri == str(broken) and info.value.line == 3
    other = tmp_path / "other.json"
    other.write_text('{"videos": []}')
    with pytest.raises(ManifestError, match="database"):
        load_manifest(str(other))


# --------------------------------------------------------------------------- Kinetics


def test_kinetics_train(files: Path) -> None:
    path = files / "kinetics400_train.csv"
    load = load_manifest(str(path), video_root="/data/k400")
    assert load.fmt == "kinetics"
    table = load.table
    assert table["video"].tolist() == [
        "/data/k400/--07WQ2iBlw_000001_000011.mp4",
        "/data/k400/--0NTAs-fA0_000029_000039.mp4",
        "/data/k400/--1XtrvmsN0_000000_000010.mp4",
        "/data/k400/--33Lscn6sk_000004_000014.mp4",
        "/data/k400/--8Ru6ixP4k_000003_000013.mp4",
    ]
    assert load.class_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert table["labels"][2] == ["passing American football (in game)"]
    assert table["label_ids"].tolist() == [[0], [1], [2], [0], [2]]
    assert set(table["split"]) == {"train"}
    assert table["start"].isna().all()  # the files are trimmed clips
    assert table["duration"].tolist() == [10.0] * 5
    assert table["time_start"].tolist() == [1, 29, 0, 4, 3]
    assert table["is_cc"].tolist() == ["0", "0", "1", "0", "0"]
    assert reasons(load) == {
        6: "empty label",
        7: "unparsable time_start 'abc'",
        8: "time_end 185 <= time_start 185",
        9: "duplicate video in split 'train' (first at line 2)",
        10: "expected 6 fields, got 4",
    }
    assert load.bad_rows["raw"][0] == ",--3ouPhoy2A,20,30,train,0"


def test_kinetics_val_and_test_reuse_the_train_class_map(files: Path) -> None:
    train = load_manifest(str(files / "kinetics400_train.csv"))
    val = load_manifest(str(files / "kinetics400_val.csv"))
    assert val.class_names == train.class_names
    assert val.class_map_uri == str(files / "classes.json")
    assert val.table["label_ids"].tolist() == [[0], [1]]
    assert reasons(val) == {
        4: "label(s) ['zumba'] not in class map (3 classes)",
        5: "duplicate video in split 'val' (first at line 2)",
    }
    test = load_manifest(str(files / "kinetics400_test.csv"))  # no label column
    assert test.bad_rows.empty and len(test.table) == 2
    assert test.table["labels"].tolist() == [[], []]
    assert set(test.table["split"]) == {"test"}


def test_given_class_map_as_list_or_uri(files: Path, tmp_path: Path) -> None:
    path = only(files, "kinetics400_val.csv")
    load = load_manifest(str(path), class_names=["zumba", "abseiling"])
    assert load.table["label_ids"].tolist() == [[1], [0]]
    assert (
        list(reasons(load).values())[0] == "label(s) ['air drumming'] not in class map (2 classes)"
    )
    assert not (path.parent / "classes.json").exists()  # a given map is not copied
    stored = tmp_path / "map" / "classes.json"
    write_class_names(["air drumming", "zumba"], str(stored))
    load = load_manifest(str(path), class_names=str(stored))
    assert load.class_names == ["air drumming", "zumba"]
    assert load.table["label_ids"].tolist() == [[0], [1]]
    with pytest.raises(ManifestError, match="duplicate"):
        load_manifest(str(path), class_names=["a", "a"])


def test_kinetics_full_videos_pattern_sets_segment(files: Path) -> None:
    path = only(files, "mini_kinetics_val.csv")
    load = load_manifest(str(path), uri_pattern="{root}/{label}/{youtube_id}.mp4")
    assert load.fmt == "kinetics"
    row = load.table.iloc[0]
    assert row["video"] == str(path.parent / "abseiling" / "0wR5jVB-WPk.mp4")
    assert (row["start"], row["end"], row["duration"]) == (417.0, 427.0, 10.0)


def test_csv_with_bom_and_windows_newlines(files: Path, tmp_path: Path) -> None:
    text = (files / "kinetics400_train.csv").read_text()
    plain_dir, windows_dir = tmp_path / "plain", tmp_path / "windows"
    plain_dir.mkdir()
    windows_dir.mkdir()
    (plain_dir / "train.csv").write_text(text)
    (windows_dir / "train.csv").write_bytes(
        b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8")
    )
    assert (windows_dir / "train.csv").read_bytes().count(b"\r\n") == text.count("\n")
    a = load_manifest(str(plain_dir / "train.csv"), video_root="/v")
    b = load_manifest(str(windows_dir / "train.csv"), video_root="/v")
    assert b.fmt == "kinetics"  # detected through the BOM
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.bad_rows, b.bad_rows)


def test_quoted_multiline_field_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "k.csv"
    path.write_text(
        'label,youtube_id,time_start,time_end,split\n"two\nlines",aaa,0,10,train\n'
        "b,bbb,x,10,train\n"
    )
    load = load_manifest(str(path))
    assert load.table["labels"].tolist() == [["two\nlines"]]
    assert reasons(load) == {4: "unparsable time_start 'x'"}


# --------------------------------------------------------------------------- HVU


def test_hvu(files: Path) -> None:
    path = only(files, "HVU_Train_V1.0.csv")
    load = load_manifest(str(path), video_root="/hvu")
    assert load.fmt == "hvu"
    table = load.table
    assert table["labels"].tolist() == [
        ["climbing", "outdoor", "person", "sky"],
        ["dance", "indoor", "person"],
        ["person", "sky"],  # spaces stripped, repeated tag once
    ]
    assert load.class_names == ["climbing", "dance", "indoor", "outdoor", "person", "sky"]
    assert table["label_ids"].tolist() == [[0, 3, 4, 5], [1, 2, 4], [4, 5]]
    assert set(table["split"]) == {"train"}  # from the file name
    assert table["video"][0] == "/hvu/--07WQ2iBlw_000001_000011.mp4"
    assert reasons(load) == {
        4: "empty label (no Tags)",
        5: "unparsable time_start 'x'",
        7: "duplicate video in split 'train' (first at line 6)",
    }
    assert set(load_manifest(str(path), split="validation").table["split"]) == {"val"}


# --------------------------------------------------------------------------- plain CSV / Parquet


def test_plain_csv(files: Path) -> None:
    path = only(files, "plain.csv")
    elsewhere = ["/data/videos", "s3://bucket/videos"]
    load = load_manifest(str(path), allowed_prefixes=[str(path.parent), *elsewhere])
    assert load.fmt == "csv"
    table = load.table
    assert table["video"].tolist() == [
        str(path.parent / "clips" / "a.mp4"),  # relative: beside the manifest
        str(path.parent / "clips" / "b.mp4"),
        "/data/videos/c.mp4",
        "s3://bucket/videos/d.mp4",
    ]
    assert table["labels"].tolist() == [["cat"], ["dog"], ["cat"], []]
    assert load.class_names == ["cat", "dog"]
    assert table["split"].tolist() == ["train", "train", "val", "test"]
    assert (table["start"][1], table["end"][1], table["duration"][1]) == (1.5, 4.0, 2.5)
    assert table["note"].tolist() == ["first", "segment", "absolute", "unlabeled"]
    assert reasons(load) == {
        6: "missing video",
        7: "end 2 <= start 5",
        8: "unparsable start 'oops'",
    }
    rooted = load_manifest(str(path), video_root="s3://b/root/", allowed_prefixes=["s3://b/root"])
    assert rooted.table["video"][0] == "s3://b/root/clips/a.mp4"
    # by default a manifest on local disk reaches other local folders and buckets too;
    # data.allowed_prefixes narrows that: the rows pointing elsewhere are bad rows
    assert load_manifest(str(path)).table["video"].tolist() == table["video"].tolist()
    narrow = load_manifest(str(path), allowed_prefixes=[str(path.parent)])
    assert narrow.table["video"].tolist() == [str(path.parent / "clips" / f"{n}.mp4") for n in "ab"]
    assert reasons(narrow)[4].startswith("outside data.allowed_prefixes (/")
    assert reasons(narrow)[4].endswith(": /data/videos/c.mp4")


def test_label_less_manifest_for_labeling(files: Path) -> None:
    path = only(files, "labeling.csv")
    load = load_manifest(str(path), allowed_prefixes=[str(path.parent), "s3://bucket/unlabeled"])
    assert load.bad_rows.empty and load.class_names == []
    assert load.table["labels"].tolist() == [[], [], []]
    assert set(load.table["split"]) == {"unassigned"}
    assert not (path.parent / "classes.json").exists()  # nothing to map


def test_an_oversized_csv_field_fails_its_row_not_the_manifest(tmp_path: Path) -> None:
    """Python's csv stops at 131,072 characters a field: that row is bad, the rest read,
    even when the field is quoted over several lines that look like rows themselves."""
    big = "x" * 200_000
    quoted = '"' + 'he said ""hi""\nz.mp4,looks like a row\n' + "y" * 140_000 + '"'
    lines = [
        "video,note",
        "a.mp4,first",  # line 2
        f"b.mp4,{big}",  # line 3: unquoted
        f"c.mp4,{quoted}",  # lines 4-6: quoted, over three lines
        "d.mp4,after",  # line 7
        f"e.mp4,{'w' * 2_000_000}",  # line 8: far over the limit
        '"f.mp4","last, quoted"',  # line 9
    ]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    load = load_manifest(str(path))
    assert [Path(v).name for v in load.table["video"]] == ["a.mp4", "d.mp4", "f.mp4"]
    assert load.table["note"].tolist() == ["first", "after", "last, quoted"]
    assert reasons(load) == {n: "field too long (over 131072 characters)" for n in (3, 4, 8)}
    assert load.bad_rows["raw"].str.len().max() <= 500
    assert load.bad_rows["raw"][1].startswith('c.mp4,"he said')
    # the same as the last row of a file without a final newline, and in a Kinetics CSV
    path.write_text("\n".join(lines[:3]))
    assert reasons(load_manifest(str(path))) == {3: "field too long (over 131072 characters)"}
    kinetics = tmp_path / "kinetics_train.csv"
    kinetics.write_text(f"label,youtube_id,time_start,time_end\ncat,{big},1,2\ncat,abc,1,2\n")
    load = load_manifest(str(kinetics), video_root="/v", allowed_prefixes=["/v"])
    assert len(load.table) == 1 and reasons(load) == {2: "field too long (over 131072 characters)"}
    previous = csv.field_size_limit(10**9)  # another library raised the process-wide limit
    try:
        assert reasons(load_manifest(str(kinetics), video_root="/v", allowed_prefixes=["/v"]))
    finally:
        csv.field_size_limit(previous)


def test_plain_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "video": ["a.mp4", "b.mp4", "c.mp4", None],
            "labels": [["x", "y"], ["y"], [], ["x"]],
            "split": ["train", "val", None, "train"],
            "num_frames": [10, 20, None, 5],
            "score": [0.1, 0.2, 0.3, 0.4],
        }
    )
    path = tmp_path / "in.parquet"
    frame.to_parquet(path)
    load = load_manifest(str(path))
    assert load.fmt == "parquet"
    assert load.table["video"].tolist() == [str(tmp_path / n) for n in ("a.mp4", "b.mp4", "c.mp4")]
    assert load.table["label_ids"].tolist() == [[0, 1], [1], []]
    assert load.table["split"].tolist() == ["train", "val", "unassigned"]
    assert load.table["num_frames"].tolist() == [10, 20, pd.NA]
    assert load.table["score"].tolist() == [0.1, 0.2, 0.3]
    assert reasons(load) == {4: "missing video"}  # row number for Parquet


def test_parquet_with_label_ids_only_needs_a_class_map(tmp_path: Path) -> None:
    path = tmp_path / "ids.parquet"
    pd.DataFrame({"video": ["/a.mp4", "/b.mp4"], "label_ids": [[1], [5]]}).to_parquet(path)
    load = load_manifest(str(path), class_names=["p", "q"], allowed_prefixes=["/"])
    assert load.table["labels"].tolist() == [["q"]]
    assert reasons(load) == {2: "label_ids [5] not in class map"}


# --------------------------------------------------------------------------- Parquet form


def test_round_trip_through_parquet(files: Path, tmp_path: Path) -> None:
    for name in ("activitynet_v1-3.json", "kinetics400_train.csv", "HVU_Train_V1.0.csv"):
        load = load_manifest(str(only(files, name)))
        out = str(tmp_path / f"{name}.parquet")
        write_manifest(load.table, out)
        back = read_manifest_parquet(out)
        pd.testing.assert_frame_equal(back, load.table)
        # and the canonical Parquet is itself a manifest load_manifest reads
        write_class_names(load.class_names, class_map_uri_for(out))
        again = load_manifest(out)
        assert again.fmt == "parquet" and again.bad_rows.empty
        pd.testing.assert_frame_equal(again.table, load.table, check_dtype=False)


def test_round_trip_on_an_fsspec_uri(files: Path) -> None:
    load = load_manifest(str(only(files, "kinetics400_train.csv")))
    uri = "memory://frameexit-test-manifests/train.parquet"
    try:
        write_manifest(load.table, uri)
        pd.testing.assert_frame_equal(read_manifest_parquet(uri), load.table)
        fs = fsspec.filesystem("memory")
        with fs.open("/frameexit-test-manifests/train.csv", "wb") as handle:
            handle.write((files / "kinetics400_train.csv").read_bytes())
        remote = load_manifest("memory://frameexit-test-manifests/train.csv", video_root="/v")
        assert len(remote.table) == 5
        assert fs.exists("/frameexit-test-manifests/classes.json")
        assert remote.class_map_uri == "memory://frameexit-test-manifests/classes.json"
    finally:
        fsspec.filesystem("memory").rm("/frameexit-test-manifests", recursive=True)


def test_parquet_schema(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "video": ["/a.mp4"],
            "labels": [["x"]],
            "label_ids": [np.array([3])],
            "num_frames": [7],
            "difficulty": ["hard"],
            "segments": [[{"start": 1, "end": 2}]],
        }
    )
    table = to_arrow(frame)
    assert table.column_names[: len(CORE_COLUMNS)] == list(CORE_COLUMNS)
    assert str(table.schema.field("label_ids").type) == "list<item: int32>"
    assert str(table.schema.field("num_frames").type) == "int32"
    assert table.column("split").to_pylist() == ["unassigned"]
    assert table.column("start").to_pylist() == [None]
    path = str(tmp_path / "m.parquet")
    write_manifest(frame, path)
    back = read_manifest_parquet(path)
    assert back["segments"][0] == [{"start": 1, "end": 2}]
    assert back["label_ids"][0] == [3] and back["difficulty"][0] == "hard"


def test_write_manifest_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="video"):
        write_manifest(pd.DataFrame({"path": ["a"]}), str(tmp_path / "x.parquet"))
    with pytest.raises(ManifestError, match="differ in length"):
        write_manifest(
            pd.DataFrame({"video": ["a"], "labels": [["x", "y"]], "label_ids": [[0]]}),
            str(tmp_path / "x.parquet"),
        )
    with pytest.raises(ManifestError) as info:
        write_manifest(pd.DataFrame({"video": ["a", ""]}), str(tmp_path / "x.parquet"))
    assert info.value.line == 2
    assert not (tmp_path / "x.parquet").exists()


# --------------------------------------------------------------------------- errors, helpers


def test_unparsable_files_raise_naming_the_uri(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(ManifestError) as info:
        load_manifest(missing)
    assert info.value.uri == missing and missing in str(info.value)
    cases = {
        "empty.csv": b"",
        "binary.csv": b"video\n\xff\xfe\x00bad\n",
        "unknown.csv": b"a,b\n1,2\n",
        "bad.parquet": b"PAR1 this is not parquet",
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ManifestError) as info:
            load_manifest(str(path))
        assert info.value.uri == str(path), name
    with pytest.raises(ManifestError, match="missing column"):
        load_manifest(str(tmp_path / "unknown.csv"), fmt="kinetics")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        load_manifest(str(tmp_path / "unknown.csv"), fmt="ucf101")


def test_strict_raises_on_the_first_bad_row(files: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(str(only(files, "HVU_Train_V1.0.csv")), strict=True)
    assert info.value.line == 4 and "empty label" in info.value.reason


def test_detect_format_and_splits() -> None:
    assert detect_format("x/a.json", b"") == "activitynet"
    assert detect_format("x/a.bin", b'  {"database": {}}') == "activitynet"
    assert detect_format("x/a", b"PAR1....") == "parquet"
    assert detect_format("a.csv", b"Tags,youtube_id,time_start,time_end\n") == "hvu"
    assert detect_format("a.csv", b"label,youtube_id,time_start,time_end,split\n") == "kinetics"
    assert detect_format("a.csv", b"\xef\xbb\xbfvideo,label\n") == "csv"
    with pytest.raises(ManifestError):
        detect_format("a.csv", b"path,label\n")
    assert [normalize_split(s) for s in ("training", "Validation ", "testing", "holdout")] == [
        "train",
        "val",
        "test",
        "holdout",
    ]


def test_class_map_files(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"class_names": ["b", "a"]}))
    assert read_class_names(str(path)) == ["b", "a"]  # order is the id, never re-sorted
    path.write_text(json.dumps(["a", "a"]))
    with pytest.raises(ManifestError, match="duplicate"):
        read_class_names(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ManifestError):
        read_class_names(str(path))
    with pytest.raises(ManifestError, match="not found"):
        read_class_names(str(tmp_path / "none.json"))
    assert class_map_uri_for("s3://b/p/train.csv") == "s3://b/p/classes.json"
    assert class_map_uri_for(str(tmp_path / "m.csv")) == str(tmp_path / "classes.json")
    assert os.path.isabs(class_map_uri_for("relative/m.csv"))
