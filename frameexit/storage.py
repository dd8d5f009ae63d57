"""Storage: the one home of URIs, filesystems, atomic writes and credential redaction.

A URI is a local path, ``file://...``, ``s3://bucket/key`` or any other fsspec protocol;
every helper here treats a plain path and ``file://`` alike (*local*) and everything else
as *remote*. ``storage_options`` are passed to the filesystem (for s3fs: ``key``,
``secret``, ``endpoint_url``, ``client_kwargs``, ...). When they are omitted, s3fs/botocore
take endpoint and credentials from the standard places: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` and ``~/.aws/{config,credentials}``.

::

    names     is_local · is_remote · local_path · absolute_uri · join_uri · parent_uri
    access    url_to_fs · pyarrow_filesystem · options_for · open_uri · read_bytes · exists
              list_files · makedirs · remove · classify_storage_error (retryable or not)
    writes    atomic_write · write_bytes · write_text · write_parquet · upload_dir (readers
              never see a half-written file; files get the usual 0644-under-umask mode)
    reads     read_parquet
    secrets   redact · scrub · register_secrets · known_secrets · SecretFilter ·
              install_secret_filter (defined in ``frameexit.secrets``, re-exported here)

Every filesystem opened here registers its storage options as secrets, so their values
are masked wherever they appear (``frameexit.secrets``). Nothing here
logs or repr()s storage options; everything that writes a config or an options dict
anywhere (files, logs, Ray task arguments that end up in logs) passes it through
:func:`redact` first.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from frameexit.secrets import (
    MIN_SECRET_LENGTH,
    PUBLIC_OPTION_KEYS,
    REDACTED,
    SecretFilter,
    install_secret_filter,
    is_secret_key,
    known_secrets,
    redact,
    register_secrets,
    scrub,
    secret_values,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "PUBLIC_OPTION_KEYS",
    "REDACTED",
    "SecretFilter",
    "absolute_uri",
    "atomic_write",
    "classify_storage_error",
    "exists",
    "is_local",
    "is_remote",
    "install_secret_filter",
    "is_secret_key",
    "known_secrets",
    "join_uri",
    "list_files",
    "local_path",
    "makedirs",
    "open_uri",
    "options_for",
    "parent_uri",
    "pyarrow_filesystem",
    "read_bytes",
    "read_parquet",
    "redact",
    "register_secrets",
    "remove",
    "scrub",
    "secret_values",
    "upload_dir",
    "url_to_fs",
    "write_bytes",
    "write_parquet",
    "write_text",
]

_LOCAL_PROTOCOLS = ("file", "local")

# --------------------------------------------------------------------------- names


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` (or ``local://``) URIs."""
    uri = str(uri)
    if "://" not in uri:
        return True
    return uri.split("://", 1)[0] in _LOCAL_PROTOCOLS


