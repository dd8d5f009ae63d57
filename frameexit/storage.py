"""Storage helpers: one way to open, list, test and atomically write any fsspec URI.

A URI is a local path, ``file://...``, ``s3://bucket/key`` or any other fsspec protocol.
``storage_options`` are passed to the filesystem (for s3fs: ``key``, ``secret``,
``endpoint_url``, ``client_kwargs``, ...). When they are omitted, s3fs/botocore take
endpoint and credentials from the standard places: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` and ``~/.aws/{config,credentials}``. Nothing here
logs or repr()s storage options, so credentials never reach logs.

``start_loopback_s3()`` starts a throwaway S3-compatible server (moto) on 127.0.0.1 for
demos, benchmarks and tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "LoopbackS3",
    "atomic_write",
    "exists",
    "is_local",
    "join_uri",
    "list_files",
    "open_uri",
    "read_bytes",
    "start_loopback_s3",
    "upload_dir",
    "url_to_fs",
    "write_bytes",
]

_LOCAL_PROTOCOLS = ("file", "local")


def url_to_fs(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path inside it)`` for ``uri`` (fsspec's ``url_to_fs``)."""
    return fsspec.core.url_to_fs(str(uri), **dict(storage_options or {}))


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    uri = str(uri)
    if "://" not in uri:
        return True
    return uri.split("://", 1)[0] in _LOCAL_PROTOCOLS


def _unstrip(fs: AbstractFileSystem, path: str, like: str) -> str:
    """Turn a filesystem path back into a URI in the style of ``like``."""
    if "://" not in str(like):
        return path  # a plain local path in, plain local paths out
    return fs.unstrip_protocol(path)


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a URI with ``/`` (or ``os.path.join`` for local paths)."""
    base = str(base)
    if "://" not in base:
        return os.path.join(base, *parts)
    out = base.rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


def open_uri(
    uri: str,
    mode: str = "rb",
    *,
    storage_options: Mapping[str, Any] | None = None,
    **open_kwargs: Any,
) -> IO:
    """Open ``uri`` like ``open()``; ``open_kwargs`` go to ``fs.open`` (e.g. ``block_size``,
    ``cache_type``). Missing objects raise ``FileNotFoundError``, denied access
    ``PermissionError``."""
    fs, path = url_to_fs(uri, storage_options)
    return fs.open(path, mode, **open_kwargs)


def read_bytes(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Read a whole object (one GET on object stores)."""
    fs, path = url_to_fs(uri, storage_options)
    return fs.cat_file(path)


def exists(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True if ``uri`` names an existing file or directory. Denied access raises."""
    fs, path = url_to_fs(uri, storage_options)
    return fs.exists(path)


def list_files(
    uri: str,
    *,
    suffixes: Iterable[str] | None = None,
    recursive: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Sorted URIs of the files under ``uri`` (only those ending in one of ``suffixes``,
    case-insensitive, if given). URIs keep the protocol of ``uri``; plain local paths
    stay plain paths."""
    fs, path = url_to_fs(uri, storage_options)
    if recursive:
        found = fs.find(path)
    else:
        found = [e["name"] for e in fs.ls(path, detail=True) if e.get("type") == "file"]
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    out = [p for p in found if wanted is None or p.lower().endswith(wanted)]
    return sorted(_unstrip(fs, p, uri) for p in out)


@contextlib.contextmanager
def atomic_write(
    uri: str,
    mode: str = "wb",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[IO]:
    """Write ``uri`` so readers see either the old content or the complete new one.

    Local paths: write a temporary file in the same directory, ``fsync``, then
    ``os.replace`` (parent directories are created). Other filesystems: write a local
    temporary file, then upload it with one ``put_file`` — an object PUT (or a
    completed multipart upload) appears at once, never half-written. If the block
    raises, nothing is written.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    fs, path = url_to_fs(uri, storage_options)
    local = isinstance(fs, LocalFileSystem)
    if local:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
    else:
        directory = None
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + uuid.uuid4().hex[:8] + "-", dir=directory)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if local:
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
            fs.invalidate_cache(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(uri: str, data: bytes, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Atomically write ``data`` to ``uri`` (see ``atomic_write``)."""
    with atomic_write(uri, "wb", storage_options=storage_options) as f:
        f.write(data)


def upload_dir(
    local_dir: str,
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri`` keeping relative paths; returns the
    destination URIs, sorted."""
    fs, root = url_to_fs(uri, storage_options)
    out = []
    for dirpath, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            dest = root.rstrip("/") + "/" + rel
            if isinstance(fs, LocalFileSystem):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
            fs.put_file(src, dest)
            out.append(_unstrip(fs, dest, uri))
    fs.invalidate_cache(root)
    return sorted(out)


# --------------------------------------------------------------------------- loopback S3


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LoopbackS3:
    """A running S3-compatible server on loopback and how to reach it.

    ``storage_options`` are for fsspec/s3fs; ``env`` are the equivalent environment
    variables (for subprocesses and Ray workers: ``runtime_env={"env_vars": s3.env}``).
    """

    endpoint_url: str
    key: str
    secret: str = field(repr=False)
    region: str = "us-east-1"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        # No region here: s3fs would send it as a LocationConstraint when creating buckets,
        # which S3 (and moto) reject for us-east-1; botocore signs for us-east-1 anyway.
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint_url}

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def filesystem(self) -> AbstractFileSystem:
        """A fresh (uncached) s3fs filesystem with these credentials."""
        return fsspec.filesystem("s3", skip_instance_cache=True, **self.storage_options)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name if none is given); returns ``s3://name``."""
        name = name or "fe-" + uuid.uuid4().hex[:16]
        self.filesystem().mkdir(name)
        return f"s3://{name}"

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop the server process: SIGTERM, SIGKILL after ``grace_s`` (idempotent)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        if grace_s > 0:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait(timeout=5)

    def __enter__(self) -> LoopbackS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers any HTTP status; raise ``RuntimeError`` on timeout or
    if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered (403/404 are fine: the server is up)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {url} after {timeout_s:.0f} s") from None
            time.sleep(0.05)


def start_loopback_s3(
    *,
    port: int | None = None,
    key: str = "frameexit-test-key",
    secret: str = "frameexit-test-secret",
    region: str = "us-east-1",
    timeout_s: float = 30.0,
) -> LoopbackS3:
    """Start moto's S3 server (``python -m moto.server``) on 127.0.0.1 in a subprocess.

    moto accepts any credentials; the ones given here are what ``storage_options`` and
    ``env`` carry. Use as a context manager or call ``.stop()``. Needs ``moto[server]``.
    """
    for _ in range(3):
        p = port or free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(p)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        server = LoopbackS3(f"http://127.0.0.1:{p}", key, secret, region, proc)
        try:
            wait_for_http(server.endpoint_url + "/moto-api/", timeout_s, proc)
            return server
        except RuntimeError:
            server.stop()
            if port is not None:
                raise
    raise RuntimeError("could not start moto.server on a free loopback port")
