"""From the annotation files a dataset ships (and/or a video bucket) to one canonical
manifest: ``frameexit prepare``.

::

    train.csv  val.csv  test.csv          (Kinetics-400/600/700, Mini-Kinetics: one per split)
    activity_net.v1-3.min.json            (ActivityNet v1.3: every split in one file)
    hvu_train.csv  hvu_val.csv            (HVU: one per split, tags)
    s3://bucket/videos/<class>/<file>     (a prefix whose folder names are the classes)
        │ pass 1: read every input, collect every label            (load_manifest each)
        │ one class map over all inputs, sorted (a class absent from val keeps its id)
        │ pass 2: label ids from that map; segments kept (segment level) or merged into
        │         one multi-label row per video and split (video level)
        │ duplicates across files reported; annotation rows whose video is not in the
        │ video root(s) reported (one listing per root, not a request per video)
        ▼
    manifest.parquet + classes.json beside it + prepare_report.json
    + prepare_bad_rows.parquet + prepare_missing_videos.parquet (always, even when empty
      or when no row is usable; an input none of whose videos is found gets the
      --uri-pattern that finds them in the report and the error: ``suggest_uri_pattern``)

Splits: an input may name its split (``train=path``); otherwise a file's own ``split`` /
``subset`` column, or its name (``..._val.csv``), decides. Training on segment rows
decodes only the frames of ``[start, end)`` (``frameexit.sampling.segment_window``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from frameexit.errors import ConfigError, ManifestError
from frameexit.manifests.classmap import CLASS_MAP_NAME, write_class_names
from frameexit.manifests.layouts import (
    HINT_PATTERNS,
    VIDEO_SUFFIXES,
    quiet_readers,
    suggest_uri_pattern,
)
from frameexit.manifests.loader import load_manifest
from frameexit.manifests.parsing import BadRow, bad_record, normalize_split, parse_segment
from frameexit.manifests.schema import write_manifest
from frameexit.storage import (
    absolute_uri,
    install_secret_filter,
    is_local,
    join_uri,
    list_files,
    parent_uri,
    write_parquet,
    write_text,
)

log = logging.getLogger("frameexit.manifests")

LEVELS = ("segment", "video")


@dataclass
class PrepareReport:
    """What ``prepare`` did: counts per split, and the rows it could not use."""

    manifest: str
    classes: list[str]
    rows_per_split: dict[str, int]
    bad_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing_videos: pd.DataFrame = field(default_factory=pd.DataFrame)
    duplicates: int = 0
    #: per input none of whose videos was found: the ``--uri-pattern`` that finds most
    uri_pattern_hints: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe summary (what ``prepare_report.json`` holds)."""
        return {
            "manifest": self.manifest,
            "classes": len(self.classes),
            "rows_per_split": dict(self.rows_per_split),
            "bad_rows": int(len(self.bad_rows)),
            "missing_videos": int(len(self.missing_videos)),
            "duplicates": int(self.duplicates),
            "uri_pattern_hints": dict(self.uri_pattern_hints),
        }


def parse_input(text: str) -> tuple[str, str | None]:
    """``split=uri`` → ``(uri, split)``; a plain URI → ``(uri, None)``."""
    head, sep, rest = text.partition("=")
    if sep and "/" not in head and ":" not in head and head:
        return rest, normalize_split(head)
    return text, None


