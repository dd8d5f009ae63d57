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
# What a video may declare before FFmpeg builds its index (``frameexit.video.limits``).
# Frames: over 9 h at 30 fps; FFmpeg's index and the frame table cost ~0.4 KB a frame,
# so a header that declares 20 M samples in 1 KB would take GBs. Pixels: DCI 8K
# (8192×4320) and everything smaller (UHD 8K, 4K, 1080p); 8192×8192 is refused, and a
# run that never needs 8K can lower it (4096×2160 = 8,847,360 refuses a 4096×4096 clip).
# Duration: one day.
DEFAULT_MAX_FRAMES = 1_000_000
DEFAULT_MAX_PIXELS = 8192 * 4320
DEFAULT_MAX_DURATION_S = 86_400.0
# Decoder memory one video may keep between reads (its open sessions' reference frames):
# 1080p keeps its sessions for the next step; larger frames release them after each read.
DEFAULT_IDLE_DECODER_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class DecodeOptions:
    """How to open and decode a video (see ``frameexit.video.reader`` for what each does).

    ``backend``: ``auto`` (= ``pyav`` today: for every index the frame a sequential
    decode outputs there, by construction) or ``decord`` (decord's own random access,
    opt-in: wrong on open GOPs, AVI, MPEG-TS, edit lists). ``fetch``: remote objects read
    ``whole``, by byte ``ranges``, or ``auto`` (ranges from ``range_min_bytes`` up).
    ``timeout_s``: total time for opening and every read of one video (None: no bound).
    ``max_bytes``: a larger video fails as ``too_large`` without being read (None: no
    limit). ``max_frames`` / ``max_pixels`` (width × height) / ``max_duration_s``: a
    video whose header declares more samples, larger frames or a longer duration fails as
    ``too_large`` before FFmpeg indexes it (MP4/MOV: read from the ``moov`` box; other
    containers: from the header FFmpeg read, before any frame table or decode; None: no
    limit); a decoded frame larger than ``max_pixels`` fails the same way.
    ``idle_decoder_bytes``: decoder memory (reference frames of its open sessions) a video
    may keep between reads; a video whose sessions need more closes them after each read
    and reopens at the next (None: always kept). ``threads``: FFmpeg decode threads. ``block_size``: bytes per ranged read
    (None: the source's default).
    """

    backend: str = setting("auto", fingerprint="decode_backend")
    fetch: str = setting("auto", resumable=True)
    timeout_s: float | None = setting(DEFAULT_TIMEOUT_S, resumable=True)
    range_min_bytes: int = setting(DEFAULT_RANGE_MIN_BYTES, resumable=True)
    max_bytes: int | None = setting(None)
    max_frames: int | None = setting(DEFAULT_MAX_FRAMES)
    max_pixels: int | None = setting(DEFAULT_MAX_PIXELS)
    max_duration_s: float | None = setting(DEFAULT_MAX_DURATION_S)
    idle_decoder_bytes: int | None = setting(DEFAULT_IDLE_DECODER_BYTES, resumable=True)
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
        for name in ("max_bytes", "max_frames", "max_pixels", "idle_decoder_bytes", "block_size"):
            if getattr(self, name) is not None:  # None: no limit / the source's default
                positive(prefix, name, getattr(self, name))
        if self.max_duration_s is not None:
            number(prefix, "max_duration_s", self.max_duration_s, minimum=0, open_low=True)

    @property
    def source_fetch(self) -> str:
        """The fetch mode the byte source uses: decord reads whole files, so for it
        ``auto`` means one whole-object GET (a ranged start would only add requests)."""
        return "whole" if self.backend == "decord" and self.fetch == "auto" else self.fetch

    def replace(self, **changes: Any) -> DecodeOptions:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)
