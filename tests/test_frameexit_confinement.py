"""Manifests that reach outside the data (issue 20, item 7): where a row may point.

A row outside the allowed prefixes, a ``..`` above the video root, plain http(s) and
link-local / cloud metadata hosts become bad rows with their reason, before anything is
opened; real files on disk and a real S3 server (moto) where the remote rule matters.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from frameexit.confinement import (
    MAX_URI_CHARS,
    Confinement,
    Refused,
    join_under,
    metadata_address,
    place_of,
)
from frameexit.errors import ConfigError
from frameexit.manifests import load_manifest
from frameexit.testing.clips import write_clip
from pipelines.labeling.inputs import read_inputs


def _refusal(uri: str, prefixes: list[str], *, allow_http: bool = False) -> str | None:
    return Confinement.for_manifest(
        "s3://unused/m.csv", allowed_prefixes=prefixes, allow_http=allow_http
    ).refusal(uri)


# --------------------------------------------------------------------------- the rule


def test_prefixes_compare_normalised_uris_by_whole_components() -> None:
    prefixes = ["s3://bucket/videos"]
    assert _refusal("s3://bucket/videos/x.mp4", prefixes) is None
    assert _refusal("s3://bucket/videos/sub/./x.mp4", prefixes) is None
    assert _refusal("s3a://bucket/videos/x.mp4", prefixes) is None  # the same store
    assert _refusal("s3://bucket/videos-private/x.mp4", prefixes) is not None
    assert _refusal("s3://bucket/videos/../secret/x.mp4", prefixes) is not None
    assert _refusal("s3://bucket/x.mp4", prefixes) is not None
    assert _refusal("gs://bucket/videos/x.mp4", prefixes) is not None
    assert _refusal("s3://other-bucket/x.mp4", prefixes) == (
        "outside data.allowed_prefixes (s3://bucket/videos): s3://other-bucket/x.mp4"
    )
    local = ["/data/videos/"]
    assert _refusal("/data/videos/a.mp4", local) is None
    assert _refusal("file:///data/videos/a.mp4", local) is None
    for outside in (
        "/data/videos-private/a.mp4",
        "/data/videos/../../etc/passwd",
        "file:///root/.aws/credentials",
        "FILE:///root/.aws/credentials",
        "local:///etc/passwd",
        "s3://data/videos/a.mp4",
    ):
        assert _refusal(outside, local), outside
    assert place_of("s3://Bucket/a//b/../c.mp4") == place_of("s3://bucket/a/c.mp4")


def test_what_is_never_a_video_uri() -> None:
    everything = ["/", "s3://bucket"]
    assert "chained" in _refusal("simplecache::s3://bucket/x.mp4", everything)
    assert "chained" in _refusal("zip://a.mp4::s3://bucket/x.zip", everything)
    assert "control character" in _refusal("/data/a\nb.mp4", everything)
    assert "too long" in _refusal("/" + "a" * MAX_URI_CHARS, everything)
    assert "no bucket" in _refusal("s3:///x.mp4", everything)


def test_dot_dot_never_climbs_above_the_video_root() -> None:
    assert join_under("/data/videos", "a/../b.mp4") == "/data/videos/b.mp4"
    assert join_under("s3://b/videos/", "./x/y.mp4") == "s3://b/videos/x/y.mp4"
    for climbing in ("../../etc/passwd", "a/../../x.mp4", "..", "./../x"):
        with pytest.raises(Refused, match="climbs above the video root"):
            join_under("/data/videos", climbing)


def test_plain_http_needs_allow_http_and_metadata_hosts_never_pass() -> None:
    url = "http://videos.example.com/a.mp4"
    assert "data.allow_http is false" in _refusal(url, [])
    assert "data.allow_http is false" in _refusal("https://127.0.0.1/a.mp4", [])
    assert _refusal("http://127.0.0.1:9/a.mp4", [], allow_http=True) is None
    # with listed prefixes an http URL must also lie under one of them
    assert _refusal("https://cdn.example.com/v/a.mp4", ["https://cdn.example.com/v"], allow_http=True) is None  # fmt: skip
    assert _refusal("https://127.0.0.1/v/a.mp4", ["https://cdn.example.com/v"], allow_http=True)
    metadata = [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://169.254.170.2/v2/credentials",  # ECS task role
        "http://[fe80::1]/x",
        "http://[fe80::a9fe:a9fe%25eth0]/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[64:ff9b::a9fe:a9fe]/x",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./computeMetadata/v1/",
        "http://100.100.100.200/latest/meta-data/",
        "http://2852039166/latest/",  # 169.254.169.254 as one number
        "http://0xa9.0xfe.0xa9.0xfe/latest/",
        "http://user:pw@169.254.169.254:80/latest/",
        "ftp://169.254.169.254/x",
    ]
    for uri in metadata:
        why = _refusal(uri, [], allow_http=True)
        assert why and "metadata" in why and "never allowed" in why, (uri, why)
        # refused even when listed
        assert _refusal(uri, [uri.rsplit("/", 1)[0]], allow_http=True), uri
    assert metadata_address("localhost") is None  # resolves to loopback: not metadata


def test_the_default_rule_and_bad_prefixes() -> None:
    remote = Confinement.for_manifest("s3://b/k400/manifest.parquet")
    assert remote.refusal("s3://b/videos/a.mp4") is None  # the manifest's own bucket
    assert remote.refusal("s3://c/videos/a.mp4").startswith("outside data.allowed_prefixes")
    assert remote.refusal("/etc/passwd")
    assert remote.refusal("file:///data/a.mp4")  # a remote manifest never names local files
    rooted = Confinement.for_manifest("s3://ann/train.csv", video_root="s3://videos/k400")
    assert rooted.refusal("s3://videos/k400/a.mp4") is None  # the video root given with it
    assert rooted.refusal("s3://videos/other/a.mp4")
    # a manifest on local disk: any local path but system and hidden ones, any bucket
    local = Confinement.for_manifest("/ann/train.csv")
    assert local.refusal("/ann/sub/a.mp4") is None and local.refusal("/data/k400/a.mp4") is None
    assert local.refusal("s3://videos/a.mp4") is None
    for uri in ("/etc/passwd", "file:///root/.aws/credentials", "/home/u/.ssh/id_rsa",
                "/proc/self/environ", "/data/.env", "/ann/../etc/shadow"):  # fmt: skip
        why = local.refusal(uri)
        assert why and "not read by default" in why, (uri, why)
    assert local.refusal("http://example.com/a.mp4")  # http stays refused
    with pytest.raises(ConfigError) as info:
        load_manifest("/nonexistent.csv", allowed_prefixes=["simplecache::s3://b/"])
    assert info.value.field == "data.allowed_prefixes"


def test_the_synthetic_default_corpus_is_allowed_from_anywhere(tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("FRAMEEXIT_DATA", str(data))
    video = data / "synthetic-default" / "videos" / "v0.mp4"
    elsewhere = Confinement.for_manifest(str(tmp_path / "runs" / "check" / "manifest.parquet"))
    assert elsewhere.refusal(str(video)) is None
    remote = Confinement.for_manifest("s3://b/manifest.parquet")
    assert remote.refusal(str(video)) is None
    assert remote.refusal(str(data / "other" / "v0.mp4"))


# --------------------------------------------------------------------------- manifests


HOSTILE = [
    "../../etc/passwd",
    "clips/../../../etc/passwd",
    "file:///root/.aws/credentials",
    "/etc/passwd",
    "/nonexistent/dir/x.mp4",
    "s3://other-bucket/x.mp4",
    "http://169.254.169.254/latest/meta-data/",
    "https://example.com/a.mp4",
]


def test_hostile_rows_are_bad_rows_with_their_reason(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    (folder / "videos" / "clips").mkdir(parents=True)
    write_clip(str(folder / "videos" / "clips" / "ok.mp4"), num_frames=8)
    manifest = folder / "manifest.csv"
    manifest.write_text("video\nclips/ok.mp4\n" + "\n".join(HOSTILE) + "\n")
    loaded = load_manifest(str(manifest), video_root=str(folder / "videos"))
    # a manifest on local disk may name other local folders and buckets by default
    assert loaded.table["video"].tolist() == [
        str(folder / "videos" / "clips" / "ok.mp4"), "/nonexistent/dir/x.mp4",
        "s3://other-bucket/x.mp4",
    ]  # fmt: skip
    reasons = dict(zip(loaded.bad_rows["line"], loaded.bad_rows["reason"], strict=True))
    assert sorted(reasons) == [3, 4, 5, 6, 9, 10]
    assert "climbs above the video root" in reasons[3] and "climbs above" in reasons[4]
    assert reasons[5].startswith("the hidden directory .aws is not read by default")
    assert reasons[6].startswith("the system directory /etc is not read by default")
    assert "metadata" in reasons[9] and "data.allow_http is false" in reasons[10]
    strict = load_manifest(str(manifest), video_root=str(folder / "videos"),
                           allowed_prefixes=[str(folder / "videos")])  # fmt: skip
    reasons = dict(zip(strict.bad_rows["line"], strict.bad_rows["reason"], strict=True))
    assert len(reasons) == len(HOSTILE)
    for line in (5, 6, 7, 8):
        assert reasons[line].startswith("outside data.allowed_prefixes (/"), reasons[line]
    # listing the prefixes lets the same rows through, never the metadata host nor a
    # climb above the root; with listed prefixes an http URL must be under one of them
    opened = load_manifest(str(manifest), video_root=str(folder / "videos"),
                           allowed_prefixes=["/", "s3://other-bucket"], allow_http=True)  # fmt: skip
    assert sorted(opened.bad_rows["line"]) == [3, 4, 9, 10]
    assert opened.bad_rows["reason"].iloc[-1].startswith("outside data.allowed_prefixes (/, ")
    web = load_manifest(str(manifest), video_root=str(folder / "videos"), allow_http=True)
    assert 10 not in set(web.bad_rows["line"]) and 9 in set(web.bad_rows["line"])


def test_kinetics_ids_cannot_climb_out_of_the_video_root(tmp_path: Path) -> None:
    manifest = tmp_path / "kinetics_train.csv"
    manifest.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "cat,abc,1,11,train\n"
        "cat,../../../etc/x,1,11,train\n"
    )
    loaded = load_manifest(str(manifest), video_root=str(tmp_path / "v"), save_class_map=False)
    assert len(loaded.table) == 1
    assert "climbs out of the video root" in loaded.bad_rows["reason"][0]


def test_labeling_and_check_inputs_never_tell_what_exists_outside(tmp_path: Path) -> None:
    """/etc/passwd exists, /etc/nonexistent does not: both rows get the same answer, and
    neither becomes a video to open."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_clip(str(folder / "ok.mp4"), num_frames=8)
    manifest = folder / "manifest.csv"
    manifest.write_text("video\nok.mp4\n/etc/passwd\n/etc/nonexistent/passwd\n")
    inputs = read_inputs(str(manifest))
    assert inputs.videos.column("video").to_pylist() == [str(folder / "ok.mp4")]
    bad = inputs.bad.to_pylist()
    assert [row["status"] for row in bad] == ["bad_manifest_row"] * 2
    shapes = {row["error"].replace("/etc/passwd", "X").replace("/etc/nonexistent/passwd", "X").replace("line 3", "line N").replace("line 4", "line N") for row in bad}  # fmt: skip
    assert len(shapes) == 1  # the two answers differ only in the path and line
    assert all("not read by default" in row["error"] for row in bad)
    allowed = read_inputs(str(manifest), allowed_prefixes=["/"])
    assert allowed.videos.num_rows == 3 and allowed.bad.num_rows == 0


