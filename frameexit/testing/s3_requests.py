"""What a loopback S3 server was asked for, as the server itself logged it.

moto's server has a request recorder (``/moto-api/recorder/...``): while it is on, the
server appends every request it receives — method, path, headers, so the ``Range`` of a
ranged GET — to a log file. ``start_recording_s3(log_path)`` starts a moto server
(``frameexit.testing.s3.start_loopback_s3``) that logs there; ``RequestLog`` turns it on
and off and reads the log back as :class:`S3Request` rows. Tests use it to check which
byte ranges a reader fetched; benchmarks to count bytes served per video, counted at the
server rather than by the client that is being measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from frameexit.testing.s3 import LoopbackS3, start_loopback_s3

__all__ = ["RequestLog", "S3Request", "bytes_served", "start_recording_s3"]

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class S3Request:
    """One request as the server received it. ``range``: ``[start, end)`` asked for by a
    ranged GET (``end`` None: to the end of the object), None for a whole-object GET."""

    method: str
    path: str  # "/bucket/key"
    range: tuple[int, int | None] | None

    @property
    def key(self) -> str:
        """``bucket/key`` (as in an ``s3://`` URI without the scheme)."""
        return self.path.lstrip("/")


def start_recording_s3(log_path: str) -> LoopbackS3:
    """A moto server (not recording yet) whose recorder writes to ``log_path``."""
    previous = os.environ.get("MOTO_RECORDER_FILEPATH")
    os.environ["MOTO_RECORDER_FILEPATH"] = str(log_path)
    try:
        return start_loopback_s3()
    finally:  # only the server process needs the variable
        if previous is None:
            os.environ.pop("MOTO_RECORDER_FILEPATH", None)
        else:
            os.environ["MOTO_RECORDER_FILEPATH"] = previous


class RequestLog:
    """Turns the recorder of a ``start_recording_s3`` server on and off; reads its log."""

    def __init__(self, server: LoopbackS3) -> None:
        self.server = server

    def _call(self, action: str) -> bytes:
        url = f"{self.server.endpoint_url}/moto-api/recorder/{action}"
        method = "GET" if action == "download-recording" else "POST"
        request = urllib.request.Request(url, data=b"" if method == "POST" else None)
        request.method = method
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def clear(self) -> None:
        self._call("reset-recording")

    def start(self) -> None:
        self._call("start-recording")

    def stop(self) -> None:
        self._call("stop-recording")

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[S3Request]]:
        """Log only what happens inside the block; the list is filled when it ends."""
        out: list[S3Request] = []
        self.clear()
        self.start()
        try:
            yield out
        finally:
            self.stop()
            out.extend(self.requests())

    def requests(self) -> list[S3Request]:
        """Every logged request, in arrival order (the recorder's own calls left out)."""
        out = []
        for line in self._call("download-recording").decode().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            headers = {k.lower(): v for k, v in (entry.get("headers") or {}).items()}
            path = unquote(urlparse(entry["url"]).path)
            match = _RANGE.fullmatch(headers.get("range", "").strip())
            span = None
            if match:
                start, last = match.groups()
                span = (int(start), int(last) + 1 if last else None)
            out.append(S3Request(entry["method"], path, span))
        return out


def bytes_served(requests: list[S3Request], sizes: Mapping[str, int]) -> int:
    """Body bytes the GETs in ``requests`` returned, given object sizes (``bucket/key`` ->
    bytes): a whole GET returns the object, a ranged one its range clipped to the object."""
    total = 0
    for r in requests:
        if r.method != "GET" or r.key not in sizes:
            continue
        size = sizes[r.key]
        if r.range is None:
            total += size
        else:
            start, end = r.range
            total += max(0, min(size, end if end is not None else size) - start)
    return total