def is_remote(uri: str) -> bool:
    """True for every ``scheme://`` URI that is not local (``s3://``, ``gs://``, ...)."""
    return not is_local(uri)


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (``file://`` stripped, ``~`` expanded)."""
    uri = str(uri)
    if "://" in uri:
        if not is_local(uri):
            raise ValueError(f"{uri} is not a local path")
        uri = uri.split("://", 1)[1]
    return os.path.expanduser(uri)


def absolute_uri(uri: str) -> str:
    """The canonical spelling of a URI: local ones become absolute, normalised paths
    (``file:///x/a.mp4`` and ``/x/./a.mp4`` are the same file), remote ones lose a
    trailing ``/``. Ray workers may run in another directory, so every URI that crosses
    into a worker goes through here first."""
    uri = str(uri)
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(local_path(uri))


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a URI with ``/`` (the same for local paths and ``s3://``);
    leading and trailing ``/`` of each part are dropped, empty parts are skipped."""
    out = str(base)
    for part in parts:
        piece = str(part).strip("/")
        if piece:
            out = f"{out.rstrip('/')}/{piece}" if out else piece
    return out


def parent_uri(uri: str) -> str:
    """The folder holding ``uri`` (for local URIs, an absolute path)."""
    uri = str(uri)
    if is_local(uri):
        return os.path.dirname(absolute_uri(uri))
    scheme, rest = uri.split("://", 1)
    rest = rest.rstrip("/")
    return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else f"{scheme}://{rest}"


# --------------------------------------------------------------------------- access


def url_to_fs(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path inside it)`` for ``uri`` (fsspec's ``url_to_fs``)."""
    if storage_options:
        register_secrets(storage_options)
    return fsspec.core.url_to_fs(str(uri), **dict(storage_options or {}))


def options_for(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The storage options that apply to ``uri``: all of them for a remote URI, none for
    a local one (local filesystems take no credentials). They are registered as secrets
    (:func:`register_secrets`) either way."""
    if storage_options:
        register_secrets(storage_options)
    return dict(storage_options or {}) if is_remote(uri) else {}


def pyarrow_filesystem(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[Any, str]:
    """``(pyarrow filesystem or None, path)`` for Ray Train storage and Ray Data / pyarrow
    I/O. Local URIs need none (``None``, absolute path). Remote URIs are served by their
    fsspec filesystem wrapped for pyarrow, so exactly the credentials and endpoint that
    ``storage_options`` give fsspec are used (and the object pickles to Ray workers)."""
    if is_local(uri):
        return None, absolute_uri(uri)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = url_to_fs(uri, storage_options)
    return PyFileSystem(FSSpecHandler(fs)), path


def _unstrip(fs: AbstractFileSystem, path: str, like: str) -> str:
    """Turn a filesystem path back into a URI in the style of ``like``."""
    if "://" not in str(like):
        return path  # a plain local path in, plain local paths out
    return fs.unstrip_protocol(path)


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


def makedirs(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Create the folder ``uri`` and its parents (object stores need none: a no-op)."""
    fs, path = url_to_fs(uri, storage_options)
    fs.makedirs(path, exist_ok=True)


def remove(
    uri: str, *, recursive: bool = False, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Delete ``uri`` (a folder only with ``recursive``); nothing there is not an error."""
    fs, path = url_to_fs(uri, storage_options)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


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


_THROTTLED = re.compile(
    r"SlowDown|reduce your request rate|Throttl|TooManyRequests|RequestLimitExceeded|"
    r"\b429\b|rate exceeded",
    re.IGNORECASE,
)
_DENIED = re.compile(
    r"AccessDenied|ExpiredToken|InvalidAccessKeyId|SignatureDoesNotMatch|InvalidToken|"
    r"TokenRefreshRequired|Forbidden|\b403\b",
    re.IGNORECASE,
)
_UNAVAILABLE = re.compile(
    r"EndpointConnectionError|ConnectionClosedError|ConnectTimeout|ClientOSError|"
    r"ServerDisconnected|ClientConnector|Connection (reset|refused|aborted)|"
    r"ServiceUnavailable|InternalError|BadGateway|GatewayTimeout|\b50[0234]\b|"
    r"Remote end closed|IncompleteRead|ResponseParserError|ClientPayloadError",
    re.IGNORECASE,
)
_TIMEOUT = re.compile(r"ReadTimeout|timed out|TimeoutError", re.IGNORECASE)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def classify_storage_error(error: BaseException) -> str | None:
    """What a storage failure means, as a ``VideoDecodeError`` kind, or None if it is not
    a storage failure: ``missing`` (no such object), ``access_denied``, ``throttled``
    (503 SlowDown / 429 after the client's own retries), ``timeout``, ``unavailable``
    (connection refused/reset, 5xx). The last four are retryable: the object may read
    fine later. Looks through the exception chain (s3fs wraps botocore/aiohttp errors)."""
    for e in _chain(error):
        if isinstance(e, FileNotFoundError | IsADirectoryError):
            return "missing"
        if isinstance(e, PermissionError):
            return "access_denied"
        status = getattr(e, "response", None)
        code = (
            status.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, dict)
            else None
        )
        text = f"{type(e).__name__}: {e}"
        if code in (429, 503) or _THROTTLED.search(text):
            return "throttled"
        if code in (401, 403) or _DENIED.search(text):
            return "access_denied"
        if (isinstance(code, int) and code >= 500) or _UNAVAILABLE.search(text):
            return "unavailable"
        if isinstance(e, ConnectionError):
            return "unavailable"
        if isinstance(e, TimeoutError) or _TIMEOUT.search(text):
            return "timeout"
    return None


# --------------------------------------------------------------------------- writes


def _file_mode() -> int:
    """The mode ``open()`` would give a new file (0666 under the process umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(
    uri: str,
    mode: str = "wb",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[IO]:
    """Write ``uri`` so readers see either the old content or the complete new one.

    Local paths: write a temporary file in the same directory, ``fsync``, give it the
    mode a plainly created file would have (``mkstemp`` makes 0600), then ``os.replace``
    (parent directories are created). Other filesystems: write a local temporary file,
    then upload it with one ``put_file`` — an object PUT (or a completed multipart
    upload) appears at once, never half-written. If the block raises, nothing is written.
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
            os.chmod(tmp, _file_mode())
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


def write_text(uri: str, text: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Atomically write UTF-8 ``text`` to ``uri`` (see ``atomic_write``)."""
    write_bytes(uri, text.encode("utf-8"), storage_options=storage_options)


def write_parquet(
    uri: str, frame: Any, *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Atomically write a pandas DataFrame (no index) or a pyarrow Table as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    with atomic_write(uri, "wb", storage_options=storage_options) as handle:
        pq.write_table(table, handle, compression="zstd")


def read_parquet(
    uri: str, *, columns: list[str] | None = None, storage_options: Mapping[str, Any] | None = None
) -> Any:
    """A Parquet file at ``uri`` as a pyarrow Table (one GET; only ``columns`` if given)."""
    import pyarrow.parquet as pq

    if is_local(uri):  # ParquetFile on the path: a third of read_table's time on small files
        with pq.ParquetFile(local_path(uri)) as parquet:
            return parquet.read(columns=columns, use_threads=False)
    with open_uri(uri, "rb", storage_options=storage_options) as handle:
        return pq.read_table(handle, columns=columns)


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
