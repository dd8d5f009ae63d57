"""Where a dataset's videos are, when the URI pattern of its annotation file finds none:
the common download layouts (``{youtube_id}.mp4``, class folders, split folders, other
containers) tried against one listing of the video root, and the ``--uri-pattern`` of
``frameexit prepare`` that finds the most videos. Also the quiet reads ``prepare`` makes
(a file read twice says what is wrong with it once)."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from frameexit.manifests.loader import load_manifest
from frameexit.storage import absolute_uri, list_files, parent_uri

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".ts", ".mpg", ".mpeg")


@contextlib.contextmanager
def quiet_readers(*, everything: bool) -> Iterator[None]:
    """Hold back the manifest readers' log records while ``prepare`` reads: all of them
    (``everything``: a read whose findings are repeated later), or only the loader's
    per-file bad-row line, which ``prepare`` restates once naming its report file."""
    logger = logging.getLogger("frameexit.manifests")

    def keep(record: logging.LogRecord) -> bool:
        if record.module == "prepare":
            return True
        return not everything and record.funcName != "_bad_rows_frame"

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


#: the video layouts tried when no video of an input is found, per format ({ext}: the
#: video suffixes found under the root, most common first)
_CLIP = "{youtube_id}_{time_start:06d}_{time_end:06d}"
HINT_PATTERNS: dict[str, tuple[str, ...]] = {
    "kinetics": tuple(
        f"{{root}}/{folder}{name}{{ext}}"
        for folder in ("", "{label}/", "{split}/", "{split}/{label}/")
        for name in (_CLIP, "{youtube_id}")
    ),
    "activitynet": tuple(
        f"{{root}}/{folder}{name}{{ext}}"
        for folder in ("", "{split}/", "{subset}/")
        for name in ("v_{id}", "{id}")
    ),
}
HINT_PATTERNS["hvu"] = HINT_PATTERNS["kinetics"]


def suggest_uri_pattern(
    uri: str,
    split: str | None,
    fmt: str,
    video_root: str | None,
    options: Mapping[str, Any],
    *,
    allowed_prefixes: Sequence[str] | None = None,
    allow_http: bool = False,
) -> str | None:
    """When none of ``uri``'s videos is where its URI pattern says: the common layouts
    (:data:`HINT_PATTERNS`) tried against one listing of the video root, and a sentence
    naming the ``--uri-pattern`` that finds the most of them (None when none finds any)."""
    root = absolute_uri(video_root) if video_root else parent_uri(absolute_uri(uri))
    try:
        files = list_files(root, suffixes=VIDEO_SUFFIXES, storage_options=options)
    except FileNotFoundError:
        return None
    present = {absolute_uri(f) for f in files}
    suffixes = Counter("." + f.rsplit(".", 1)[-1] for f in present)
    best: tuple[int, int, str] | None = None
    with quiet_readers(everything=True):
        for ext, _ in suffixes.most_common():
            for template in HINT_PATTERNS[fmt]:
                pattern = template.replace("{ext}", ext)
                loaded = load_manifest(
                    uri, fmt=fmt, video_root=video_root, uri_pattern=pattern, split=split,
                    class_names=None, save_class_map=False, duplicates="keep",
                    storage_options=dict(options) or None, allowed_prefixes=allowed_prefixes,
                    allow_http=allow_http,
                )  # fmt: skip
                videos = loaded.table["video"]
                found = int(videos.map(absolute_uri).isin(present).sum()) if len(videos) else 0
                if found and (best is None or found > best[0]):
                    best = (found, len(videos), pattern)
    if best is None:
        return None
    found, total, pattern = best
    return (
        f"{found} of its {total} rows match --uri-pattern '{pattern}' under {root} (rerun with it)"
    )
