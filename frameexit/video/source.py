"""Where a video's bytes come from: a local file, one whole-object GET, or ranged reads.

Local files are opened in place. Remote objects (``fetch``):

``"auto"``   (default) one GET of the first ``HEAD_BYTES`` (64 KiB; S3 tells the object's
             size in the same answer): a smaller object is then whole (one request), one
             under ``range_min_bytes`` is completed with a second GET, a larger one is
             read by ranges from there on, with those first bytes (the header, often the
             start of the first GOP, which coarse-to-fine asks for at step 2) kept.
``"whole"``  one GET of the whole object at open, held in memory.
``"ranges"`` only what is read: the container header at open, then the byte range of the
             packets each decode needs (the decoder announces it: ``prefetch``). Reads
             outside every fetched range fetch ``block_size`` bytes from there. Every
             byte is fetched at most once per reader; ``fetch_rest`` fetches all that is
             missing in one request per gap (before a full scan).

Errors at this stage become ``VideoDecodeError`` kinds ``missing``, ``access_denied``,
``empty``, ``too_large``, a retryable storage kind or ``unreadable``
(``errors.classify_failure``, which also tells ``not_video`` from ``truncated`` when the
container cannot be opened).

Cancelling: with a ``cancel`` event (the reader's watchdog sets it when the time budget
runs out), every read through the source (``read_at``, the file-like object PyAV reads
remote bytes from, each ranged fetch) raises ``Cancelled`` once it is set, so work on an
abandoned video stops at its next read instead of running on in the background. Local
files are read through one buffered handle (the container checks read 16 bytes at a
time; a file opened per read made a 64 MB file of 8-byte boxes take minutes).
"""

from __future__ import annotations

import bisect
import functools
import inspect
import io
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from frameexit.errors import VideoDecodeError
from frameexit.storage import is_local, url_to_fs
from frameexit.video.errors import Cancelled, classify_failure
from frameexit.video.options import DEFAULT_RANGE_MIN_BYTES, FETCH_MODES

DEFAULT_BLOCK_SIZE = 64 * 1024
HEAD_BYTES = 64 * 1024


