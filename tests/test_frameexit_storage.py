"""frameexit.storage: the same helpers on local paths, file:// and s3:// (moto)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from frameexit.storage import (
    atomic_write,
    exists,
    is_local,
    join_uri,
    list_files,
    open_uri,
    read_bytes,
    upload_dir,
    url_to_fs,
    write_bytes,
)
from frameexit.testing.s3 import start_loopback_s3


def test_is_local_and_join() -> None:
    assert is_local("/a/b") and is_local("rel/x.mp4") and is_local("file:///a")
    assert not is_local("s3://b/k") and not is_local("memory://x")
    assert join_uri("s3://b/pre/", "x", "/y.mp4") == "s3://b/pre/x/y.mp4"
    assert join_uri("/tmp/a", "b", "c.txt") == os.path.join("/tmp/a", "b", "c.txt")
    fs, path = url_to_fs("file:///tmp/x.bin")
    assert path == "/tmp/x.bin" and "file" in fs.protocol


@pytest.fixture(params=["local", "file", "s3"])
def root(request, tmp_path) -> tuple[str, dict]:
    """A writable directory URI and its storage options, on each kind of storage."""
    if request.param == "local":
        return str(tmp_path), {}
    if request.param == "file":
        return "file://" + str(tmp_path), {}
    moto = request.getfixturevalue("moto_s3")
    return request.getfixturevalue("s3_bucket") + "/root", moto.storage_options


def test_write_read_exists_list(root) -> None:
    base, opts = root
    write_bytes(join_uri(base, "a", "one.MP4"), b"1", storage_options=opts)
    write_bytes(join_uri(base, "a", "b", "two.mp4"), b"22", storage_options=opts)
    with atomic_write(join_uri(base, "notes.txt"), "w", storage_options=opts) as f:
        f.write("hello")
    assert read_bytes(join_uri(base, "a", "b", "two.mp4"), storage_options=opts) == b"22"
    with open_uri(join_uri(base, "notes.txt"), "rb", storage_options=opts) as f:
        assert f.read() == b"hello"
    assert exists(join_uri(base, "notes.txt"), storage_options=opts)
    assert not exists(join_uri(base, "nope.txt"), storage_options=opts)
    videos = list_files(base, suffixes=[".mp4"], storage_options=opts)
    assert [v.rsplit("/", 1)[-1] for v in videos] == ["two.mp4", "one.MP4"]  # a/b/ < a/o
    prefix = base.split("://", 1)[0] + "://" if "://" in base else "/"
    assert all(v.startswith(prefix) for v in videos)
    assert read_bytes(videos[1], storage_options=opts) == b"1"  # listed URIs open as-is
    top = list_files(join_uri(base, "a"), recursive=False, storage_options=opts)
    assert [v.rsplit("/", 1)[-1] for v in top] == ["one.MP4"]
    with pytest.raises(FileNotFoundError):
        read_bytes(join_uri(base, "nope.txt"), storage_options=opts)


def test_atomic_write_leaves_nothing_on_error(root) -> None:
    base, opts = root
    target = join_uri(base, "out.bin")
    write_bytes(target, b"old", storage_options=opts)
    with pytest.raises(RuntimeError), atomic_write(target, storage_options=opts) as f:
        f.write(b"half of the new")
        raise RuntimeError("writer died")
    assert read_bytes(target, storage_options=opts) == b"old"
    fresh = join_uri(base, "never.bin")
    with pytest.raises(RuntimeError), atomic_write(fresh, storage_options=opts) as f:
        f.write(b"x")
        raise RuntimeError("writer died")
    assert not exists(fresh, storage_options=opts)
    assert list_files(base, storage_options=opts) == [target]  # no temp files left


def test_atomic_write_replaces_only_at_the_end(tmp_path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    with atomic_write(str(target), "w") as f:
        f.write("new")
        assert target.read_text() == "old"  # readers still see the old content
    assert target.read_text() == "new"
    with pytest.raises(ValueError), atomic_write(str(target), "a"):
        pass


@pytest.mark.s3
def test_upload_dir(tmp_path, moto_s3, s3_upload) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.mp4").write_bytes(b"x")
    (tmp_path / "sub" / "y.mp4").write_bytes(b"yy")
    uri = s3_upload(str(tmp_path), "corpus")
    files = list_files(uri, storage_options=moto_s3.storage_options)
    assert files == [f"{uri}/sub/y.mp4", f"{uri}/x.mp4"]
    assert read_bytes(f"{uri}/sub/y.mp4", storage_options=moto_s3.storage_options) == b"yy"
    local = upload_dir(str(tmp_path), str(tmp_path / "copy"))
    assert sorted(os.path.relpath(p, tmp_path / "copy") for p in local) == [
        os.path.join("sub", "y.mp4"),
        "x.mp4",
    ]


@pytest.mark.s3
def test_loopback_s3_env_reaches_a_subprocess(moto_s3, s3_bucket: str) -> None:
    """``.env`` alone (no storage options) is enough for a fresh process, e.g. a Ray worker."""
    write_bytes(f"{s3_bucket}/k.txt", b"from env", storage_options=moto_s3.storage_options)
    code = (
        "import sys, fsspec; "
        f"sys.stdout.write(fsspec.open('{s3_bucket}/k.txt', 'rb').open().read().decode())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **moto_s3.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == "from env"
    assert moto_s3.secret not in repr(moto_s3)


@pytest.mark.s3
def test_start_and_stop_loopback_s3() -> None:
    with start_loopback_s3() as server:
        bucket = server.create_bucket("frameexit-own-bucket")
        write_bytes(f"{bucket}/a", b"1", storage_options=server.storage_options)
        assert exists(f"{bucket}/a", storage_options=server.storage_options)
        proc = server.process
    assert proc.poll() is not None and server.process is None
    server.stop()  # idempotent


def test_camel_case_credential_names_are_redacted() -> None:
    """boto3/s3fs spell credentials in camelCase (SSE-C keys in s3_additional_kwargs,
    STS answers): they are masked like snake_case ones, and ordinary names are not."""
    from frameexit.storage import REDACTED, is_secret_key, redact

    options = {
        "s3_additional_kwargs": {
            "SSECustomerAlgorithm": "AES256",
            "SSECustomerKey": "c2VjcmV0LWtleS0zMi1ieXRlcy1sb25nLi4uLi4=",
        },
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
        "SecretAccessKey": "wJalrXUtnFEMI",
        "sessionToken": "FwoGZXIvYXdz",
        "AccessKeyId": "AKIAEXAMPLE",
    }
    masked = redact(options)
    assert masked["s3_additional_kwargs"]["SSECustomerKey"] == REDACTED
    assert masked["s3_additional_kwargs"]["SSECustomerAlgorithm"] == "AES256"
    assert masked["SecretAccessKey"] == masked["sessionToken"] == REDACTED
    assert masked["AccessKeyId"] == REDACTED
    assert masked["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    for plain in ("keyframes", "monkey", "tokenizer_name", "num_frames", "sessions_dir"):
        assert not is_secret_key(plain), plain
