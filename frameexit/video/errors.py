"""One failure while reading a video -> one typed ``VideoDecodeError``: ``classify_failure``.

Every place that turns an exception into a ``VideoDecodeError`` kind calls it: the
``Source`` (fetching bytes), the reader (opening the container, decoding frames),
``frameexit.inference`` (anything else that fails for one video). What an exception can
mean depends on what was being done (``stage``): a ``FileNotFoundError`` while fetching
is a ``missing`` object, an FFmpeg error while opening is diagnosed from the bytes
(``containers``), and the storage layer (``storage.classify_storage_error``) says which
storage failures are retryable.
"""

from __future__ import annotations

from typing import Any

from frameexit.errors import VideoDecodeError
from frameexit.storage import classify_storage_error
from frameexit.video.containers import CONTAINER_NAMES, sniff, structural_damage

STAGES = ("fetch", "open", "decode", "other")


class Cancelled(Exception):
    """Raised by a read or a decode loop when the watchdog has given up on this video
    (its time budget ran out): the work stops at the next byte read or packet."""


def classify_failure(
    uri: str, exc: BaseException, *, stage: str = "other", source: Any = None
) -> VideoDecodeError:
    """``exc``, raised while reading ``uri``, as a ``VideoDecodeError`` (returned as it is
    if it already is one; the message never includes storage options).

    ``stage`` says what was being done:

    ``fetch``  reading bytes from storage: ``missing``, ``access_denied`` or the retryable
               kinds (``storage.classify_storage_error``), else ``unreadable``;
    ``open``   opening the container from ``source`` (``size``, ``read_at``): a missing or
               forbidden file as at ``fetch``, anything else diagnosed from the bytes:
               ``truncated`` (declared sizes run past the end, an MP4 without ``moov``),
               ``unreadable`` (other damage to a recognised container) or ``not_video``;
    ``decode`` decoding frames: a storage failure as at ``fetch``, else ``unreadable``;
    ``other``  anything else (transforms, the caller's own code): ``unreadable``.
    """
    if isinstance(exc, VideoDecodeError):
        return exc
    if isinstance(exc, Cancelled):
        return VideoDecodeError(uri, "timeout", "cancelled: the time budget ran out")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == "open":
        if isinstance(exc, FileNotFoundError | PermissionError):
            return _storage_failure(uri, exc)
        return _container_failure(uri, exc, source)
    if stage == "fetch" or (stage == "decode" and classify_storage_error(exc) is not None):
        return _storage_failure(uri, exc)
    during = " while decoding" if stage == "decode" else ""
    return VideoDecodeError(uri, "unreadable", f"{type(exc).__name__}{during}: {exc}")


def _storage_failure(uri: str, exc: BaseException) -> VideoDecodeError:
    if isinstance(exc, FileNotFoundError):
        return VideoDecodeError(uri, "missing", "no such file or object")
    if isinstance(exc, IsADirectoryError):
        return VideoDecodeError(uri, "missing", "is a directory, not a file")
    if isinstance(exc, PermissionError):
        return VideoDecodeError(
            uri, "access_denied", f"access denied (check credentials/permissions): {exc}"
        )
    kind = classify_storage_error(exc)  # throttled / unavailable / timeout: retryable
    return VideoDecodeError(uri, kind or "unreadable", f"{type(exc).__name__}: {exc}")


def _container_failure(uri: str, exc: BaseException, source: Any) -> VideoDecodeError:
    """Why a demuxer could not open the bytes of ``source``."""
    detail = f"{type(exc).__name__}: {exc}"
    container = sniff(source.read_at)
    if container is None:
        return VideoDecodeError(uri, "not_video", f"not a video container ({detail})")
    damage = structural_damage(source.read_at, source.size, container)
    if damage is not None:
        return VideoDecodeError(uri, *damage)
    return VideoDecodeError(uri, "unreadable", f"damaged {CONTAINER_NAMES[container]}: {detail}")