def _whole_get_options(fs: Any, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cat_file`` arguments for one GET of a whole object.

    s3fs (2026.9 here) first sends a HEAD to learn the size whenever ``max_concurrency`` > 1
    (its default is 10), to split objects over ``default_block_size`` (50 MB) into
    concurrent ranged GETs. For the usual clip that doubles the requests (measured on the
    loopback server: 5.1 -> 2.4 ms client CPU, 6.2 -> 2.8 ms server CPU, 13 -> 6 ms per
    object), so one plain GET is asked for, unless ``max_concurrency`` was configured.
    Videos large enough to gain from concurrent GETs are better read with
    ``fetch="ranges"``, which reads only the GOPs the steps need.
    """
    if "max_concurrency" in (storage_options or {}):
        return {}
    return {"max_concurrency": 1} if _takes_max_concurrency(type(fs)) else {}


@functools.cache
def _takes_max_concurrency(fs_type: type) -> bool:
    cat = getattr(fs_type, "_cat_file", None)
    try:
        return cat is not None and "max_concurrency" in inspect.signature(cat).parameters
    except (TypeError, ValueError):
        return False


def _never() -> None:
    return None


class _Ranges:
    """Fetched byte ranges of one object: sorted, disjoint ``[start, end)`` with data."""

    def __init__(self, fetch: Any, size: int, check: Callable[[], None] = _never) -> None:
        self._fetch = fetch  # (start, end) -> bytes
        self._check = check  # raises Cancelled once the reader gave up
        self.size = size
        self.starts: list[int] = []
        self.chunks: list[bytes] = []
        self.requests = 0
        self.bytes_fetched = 0

    def add(self, start: int, data: bytes) -> None:
        k = bisect.bisect_left(self.starts, start)
        self.starts.insert(k, start)
        self.chunks.insert(k, data)

    def _covering(self, offset: int) -> int | None:
        k = bisect.bisect_right(self.starts, offset) - 1
        if k >= 0 and offset < self.starts[k] + len(self.chunks[k]):
            return k
        return None

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not fetched yet."""
        out, at = [], start
        k = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while at < end and k < len(self.starts):
            s, e = self.starts[k], self.starts[k] + len(self.chunks[k])
            if e <= at:
                k += 1
                continue
            if s > at:
                out.append((at, min(s, end)))
            at = max(at, e)
            k += 1
        if at < end:
            out.append((at, end))
        return out

    def fetch(self, start: int, end: int) -> None:
        """Fetch the missing parts of ``[start, end)`` (clipped to the object), one request
        per gap."""
        for a, b in self.gaps(max(start, 0), min(end, self.size)):
            self._check()
            data = self._fetch(a, b)
            self.requests += 1
            self.bytes_fetched += len(data)
            if data:
                self.add(a, data)

    def read(self, offset: int, n: int, block: int) -> bytes:
        """Up to ``n`` bytes at ``offset``: what one fetched range holds (a short read is
        fine for a demuxer), fetching ``block`` bytes from ``offset`` on a miss."""
        self._check()
        if offset >= self.size or n <= 0:
            return b""
        k = self._covering(offset)
        if k is None:
            nxt = bisect.bisect_right(self.starts, offset)
            end = offset + max(n, block)
            if nxt < len(self.starts):
                end = min(end, self.starts[nxt])
            self.fetch(offset, end)
            k = self._covering(offset)
            if k is None:
                return b""
        at = offset - self.starts[k]
        return self.chunks[k][at : at + n]


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over ``_Ranges`` (what ``av.open`` reads from)."""

    def __init__(self, ranges: _Ranges, block: int) -> None:
        self._ranges = ranges
        self._block = block
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._ranges.size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._ranges.size - self._pos
        data = self._ranges.read(self._pos, n, self._block)
        self._pos += len(data)
        return data


class Source:
    """The bytes of one video, opened once; hands decoders what they can open."""

    def __init__(
        self,
        uri: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        fetch: str = "auto",
        block_size: int | None = None,
        range_min_bytes: int = DEFAULT_RANGE_MIN_BYTES,
        max_bytes: int | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        if fetch not in FETCH_MODES:
            raise ValueError(f"fetch must be one of {FETCH_MODES}, got {fetch!r}")
        self.uri = str(uri)
        self.path: str | None = None
        self.data: bytes | None = None
        self._ranges: _Ranges | None = None
        self._block = block_size or DEFAULT_BLOCK_SIZE
        self._whole_requests = 0
        self._head_bytes = 0
        self._max_bytes = max_bytes
        self._cancel = cancel or threading.Event()
        self._file: Any = None  # the buffered handle of a local file, opened on first read
        self._file_lock = threading.Lock()
        try:
            if is_local(self.uri):
                self.path = (
                    self.uri[len("file://") :] if self.uri.startswith("file://") else self.uri
                )
                if os.path.isdir(self.path):
                    raise IsADirectoryError(self.path)
                self.size = os.path.getsize(self.path)
                self._check_size(self.size)
                self.fetch = "local"
            else:
                self._open_remote(fetch, storage_options, max(int(range_min_bytes), 1))
        except Exception as exc:  # noqa: BLE001 - every storage failure becomes typed
            raise classify_failure(self.uri, exc, stage="fetch") from exc
        if self.size == 0:
            raise VideoDecodeError(self.uri, "empty", "the file has zero bytes")

    def _open_remote(self, fetch: str, options: Mapping[str, Any] | None, min_bytes: int) -> None:
        fs, path = url_to_fs(self.uri, options)
        if fetch == "whole":
            if self._max_bytes is not None:  # one HEAD first: never fetch a too large object
                self._check_size(int(fs.info(path)["size"]))
            self.data = fs.cat_file(path, **_whole_get_options(fs, options))
            self.size, self._whole_requests, self.fetch = len(self.data), 1, "whole"
            self._head_bytes = self.size
            return
        try:
            head, size = _first_bytes(fs, path, HEAD_BYTES)
        except OSError as exc:  # S3 refuses any range of an empty object (416)
            text = str(exc).lower()
            if not ("range" in text and "satisf" in text) or int(fs.info(path)["size"]):
                raise
            head, size = b"", 0
        self._whole_requests, self._head_bytes = 1, len(head)
        if len(head) < HEAD_BYTES:  # the whole object, in one request
            self.data, self.size, self.fetch = head, len(head), "whole"
            return
        if size is None:
            size = int(fs.info(path)["size"])
            self._whole_requests += 1  # the size lookup (a HEAD)
        self._check_size(size)
        self.size = size
        if fetch == "auto" and size < min_bytes:
            rest = fs.cat_file(path, start=len(head), end=size)
            self.data, self.fetch = head + rest, "whole"
            self._whole_requests, self._head_bytes = self._whole_requests + 1, len(self.data)
            return
        self._ranges = _Ranges(
            functools.partial(_cat_range, fs, path), self.size, self.check_cancel
        )
        self._ranges.add(0, head)
        self.fetch = "ranges"

    def _check_size(self, size: int) -> None:
        """A video over ``max_bytes`` (``data.decode.max_bytes``) is refused before its
        bytes are fetched: a final ``too_large`` row, not an out-of-memory worker."""
        if self._max_bytes is not None and size > self._max_bytes:
            raise VideoDecodeError(
                self.uri,
                "too_large",
                f"{size} bytes, over data.decode.max_bytes = {self._max_bytes}",
            )

    def check_cancel(self) -> None:
        """Raise ``Cancelled`` once the reader has given up on this video."""
        if self._cancel.is_set():
            raise Cancelled()

    @property
    def requests(self) -> int:
        """Storage requests so far (0 for local files)."""
        return self._whole_requests + (self._ranges.requests if self._ranges else 0)

    @property
    def bytes_fetched(self) -> int:
        """Bytes fetched from storage so far (0 for local files)."""
        if self._ranges is not None:
            return self._head_bytes + self._ranges.bytes_fetched
        return len(self.data) if self.data is not None else self._head_bytes

    def pyav_input(self) -> Any:
        """Something ``av.open`` accepts, positioned at the start (fresh for bytes)."""
        if self.path is not None:
            return self.path
        if self.data is not None:
            return io.BytesIO(self.data)
        return _RangeFile(self._ranges, self._block)

    def decord_input(self) -> Any:
        """Something ``decord.VideoReader`` accepts (decord reads whole files)."""
        if self.path is not None:
            return self.path
        if self.data is None:
            self.fetch_rest()
            self.data = self.read_at(0, self.size)
            self._ranges = None  # the bytes now live in ``data``
        return io.BytesIO(self.data)

    def read_at(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` (fewer at the end of the file); ``Cancelled`` once the
        reader has given up."""
        self.check_cancel()
        if self.data is not None:
            return self.data[offset : offset + n]
        if self.path is not None:
            with self._file_lock:
                if self._file is None:
                    self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
                self._file.seek(offset)
                return self._file.read(n)
        out, end = bytearray(), min(offset + n, self.size)
        while offset + len(out) < end:
            piece = self._ranges.read(offset + len(out), end - offset - len(out), self._block)
            if not piece:
                break
            out += piece
        return bytes(out)

    def prefetch(self, start: int, end: int) -> None:
        """Fetch ``[start, end)`` now, in one request per missing part (ranged only)."""
        if self._ranges is not None:
            self._ranges.fetch(start, end)

    def fetch_rest(self) -> None:
        """Fetch every byte not fetched yet (ranged only; before a full scan)."""
        if self._ranges is not None:
            self._ranges.fetch(0, self.size)

    def close(self) -> None:
        """Drop the fetched bytes and the local file handle (counts stay readable)."""
        with self._file_lock:
            if self._file is not None:
                self._file.close()
                self._file = None
        if self._ranges is not None:
            self._ranges.starts, self._ranges.chunks = [], []
        self.data = None


def _cat_range(fs: Any, path: str, start: int, end: int) -> bytes:
    return fs.cat_file(path, start=start, end=end)


def _first_bytes(fs: Any, path: str, n: int) -> tuple[bytes, int | None]:
    """The first ``n`` bytes of an object and, where the store says it in the same answer
    (S3's ``Content-Range``, through s3fs), the object's size: one request, no HEAD."""
    if not (getattr(fs, "async_impl", False) and hasattr(fs, "_call_s3")):
        return fs.cat_file(path, start=0, end=n), None
    from fsspec.asyn import sync

    async def get() -> tuple[bytes, int | None]:
        bucket, key, version = fs.split_path(path)
        resp = await fs._call_s3(
            "get_object",
            Bucket=bucket,
            Key=key,
            Range=f"bytes=0-{n - 1}",
            **({"VersionId": version} if version else {}),
        )
        try:
            body = await resp["Body"].read()
        finally:
            resp["Body"].close()
        total = str(resp.get("ContentRange") or "").rpartition("/")[2]
        return body, int(total) if total.isdigit() else None

    return sync(fs.loop, get)
