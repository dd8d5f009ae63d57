"""Where a video's bytes come from: a local file, one whole-object GET, or ranged reads.

``fetch="whole"``  (remote) one GET of the whole object at open, held in memory; every
                   later read is local. (Local files are opened in place.)
``fetch="ranges"`` (remote) an fsspec file with a block cache (``cache_type="blockcache"``,
                   ``block_size`` bytes per request, up to ``max_blocks`` kept, LRU):
                   only the blocks the demuxer touches are fetched, each once while it
                   stays cached. Local files are opened in place as well.

Errors at this stage become ``VideoDecodeError`` kinds ``missing``, ``access_denied``,
``empty`` or ``unreadable``; ``classify_open_failure`` tells ``not_video`` from
``truncated`` when the container cannot be opened.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
from collections.abc import Mapping
from typing import Any

from frameexit.errors import VideoDecodeError
from frameexit.storage import is_local, url_to_fs

FETCH_MODES = ("whole", "ranges")
DEFAULT_BLOCK_SIZE = 512 * 1024
DEFAULT_MAX_BLOCKS = 64

_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid", b"styp"}


def _error_for(uri: str, exc: BaseException) -> VideoDecodeError:
    """Map a storage exception to a typed error (never includes storage options)."""
    if isinstance(exc, VideoDecodeError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return VideoDecodeError(uri, "missing", "no such file or object")
    if isinstance(exc, IsADirectoryError):
        return VideoDecodeError(uri, "missing", "is a directory, not a file")
    if isinstance(exc, PermissionError):
        return VideoDecodeError(
            uri, "access_denied", f"access denied (check credentials/permissions): {exc}"
        )
    return VideoDecodeError(uri, "unreadable", f"{type(exc).__name__}: {exc}")


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


class Source:
    """The bytes of one video, opened once; hands decoders what they can open."""

    def __init__(
        self,
        uri: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        fetch: str = "whole",
        block_size: int | None = None,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
    ) -> None:
        if fetch not in FETCH_MODES:
            raise ValueError(f"fetch must be one of {FETCH_MODES}, got {fetch!r}")
        self.uri = str(uri)
        self.fetch = fetch
        self.path: str | None = None
        self.data: bytes | None = None
        self._file: Any = None
        self.requests = 0
        self.bytes_fetched = 0
        try:
            if is_local(self.uri):
                self.path = (
                    self.uri[len("file://") :] if self.uri.startswith("file://") else self.uri
                )
                if os.path.isdir(self.path):
                    raise IsADirectoryError(self.path)
                self.size = os.path.getsize(self.path)
            else:
                fs, path = url_to_fs(self.uri, storage_options)
                if fetch == "whole":
                    self.data = fs.cat_file(path, **_whole_get_options(fs, storage_options))
                    self.size = len(self.data)
                    self.requests, self.bytes_fetched = 1, self.size
                else:
                    self.size = int(fs.info(path)["size"])
                    if self.size:
                        self._file = fs.open(
                            path,
                            "rb",
                            block_size=block_size or DEFAULT_BLOCK_SIZE,
                            cache_type="blockcache",
                            cache_options={"maxblocks": max_blocks},
                        )
                        self._count_fetches()
        except Exception as exc:  # noqa: BLE001 - every storage failure becomes typed
            raise _error_for(self.uri, exc) from exc
        if self.size == 0:
            raise VideoDecodeError(self.uri, "empty", "the file has zero bytes")

    def _count_fetches(self) -> None:
        cache = self._file.cache
        fetch = cache.fetcher

        def counting(start: int, end: int) -> bytes:
            data = fetch(start, end)
            self.requests += 1
            self.bytes_fetched += len(data)
            return data

        cache.fetcher = counting

    def pyav_input(self) -> Any:
        """Something ``av.open`` accepts, positioned at the start (fresh for bytes)."""
        if self.path is not None:
            return self.path
        if self.data is not None:
            return io.BytesIO(self.data)
        self._file.seek(0)
        return self._file

    def decord_input(self) -> Any | None:
        """Something ``decord.VideoReader`` accepts, or None (ranged: decord reads all)."""
        if self.path is not None:
            return self.path
        if self.data is not None:
            return io.BytesIO(self.data)
        return None

    def read_at(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` (fewer at the end of the file)."""
        if self.data is not None:
            return self.data[offset : offset + n]
        if self.path is not None:
            with open(self.path, "rb") as f:
                f.seek(offset)
                return f.read(n)
        self._file.seek(offset)
        return self._file.read(n)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.data = None


def classify_open_failure(source: Source, exc: BaseException) -> VideoDecodeError:
    """Why a container could not be opened: ``truncated`` if it is a recognised video
    container whose declared sizes run past the end of the file (or an MP4 without its
    ``moov`` index, i.e. never finalised), ``unreadable`` for other damage to a recognised
    container, ``not_video`` for anything else."""
    uri, size = source.uri, source.size
    detail = f"{type(exc).__name__}: {exc}"
    head = source.read_at(0, 16)
    if len(head) >= 8 and head[4:8] in _MP4_BOXES:
        offset, seen = 0, set()
        while offset < size:
            box = source.read_at(offset, 16)
            if len(box) < 8:
                return VideoDecodeError(uri, "truncated", f"MP4 box header cut at byte {offset}")
            box_size, box_type = int.from_bytes(box[:4], "big"), box[4:8]
            if box_size == 1 and len(box) >= 16:
                box_size = int.from_bytes(box[8:16], "big")
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                return VideoDecodeError(uri, "unreadable", f"corrupt MP4 box at byte {offset}")
            if offset + box_size > size:
                return VideoDecodeError(
                    uri,
                    "truncated",
                    f"MP4 box {box_type.decode('latin-1')!r} at byte {offset} declares "
                    f"{box_size} bytes but the file ends at {size}",
                )
            seen.add(box_type)
            offset += box_size
        if b"moov" not in seen:
            return VideoDecodeError(
                uri, "truncated", "MP4 without a 'moov' box (recording never finalised)"
            )
        return VideoDecodeError(uri, "unreadable", f"damaged MP4: {detail}")
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        declared = int.from_bytes(head[4:8], "little") + 8
        if declared > size:
            return VideoDecodeError(
                uri, "truncated", f"AVI declares {declared} bytes but the file has {size}"
            )
        return VideoDecodeError(uri, "unreadable", f"damaged AVI: {detail}")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return VideoDecodeError(uri, "unreadable", f"damaged Matroska/WebM: {detail}")
    if head[:1] == b"\x47" and source.read_at(188, 1) == b"\x47":
        return VideoDecodeError(uri, "unreadable", f"damaged MPEG-TS: {detail}")
    return VideoDecodeError(uri, "not_video", f"not a video container ({detail})")
