"""``DecodeOptions``: every setting of how a video is opened and decoded, in one place.

A run's config holds one (``data.decode``); ``open_video(uri, options)`` takes one. The
allowed values and the rules between fields are checked here, once, when the options
are made: a bad value raises :class:`frameexit.errors.ConfigError` naming the field
(``decode.backend``; ``data.decode.backend`` when it comes from a config).

Each field declares its roles (``frameexit.fields``): ``backend`` changes which pixels a
decode returns, so it is part of a labeling output's fingerprint (labels decoded by two
backends never mix in one output); the fetch and time settings change how a video is
read, not what it is, so a resumed training run may change them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from frameexit.config_parsing import choice, number, positive
from frameexit.errors import ConfigError
from frameexit.fields import setting

BACKENDS = ("auto", "pyav", "decord")
FETCH_MODES = ("auto", "whole", "ranges")
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RANGE_MIN_BYTES = 256 * 1024


@dataclass(frozen=True)
class DecodeOptions:
    """How to open and decode a video (see ``frameexit.video.reader`` for what each does).

    ``backend``: ``auto`` (= ``pyav`` today: for every index the frame a sequential
    decode outputs there, by construction) or ``decord`` (decord's own random access,
    opt-in: wrong on open GOPs, AVI, MPEG-TS, edit lists). ``fetch``: remote objects read
    ``whole``, by byte ``ranges``, or ``auto`` (ranges from ``range_min_bytes`` up).
    ``timeout_s``: total time for opening and every read of one video (None: no bound).
    ``max_bytes``: a larger video fails as ``too_large`` without being read (None: no
    limit). ``threads``: FFmpeg decode threads. ``block_size``: bytes per ranged read
    (None: the source's default).
    """

    backend: str = setting("auto", fingerprint="decode_backend")
    fetch: str = setting("auto", resumable=True)
    timeout_s: float | None = setting(DEFAULT_TIMEOUT_S, resumable=True)
    range_min_bytes: int = setting(DEFAULT_RANGE_MIN_BYTES, resumable=True)
    max_bytes: int | None = setting(None)
    threads: int = setting(1, resumable=True)
    block_size: int | None = setting(None, resumable=True)

    def __post_init__(self) -> None:
        self.check()

    def check(self, prefix: str = "decode") -> None:
        """Raise ``ConfigError`` naming ``{prefix}.field`` for a value not allowed (the
        value checks every config section uses)."""
        choice(prefix, "backend", self.backend, BACKENDS)
        choice(prefix, "fetch", self.fetch, FETCH_MODES)
        if self.backend == "decord" and self.fetch == "ranges":
            raise ConfigError(f"{prefix}.fetch", "backend decord reads whole files, not ranges")
        if self.timeout_s is not None:
            number(prefix, "timeout_s", self.timeout_s, minimum=0, open_low=True)
        positive(prefix, "range_min_bytes", self.range_min_bytes)
        positive(prefix, "threads", self.threads)
        for name in ("max_bytes", "block_size"):  # None: no limit / the source's default
            if getattr(self, name) is not None:
                positive(prefix, name, getattr(self, name))

    @property
    def source_fetch(self) -> str:
        """The fetch mode the byte source uses: decord reads whole files, so for it
        ``auto`` means one whole-object GET (a ranged start would only add requests)."""
        return "whole" if self.backend == "decord" and self.fetch == "auto" else self.fetch

    def replace(self, **changes: Any) -> DecodeOptions:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)
