"""Typed errors. Each carries the offending URI or config field so a user can act on it."""

from __future__ import annotations


class FrameExitError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(FrameExitError, ValueError):
    """A configuration value is invalid; ``field`` is its dotted name (``model.num_steps``)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    def __reduce__(self):  # keep the fields when pickled across processes (Ray)
        return (type(self), (self.field, self.reason))


class VideoDecodeError(FrameExitError):
    """A video could not be read.

    ``kind`` says why, and whether trying again later can help (:attr:`retryable`):

    * final — the file itself: ``missing``, ``empty``, ``truncated`` (no decodable frame),
      ``not_video``, ``unreadable`` (damaged data), ``index_out_of_range``, ``too_large``
      (over ``data.decode.max_bytes``, or a header declaring more than
      ``max_frames``/``max_pixels``/``max_duration_s``), ``crashed`` (decoding it killed its worker twice);
    * retryable — the storage or the moment: ``timeout`` (over the decode time budget),
      ``access_denied`` (credentials or permissions: fix the configuration, not the
      file), ``throttled`` (503 SlowDown / 429 after the client's own retries),
      ``unavailable`` (connection refused or reset, 5xx).
    """

    FINAL = (
        "missing",
        "empty",
        "truncated",
        "not_video",
        "unreadable",
        "index_out_of_range",
        "too_large",
        "crashed",
    )
    RETRYABLE = ("timeout", "access_denied", "throttled", "unavailable")
    KINDS = FINAL + RETRYABLE

    @property
    def retryable(self) -> bool:
        """True when a later attempt may succeed without changing the file."""
        return self.kind in self.RETRYABLE

    def __init__(self, uri: str, kind: str, reason: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown VideoDecodeError kind {kind!r}")
        self.uri = uri
        self.kind = kind
        self.reason = reason
        super().__init__(f"{uri}: {kind}: {reason}")

    def __reduce__(self):  # keep the fields when pickled across processes (Ray)
        return (type(self), (self.uri, self.kind, self.reason))


class ManifestError(FrameExitError):
    """A manifest (or one of its rows) is unreadable; ``line`` is 1-based where known."""

    def __init__(self, uri: str, reason: str, line: int | None = None) -> None:
        self.uri = uri
        self.reason = reason
        self.line = line
        where = f"{uri}:{line}" if line is not None else uri
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return (type(self), (self.uri, self.reason, self.line))


class CheckpointError(FrameExitError):
    """A checkpoint cannot be loaded into the model (missing/unexpected keys, shapes)."""

    @classmethod
    def mismatch(
        cls,
        what: str,
        *,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[str],
        limit: int = 10,
    ) -> CheckpointError | None:
        """The error for a state_dict that does not fit (``what`` says which, e.g. "x.pt:
        does not fit the backbone trunk"), listing up to ``limit`` keys of each kind; None
        when everything fits."""

        def listing(keys: list[str]) -> str:
            shown = ", ".join(keys[:limit])
            return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (file vs model): {listing(mismatched)}")
        return cls(f"{what}; " + "; ".join(parts)) if parts else None


class LeaseLost(FrameExitError):
    """This writer no longer holds the lease of its output or run (another writer took it
    over, or it could not renew in time); it stopped before writing more (exit 1)."""