# --------------------------------------------------------------------------- remote


@pytest.mark.s3
def test_a_remote_manifest_may_point_into_its_own_bucket_only(moto_s3, tmp_path) -> None:
    own, other = moto_s3.create_bucket(), moto_s3.create_bucket()
    options = moto_s3.storage_options
    fs = moto_s3.filesystem()
    clip = tmp_path / "a.mp4"
    write_clip(str(clip), num_frames=8)
    for bucket in (own, other):
        fs.put_file(str(clip), f"{bucket[5:]}/videos/a.mp4")
    rows = [
        f"{own}/videos/a.mp4",  # line 2: its own bucket
        "videos/a.mp4",  # line 3: relative to the manifest's folder
        f"{other}/videos/a.mp4",  # line 4: another bucket
        "../../../x.mp4",  # line 5: above the manifest's folder
        f"{own}-private/videos/a.mp4",  # line 6: a bucket whose name starts the same
    ]
    with fs.open(f"{own[5:]}/lists/manifest.csv", "w") as handle:
        handle.write("video\n" + "\n".join(rows) + "\n")
    uri = f"{own}/lists/manifest.csv"
    inputs = read_inputs(uri, storage_options=options)
    assert inputs.videos.column("video").to_pylist() == [
        f"{own}/videos/a.mp4", f"{own}/lists/videos/a.mp4"
    ]  # fmt: skip
    errors = [row["error"] for row in inputs.bad.to_pylist()]
    assert len(errors) == 3
    assert f"outside data.allowed_prefixes (default: {own}/" in errors[0]
    assert "climbs above the video root" in errors[1]
    assert errors[2].endswith(f"{own}-private/videos/a.mp4")
    listed = read_inputs(uri, storage_options=options, allowed_prefixes=[f"{other}/videos"])
    assert listed.videos.column("video").to_pylist() == [f"{other}/videos/a.mp4"]
    frame = load_manifest(uri, storage_options=options, allowed_prefixes=[own, other]).table
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3


def test_class_ids_do_not_depend_on_where_rows_may_point(tmp_path: Path) -> None:
    """A class whose only video is refused keeps its id: the map is built from every
    parsed row, so allowing the prefix later does not shift the other ids."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,label\n/proc/a.mp4,ant\nb.mp4,bee\n")
    confined = load_manifest(str(manifest), save_class_map=False)
    opened = load_manifest(str(manifest), save_class_map=False, allowed_prefixes=["/"])
    assert confined.class_names == opened.class_names == ["ant", "bee"]
    assert confined.table["label_ids"].tolist() == [[1]] and len(opened.table) == 2
