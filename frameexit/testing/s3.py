"""Throwaway S3-compatible servers on loopback, for tests, demos and benchmarks.

``start_loopback_s3()`` runs moto's S3 server (``python -m moto.server``) in a subprocess
on 127.0.0.1 and returns a :class:`LoopbackS3`: its endpoint, credentials, the matching
fsspec ``storage_options`` and environment variables (for subprocesses and Ray workers).
Needs ``moto[server]`` (the ``dev`` extra). The pytest fixtures in ``tests/fixtures/s3.py``
add SeaweedFS, which enforces credentials, on top of these helpers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

__all__ = ["LoopbackS3", "free_port", "start_loopback_s3", "wait_for_http"]


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
