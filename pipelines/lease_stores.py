"""Where a lease lives: the lease file on one store, changed only conditionally.

:class:`LeaseStore` reads the file and creates, replaces or deletes it only if it is
still the version the caller saw (``None``/``False`` when someone else changed it):

* :class:`LocalLeaseStore` — a local or shared POSIX folder: each change under an
  exclusive ``flock`` of ``_lease.lock`` beside it;
* :class:`S3LeaseStore` — ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace
  and delete; a server answering NotImplemented is used as a plain store;
* :class:`LeaseStore` itself — any other fsspec store: read, compare, write (no
  atomicity; :class:`pipelines.lease.Lease` confirms by reading back).

Each reports the store's modification time of what it read and the store's clock
(:meth:`LeaseStore.now`, a probe's modification time), so expiry needs no trusted clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from frameexit.storage import join_uri, url_to_fs, write_text

LEASE_NAME = "_lease.json"
LOCK_NAME = "_lease.lock"


def _precondition_failed(error: BaseException) -> bool:
    """Whether a storage error is a failed condition (412 / 409 conflict), not an outage."""
    seen: BaseException | None = error
    while seen is not None:
        code = getattr(seen, "response", {}).get("Error", {}).get("Code", "")
        text = str(seen)
        if isinstance(seen, FileExistsError) or code in (
            "PreconditionFailed", "ConditionalRequestConflict", "412", "409"
        ):  # fmt: skip
            return True
        if "PreconditionFailed" in text or "pre-conditions you specified" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _not_implemented(error: BaseException) -> bool:
    text = str(error)
    return "NotImplemented" in text or "not implemented" in text.lower()


def _seconds(value: Any) -> float | None:
    """A modification time from an fsspec ``info`` value (float, datetime or ISO text)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _mtime(info: Mapping[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        if key in info:
            found = _seconds(info[key])
            if found is not None:
                return found
    return None


class Version:
    """What a reader saw of the lease file: its bytes and the store's version tag."""

    def __init__(self, data: bytes, tag: Any = None, mtime: float | None = None) -> None:
        self.data, self.tag, self.mtime = data, tag, mtime


class LeaseStore:
    """The lease file on one store: read, and create / replace / delete conditionally
    (``False`` when the condition failed, i.e. someone else changed the file)."""

    conditional = False

    def __init__(self, directory: str, options: Mapping[str, Any] | None) -> None:
        self.directory = directory
        self.uri = join_uri(directory, LEASE_NAME)
        self.fs, self.path = url_to_fs(self.uri, options)
        self.options = dict(options or {})

    @staticmethod
    def open(directory: str, options: Mapping[str, Any] | None) -> LeaseStore:
        """The store class that suits ``directory``'s filesystem."""
        fs, _ = url_to_fs(directory, options)
        protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
        if "file" in protocols or "local" in protocols:
            return LocalLeaseStore(directory, options)
        if "s3" in protocols and hasattr(fs, "call_s3"):
            return S3LeaseStore(directory, options)
        return LeaseStore(directory, options)

    def read(self) -> Version | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            mtime = _mtime(self.fs.info(self.path))
        except FileNotFoundError:
            mtime = None
        return Version(data, None, mtime)

    def create(self, data: bytes) -> Version | None:
        if self.read() is not None:
            return None
        write_text(self.uri, data.decode(), storage_options=self.options)
        return self.read()

    def replace(self, data: bytes, seen: Version) -> Version | None:
        now = self.read()
        if now is None or now.data != seen.data:
            return None
        write_text(self.uri, data.decode(), storage_options=self.options)
        return self.read()

    def delete(self, seen: Version) -> bool:
        now = self.read()
        if now is None or now.data != seen.data:
            return False
        self.fs.rm_file(self.path)
        return True

    def now(self) -> float | None:
        """The store's clock: the modification time of a probe written now."""
        probe = join_uri(self.directory, f"_lease.clock-{uuid.uuid4().hex[:12]}")
        fs, path = url_to_fs(probe, self.options)
        try:
            fs.pipe_file(path, b"")
            return _mtime(fs.info(path))
        finally:
            with contextlib.suppress(Exception):
                fs.rm_file(path)


class LocalLeaseStore(LeaseStore):
    """Local or shared POSIX directory: each change under an exclusive ``flock``."""

    conditional = True

    def __init__(self, directory: str, options: Mapping[str, Any] | None) -> None:
        super().__init__(directory, options)
        self.lock_path = os.path.join(os.path.dirname(self.path), LOCK_NAME)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.lock_path) or ".", exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> Version | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
                return Version(data, None, os.fstat(handle.fileno()).st_mtime)
        except FileNotFoundError:
            return None

    def _write(self, data: bytes) -> Version:
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        found = self.read()
        assert found is not None
        return found

    def create(self, data: bytes) -> Version | None:
        with self._locked():
            return None if self.read() is not None else self._write(data)

    def replace(self, data: bytes, seen: Version) -> Version | None:
        with self._locked():
            now = self.read()
            return self._write(data) if now is not None and now.data == seen.data else None

    def delete(self, seen: Version) -> bool:
        with self._locked():
            now = self.read()
            if now is None or now.data != seen.data:
                return False
            os.unlink(self.path)
            return True

    def now(self) -> float | None:
        with self._locked():
            os.utime(self.lock_path)  # stamped by the filesystem (its server, on NFS)
            return os.stat(self.lock_path).st_mtime


class S3LeaseStore(LeaseStore):
    """S3: conditional PUT/DELETE with ``If-None-Match``/``If-Match`` on the ETag. A
    server that answers them with NotImplemented is used as a plain store."""

    conditional = True

    def __init__(self, directory: str, options: Mapping[str, Any] | None) -> None:
        super().__init__(directory, options)
        self.bucket, self.key, _ = self.fs.split_path(self.path)

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        """One S3 call; None when its condition failed."""
        try:
            return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as error:
            if _not_implemented(error):  # a server without conditional writes
                self.conditional = False
                raise _Unconditional from error
            if _precondition_failed(error):
                return None
            raise

    def read(self) -> Version | None:
        # HEAD before GET: if the file changes in between, the bytes are newer than the
        # ETag, and a swap against that ETag fails (safe); the other order is not
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return Version(data, head["ETag"], _seconds(head.get("LastModified")))

    def _written(self, data: bytes, response: dict[str, Any] | None) -> Version | None:
        if response is None:
            return None
        self.fs.invalidate_cache(self.path)
        return Version(data, response.get("ETag"), None)

    def create(self, data: bytes) -> Version | None:
        try:
            return self._written(data, self._call("put_object", Body=data, IfNoneMatch="*"))
        except _Unconditional:
            return LeaseStore.create(self, data)

    def replace(self, data: bytes, seen: Version) -> Version | None:
        if not self.conditional or seen.tag is None:
            return LeaseStore.replace(self, data, seen)
        try:
            return self._written(data, self._call("put_object", Body=data, IfMatch=seen.tag))
        except _Unconditional:
            return LeaseStore.replace(self, data, seen)

    def delete(self, seen: Version) -> bool:
        if not self.conditional or seen.tag is None:
            return LeaseStore.delete(self, seen)
        try:
            done = self._call("delete_object", IfMatch=seen.tag) is not None
        except _Unconditional:
            return LeaseStore.delete(self, seen)
        self.fs.invalidate_cache(self.path)
        return done


class _Unconditional(Exception):
    """The store refused a conditional request as not implemented."""
