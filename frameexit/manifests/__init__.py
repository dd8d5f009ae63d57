"""Dataset manifests: ActivityNet JSON, Kinetics / HVU CSV, plain CSV/Parquet → one schema.

Every reader produces the same table (the canonical form, stored as Parquet)::

    video       string            URI of the video file (any fsspec URI)
    labels      list<string>      class names; [] for an unlabeled row (labeling input)
    label_ids   list<int32>       indices into the class map, same order as ``labels``
    split       string            train | val | test | ... (see ``normalize_split``)
    start, end  double, nullable  segment of the file to use, seconds; null = whole file
    duration    double, nullable  seconds (of the segment when start/end are set)
    num_frames  int32, nullable   where known
    ...extras   any other columns (``difficulty``, ``youtube_id``, ``segments`` ...)

Loading::

    file ──parse──► rows ──validate──► duplicates? ──class map──► label_ids ──► ManifestLoad
                      │                    │              │
                      └────────────────────┴──────────────┴──► bad_rows (line, reason, raw)

Bad rows (missing fields, unparsable times, empty label, a label unknown to a given
class map, a duplicate video in the same split, ...) are reported with their line and
reason and never stop the rest; a file that cannot be parsed at all raises
``ManifestError`` naming its URI. ``line`` is the 1-based text line for CSV (header =
line 1), the line of the video's key for JSON, and the 1-based row number for Parquet.
A CSV field over 131,072 characters fails its row only. A row whose video lies outside
the allowed prefixes (``data.allowed_prefixes``; default: the manifest's bucket or
folder tree, the video root, the synthetic default corpus), climbs above the video root
with ``..``, or is plain http(s) / a metadata host, is a bad row too, before anything
opens it (``frameexit.confinement``).

Class map: a list of class names whose positions are the label ids. It is taken from
``class_names`` when given, else from ``classes.json`` beside the manifest when present,
else built once from the sorted label names of the good rows and saved there as
``classes.json`` — so loading ``train.csv`` first and then ``val.csv`` from the same folder
gives val the train map. With a given or stored map, a label not in it is a bad row.

Video URIs for the datasets that name videos by id are built from a pattern (Python
``str.format``) and ``video_root`` (default: the manifest's folder):

- ActivityNet v1.3: ``{root}/v_{id}.mp4`` (fields: ``root``, ``id``, ``subset``, ``split``).
- Kinetics / Mini-Kinetics and HVU:
  ``{root}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (fields: ``root``,
  ``youtube_id``, ``time_start``, ``time_end``, ``label`` (first label), ``split``).
  Such files are pre-trimmed clips, so ``start``/``end`` stay null and the YouTube
  times are kept in the ``time_start``/``time_end`` columns. A pattern that does not use
  ``time_start`` (e.g. ``{root}/{youtube_id}.mp4``, full videos) sets ``start``/``end``
  to the clip's times instead.

Modules::

    schema        MANIFEST_SCHEMA · CORE_COLUMNS · BAD_ROW_COLUMNS · Row · to_arrow
                  write_manifest · read_manifest_parquet
    classmap      CLASS_MAP_NAME · class_map_uri_for · read_class_names · write_class_names
                  class-map resolution and label ids
    parsing       what every reader shares: Source, values, CSV records, splits, bad rows
    activitynet · kinetics · hvu · plain (CSV and Parquet)   one reader per format
    loader        detect_format · load_manifest · READERS (format name → reader)
"""

from __future__ import annotations

from frameexit.manifests.classmap import (
    CLASS_MAP_NAME,
    class_map_uri_for,
    read_class_names,
    write_class_names,
)
from frameexit.manifests.loader import (
    DEFAULT_URI_PATTERNS,
    FORMATS,
    ManifestLoad,
    detect_format,
    load_manifest,
)
from frameexit.manifests.parsing import normalize_split
from frameexit.manifests.schema import (
    BAD_ROW_COLUMNS,
    CORE_COLUMNS,
    MANIFEST_SCHEMA,
    read_manifest_parquet,
    to_arrow,
    write_manifest,
)

__all__ = [
    "BAD_ROW_COLUMNS",
    "CLASS_MAP_NAME",
    "CORE_COLUMNS",
    "DEFAULT_URI_PATTERNS",
    "FORMATS",
    "MANIFEST_SCHEMA",
    "ManifestLoad",
    "class_map_uri_for",
    "detect_format",
    "load_manifest",
    "normalize_split",
    "read_class_names",
    "read_manifest_parquet",
    "to_arrow",
    "write_class_names",
    "write_manifest",
]