def folder_corpus(prefix: str, *, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A corpus laid out as ``prefix/[split/]class/video``: one row per video file, its
    class from its folder, its split from a ``train``/``val``/``test`` folder above it."""
    root = absolute_uri(prefix)
    files = list_files(root, suffixes=VIDEO_SUFFIXES, storage_options=storage_options)
    rows = []
    for uri in files:
        parts = absolute_uri(uri)[len(root) :].strip("/").split("/")
        if len(parts) < 2:
            continue  # a video directly under the prefix has no class folder
        split = "unassigned"
        if len(parts) >= 3 and normalize_split(parts[0]) in ("train", "val", "test"):
            split = normalize_split(parts[0])
        rows.append({"video": uri, "labels": [parts[-2]], "split": split})
    if not rows:
        raise ManifestError(prefix, "no video files in class folders under this prefix")
    return pd.DataFrame(rows)


def prepare_manifest(
    inputs: Sequence[str],
    output: str,
    *,
    fmt: str | None = None,
    video_root: str | None = None,
    uri_pattern: str | None = None,
    level: str = "video",
    check_videos: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    allowed_prefixes: Sequence[str] | None = None,
    allow_http: bool = False,
) -> PrepareReport:
    """Merge annotation files (and/or folder corpora: inputs that are directories) into
    one canonical manifest at ``output`` with ``classes.json`` beside it.

    ``level``: ``video`` (the paper's task: classify whole videos) merges a video's rows
    of one split into one row with the union of their labels; ``segment`` keeps every
    ``[start, end)`` segment as its own row with its own label (ActivityNet's annotated
    segments become rows), for segment-level tasks.
    ``check_videos`` lists each video root once and reports annotation rows whose video
    is not there (they are left out of the manifest).
    ``allowed_prefixes`` / ``allow_http``: where annotation rows may point
    (``data.allowed_prefixes``, ``data.allow_http``; see ``frameexit.confinement``); a
    row outside is a bad row, as is a segment with a missing, negative, non-finite or
    inverted bound or a label outside the class map (``level="segment"``).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    options = dict(storage_options or {})
    confine = {"allowed_prefixes": allowed_prefixes, "allow_http": allow_http}
    sources = [parse_input(text) for text in inputs]
    # pass 1: every label of every input, for one class map (quiet: pass 2 reads the
    # same files and says what is wrong with them once)
    frames = []
    with quiet_readers(everything=True):
        for uri, split in sources:
            frame, _, _ = _read(uri, split, fmt, video_root, uri_pattern, options, None, **confine)
            frames.append(frame)
    names = sorted({label for frame in frames for labels in frame["labels"] for label in labels})
    # pass 2: label ids from the shared map
    frames, bads, formats = [], [], {}
    with quiet_readers(everything=False):
        for uri, split in sources:
            frame, bad, formats[uri] = _read(
                uri, split, fmt, video_root, uri_pattern, options, names, **confine
            )
            frames.append(frame.assign(source=uri))
            bads.append(bad.assign(source=uri))
    table = pd.concat(frames, ignore_index=True)
    if level == "segment":
        table, bad_segments = _explode_segments(table, names)
        bads.append(bad_segments)
    bad_rows = pd.concat(bads, ignore_index=True)
    table, duplicates = _drop_duplicates(table)
    if level == "video":
        table = _merge_segments(table, names)
    missing = pd.DataFrame(columns=["video", "split", "source"])
    hints: dict[str, str] = {}
    if check_videos:
        present = _listed_videos(table, video_root, options)
        known = table["video"].map(absolute_uri).isin(present)
        missing = table.loc[~known, ["video", "split", "source"]].reset_index(drop=True)
        table = table[known].reset_index(drop=True)
        for uri, split in sources:
            if (
                formats[uri] in HINT_PATTERNS
                and (missing["source"] == uri).any()
                and not (table["source"] == uri).any()
            ):
                hint = suggest_uri_pattern(uri, split, formats[uri], video_root, options, **confine)
                if hint:
                    hints[uri] = hint
    out = absolute_uri(output)
    folder = parent_uri(out)
    report = PrepareReport(
        manifest=out if not table.empty else "",
        classes=names,
        rows_per_split={
            str(k): int(v) for k, v in table["split"].value_counts().sort_index().items()
        },
        bad_rows=bad_rows,
        missing_videos=missing,
        duplicates=duplicates,
        uri_pattern_hints=hints,
    )
    _write_reports(report, folder, options)
    _warn_once(report, folder, hints=not table.empty)  # else the error states them
    if table.empty:
        why = "every annotation was bad or has no video"
        if hints:
            why += "; " + "; ".join(f"{uri}: {hint}" for uri, hint in hints.items())
        raise ManifestError(output, f"no usable row: {why} (reports in {folder})")
    write_manifest(table.drop(columns=["source"]), out, storage_options=options or None)
    write_class_names(names, join_uri(folder, CLASS_MAP_NAME), storage_options=options)
    return report


BAD_REPORT = "prepare_bad_rows.parquet"
MISSING_REPORT = "prepare_missing_videos.parquet"


def _write_reports(report: PrepareReport, folder: str, options: dict[str, Any]) -> None:
    """``prepare_report.json`` and both row reports, always (empty when nothing was left
    out), so a user finds them where ``--help`` says, whatever happened."""
    write_text(join_uri(folder, "prepare_report.json"), json.dumps(report.summary(), indent=1),
               storage_options=options)  # fmt: skip
    bad = report.bad_rows.reindex(columns=["line", "reason", "raw", "source"])
    missing = report.missing_videos.reindex(columns=["video", "split", "source"])
    for name, frame in ((BAD_REPORT, bad), (MISSING_REPORT, missing)):
        write_parquet(join_uri(folder, name), frame.astype(str), storage_options=options)


def _warn_once(report: PrepareReport, folder: str, *, hints: bool) -> None:
    """One warning per input with bad rows, one for missing videos, one per hint."""
    bad = report.bad_rows
    for source, rows in bad.groupby("source", sort=False) if len(bad) else ():
        first = rows.iloc[0]
        line = "" if pd.isna(first["line"]) else f"line {first['line']}: "
        log.warning("%s: %d bad row(s) left out, listed in %s (first: %s%s)", source,
                    len(rows), join_uri(folder, BAD_REPORT), line, first["reason"])  # fmt: skip
    if len(report.missing_videos):
        log.warning("%d row(s) whose video is not under the video root left out, listed in %s",
                    len(report.missing_videos), join_uri(folder, MISSING_REPORT))  # fmt: skip
    for source, hint in report.uri_pattern_hints.items() if hints else ():
        log.warning("%s: no video found; %s", source, hint)


def _read(
    uri: str,
    split: str | None,
    fmt: str | None,
    video_root: str | None,
    uri_pattern: str | None,
    options: dict[str, Any],
    class_names: list[str] | None,
    *,
    allowed_prefixes: Sequence[str] | None,
    allow_http: bool,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """One input as canonical rows (a folder corpus or an annotation file), its bad
    rows and its format (``folder`` for a folder corpus); ``class_names`` None: labels as
    found (pass 1). A folder corpus is a listing of the prefix the user named, so only
    annotation rows are confined."""
    from frameexit.storage import url_to_fs

    fs, path = url_to_fs(uri, options)
    if fs.isdir(path):
        frame = folder_corpus(uri, storage_options=options)
        if split:
            frame["split"] = split
        if class_names is not None:
            index = {name: i for i, name in enumerate(class_names)}
            frame["label_ids"] = frame["labels"].map(lambda ls: [index[label] for label in ls])
        return frame, pd.DataFrame(columns=["line", "reason", "raw"]), "folder"
    loaded = load_manifest(
        uri,
        fmt=fmt,
        video_root=video_root,
        uri_pattern=uri_pattern,
        split=split,
        class_names=class_names if class_names is not None else None,
        save_class_map=False,
        duplicates="keep",
        storage_options=options or None,
        allowed_prefixes=allowed_prefixes,
        allow_http=allow_http,
    )
    frame = loaded.table
    if split:
        frame["split"] = split
    return frame, loaded.bad_rows, loaded.fmt


def _key(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _drop_duplicates(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows repeating an earlier (video, segment, split) are dropped and counted (a video
    in two files of the same split, or listed twice)."""
    keys = list(
        zip(
            table["video"],
            table["start"].map(_key) if "start" in table else [None] * len(table),
            table["end"].map(_key) if "end" in table else [None] * len(table),
            table["split"],
            strict=True,
        )
    )
    seen: set[Any] = set()
    keep = []
    for key in keys:
        keep.append(key not in seen)
        seen.add(key)
    mask = pd.Series(keep, index=table.index)
    dropped = int((~mask).sum())
    if dropped:
        log.warning("%d duplicate rows (same video, segment and split) left out", dropped)
    return table[mask].reset_index(drop=True), dropped


def _explode_segments(table: pd.DataFrame, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows that list annotated ``segments`` (ActivityNet) become one row per segment; a
    segment that cannot be one (see ``parse_segment``) is a bad row of its own, and the
    video's other segments stay."""
    bad = pd.DataFrame(columns=["line", "reason", "raw", "source"])
    if "segments" not in table:
        return table, bad
    index = {name: i for i, name in enumerate(names)}
    rows, bads = [], []
    for row in table.to_dict("records"):
        segments = row.get("segments")
        if not isinstance(segments, list) or not segments:
            rows.append(row)
            continue
        for number, segment in enumerate(segments, start=1):
            try:
                label, start, end = parse_segment(segment, number, index)
            except BadRow as error:
                raw = json.dumps({"video": row["video"], "segment": segment}, default=str)
                bads.append({**bad_record(None, str(error), raw), "source": row.get("source")})
                continue
            rows.append(
                {**row, "labels": [label], "label_ids": [index[label]], "start": start,
                 "end": end, "duration": end - start, "segments": [segment]}
            )  # fmt: skip
    if bads:  # reported with the other bad rows (_warn_once)
        bad = pd.DataFrame(bads, columns=list(bad.columns))
    return pd.DataFrame(rows, columns=table.columns), bad


def _merge_segments(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per (video, split): the union of its rows' labels, the whole file. A
    video annotated by one row keeps that row's segment (a Kinetics clip's times in a
    full YouTube video, ``--uri-pattern '{root}/{youtube_id}.mp4'``): its label is
    only known for that part of the file."""
    index = {name: i for i, name in enumerate(names)}
    merged = []
    for (video, split), group in table.groupby(["video", "split"], sort=False):
        labels = sorted({label for ls in group["labels"] for label in ls}, key=index.__getitem__)
        row = group.iloc[0].to_dict()
        row.update(labels=labels, label_ids=[index[label] for label in labels], video=video,
                   split=split)  # fmt: skip
        if len(group) > 1:
            row.update(start=float("nan"), end=float("nan"))
            if "duration" in row:
                row["duration"] = float("nan")
        merged.append(row)
    return pd.DataFrame(merged)


def _listed_videos(
    table: pd.DataFrame, video_root: str | None, options: dict[str, Any]
) -> set[str]:
    """Every video file under the roots the manifest's videos live in (one listing each)."""
    roots = {absolute_uri(video_root)} if video_root else set()
    if not roots:
        roots = {parent_uri(absolute_uri(v)) for v in table["video"]}
    present: set[str] = set()
    for root in sorted(roots):
        try:
            files = list_files(root, recursive=bool(video_root), storage_options=options)
        except FileNotFoundError:
            continue
        present.update(absolute_uri(f) for f in files)
    if not is_local(next(iter(roots), "")) and not present:
        log.warning("no video listed under %s: check the video root and credentials", roots)
    return present


def split_overrides(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments → ``(inputs, config overrides)``: ``a.b=value`` (a dotted
    key, ``data.storage_options.key=...``) is an override; ``split=uri`` and a plain URI
    are inputs."""
    overrides, inputs = [], []
    for text in arguments:
        head, sep, _ = text.partition("=")
        dotted = sep and "." in head and not any(c in head for c in "/:\\")
        (overrides if dotted else inputs).append(text)
    return inputs, overrides


def prepare_options(
    config_file: str | None, overrides: Sequence[str], storage_json: str = "{}"
) -> tuple[dict[str, Any], list[str], bool]:
    """``(storage_options, allowed_prefixes, allow_http)`` from the same sources as the
    other commands: ``--config`` YAML and ``data.*`` overrides (``data.storage_options``,
    ``data.allowed_prefixes``, ``data.allow_http``), then the ``--storage-options`` JSON
    (kept for compatibility) on top. Credentials that fsspec finds itself (environment,
    ``~/.aws``, an instance role) need none of them."""
    try:
        flag = json.loads(storage_json)
    except ValueError as error:  # the message quotes no part of the text (secrets)
        raise ConfigError(
            "data.storage_options", f"--storage-options is not JSON ({error.args[0]})"
        ) from None
    if not isinstance(flag, dict):
        raise ConfigError("data.storage_options", "--storage-options must be a JSON object")
    if not config_file and not overrides:  # the defaults, without importing the model zoo
        return flag, [], False
    from frameexit.config import load_config

    data = load_config(config_file, overrides).data
    return {**data.storage_options, **flag}, list(data.allowed_prefixes), bool(data.allow_http)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``frameexit prepare train=train.csv val=val.csv --output manifest.parquet ...``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="frameexit prepare",
        description="Annotation files (ActivityNet JSON, Kinetics/Mini-Kinetics CSVs, HVU "
        "CSVs, plain CSV/Parquet) and/or a prefix whose folders are classes -> one "
        "canonical Parquet manifest with classes.json beside it.",
        epilog="Each input is URI or split=URI (train=k400_train.csv); data.KEY=VALUE "
        "arguments are config overrides. Credentials and endpoint: the environment / "
        "~/.aws / an instance role as fsspec finds them, or data.storage_options from "
        "--config or overrides (data.storage_options.endpoint_url=...). Rows may point "
        "only under data.allowed_prefixes (default: the annotation file's bucket or "
        "folder and the video root). Rows whose video is not under the video root are "
        "reported in prepare_missing_videos.parquet, bad rows in prepare_bad_rows.parquet, "
        "both beside the manifest and always written; when none of an input's videos is "
        "found, the common layouts are tried and the --uri-pattern that finds them is "
        "named. A header that does not fit --format is refused. Exit codes: 0 done, 2 bad arguments or an unreadable "
        "manifest, 3 runtime failure.",
    )
    parser.add_argument(
        "inputs", nargs="+", help="annotation files or folder prefixes; data.x=y overrides"
    )
    parser.add_argument("--output", required=True, help="manifest URI (.parquet)")
    parser.add_argument("--format", dest="fmt", help="activitynet|kinetics|hvu|csv|parquet")
    parser.add_argument("--video-root", help="folder the videos live in (default: beside)")
    parser.add_argument(
        "--uri-pattern",
        help="how an id becomes a URI, e.g. {root}/{youtube_id}_{time_start:06d}_"
        "{time_end:06d}.mp4 (Kinetics' default)",
    )
    parser.add_argument(
        "--level", choices=LEVELS, default="video", help="rows per video or segment"
    )
    parser.add_argument("--no-check-videos", action="store_true", help="do not list the root")
    parser.add_argument("--config", help="YAML config (data.storage_options, allowed_prefixes)")
    parser.add_argument(
        "--storage-options", default="{}", help="fsspec options as JSON (prefer --config)"
    )
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    install_secret_filter()  # prepare logs outside run_command: mask credentials here too
    inputs, overrides = split_overrides(args.inputs)
    if not inputs:
        parser.error("no annotation file or folder given")
    options, allowed, allow_http = prepare_options(args.config, overrides, args.storage_options)
    report = prepare_manifest(
        inputs,
        args.output,
        fmt=args.fmt,
        video_root=args.video_root,
        uri_pattern=args.uri_pattern,
        level=args.level,
        check_videos=not args.no_check_videos,
        storage_options=options,
        allowed_prefixes=allowed,
        allow_http=allow_http,
    )
    summary = report.summary()
    print(json.dumps(summary, indent=1), flush=True)
    return summary
