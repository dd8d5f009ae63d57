"""Corpus labeling with early exit: inputs, the model actor, atomic parts, resume.

::

    --input: manifest (any format load_manifest reads) | prefix/directory (listed)
      │  driver: one input row per entry, with a stable ``input_id``;
      │  unparsable manifest rows become rows with status ``bad_manifest_row``
      │  resume: ids already in committed parts are dropped
      ▼
    Ray Data: from_items(blocks) ─► map_batches(VideoLabeler, pool of label.concurrency
      │  actors, label.cpus_per_actor / label.gpus_per_actor each, 2 batches in flight per
      │  actor so one decodes while the other waits on storage or runs the model)
      │  per batch of label.batch_size videos, on a pool of decode threads (decord and
      │  PyAV release the GIL):
      │    open every video once (one GET / local file) ─► N ─► policy(N, T) indices
      │    FrameExit.early_exit(frame_source, B): at step t decode *only* frame π_t of the
      │    videos still running, transform, Φ, Ψ, f_t, g_t; exited videos leave the batch
      │    (compaction) and are never read again; a video that fails at any step gets its
      │    error row (its slot is fed a blank frame and its answer dropped), the rest go on
      ▼
    driver: iter_batches ─► buffer ─► part-<hash of its input ids>.parquet, written to a
            temporary name and renamed (local) or PUT in one request (object stores)

Exactly once. Every input row has an ``input_id`` (the video URI; ``URI#k`` for the k-th
repeat of a URI; ``manifest-line-N`` for a bad manifest row). A part is visible only
when complete (atomic commit), and its name is a hash of the ids it holds, so committing
the same rows twice replaces the file with the same content instead of adding rows. A
rerun reads the ids of the committed parts and labels only the rest, so after any
interruption the output converges to one row per input. :func:`read_labels` reads the
parts (and drops a duplicate id should two writers ever have raced on one output).

Output directory (any fsspec URI)::

    part-<16 hex>.parquet   the rows (schema: ``OUTPUT_SCHEMA``)
    _labeling.json          what produced them (model, exit settings, input); a rerun with
                            different settings refuses to mix rows (use --overwrite)
    _config.yaml            the resolved config
    _summary.json           the last run's summary and totals over all parts

Readers of the directory (pandas, pyarrow, Ray Data) skip ``_``/``.`` files, so
``pd.read_parquet(output)`` gives exactly the rows.

One concept per file: ``schema`` (row schema, statuses, file names), ``inputs`` (--input
as rows), ``parts`` (the commit protocol), ``actor`` (the Ray Data actor around
``frameexit.inference``), ``job`` (driver-side resolution of config, model, classes and
the fingerprint), ``run`` (the Ray Data pipeline, commits and the summary).
"""

from pipelines.labeling.actor import VideoLabeler
from pipelines.labeling.inputs import LabelInputs, read_inputs
from pipelines.labeling.job import (
    MODEL_INFERENCE_FIELDS,
    LabelJob,
    check_fingerprint,
    prepare_job,
    resolve_class_names,
    resolve_config,
)
from pipelines.labeling.parts import (
    PartWriter,
    committed_ids,
    compact,
    list_parts,
    part_name,
    read_committed,
    read_labels,
    write_part,
)
from pipelines.labeling.run import (
    actor_cpus,
    decode_threads_for,
    format_summary,
    label_dataset,
    rows_per_block,
    run_labeling,
)
from pipelines.labeling.schema import (
    INPUT_COLUMNS,
    OUTPUT_SCHEMA,
    RETRYABLE_STATUSES,
    STATUS_BAD_ROW,
    STATUS_OK,
    STATUSES,
    empty_output,
    output_row,
    rows_to_table,
)
from pipelines.lease import Lease

__all__ = [
    "INPUT_COLUMNS",
    "MODEL_INFERENCE_FIELDS",
    "OUTPUT_SCHEMA",
    "RETRYABLE_STATUSES",
    "STATUSES",
    "STATUS_BAD_ROW",
    "STATUS_OK",
    "LabelInputs",
    "LabelJob",
    "Lease",
    "PartWriter",
    "VideoLabeler",
    "actor_cpus",
    "check_fingerprint",
    "committed_ids",
    "compact",
    "decode_threads_for",
    "empty_output",
    "format_summary",
    "label_dataset",
    "list_parts",
    "output_row",
    "part_name",
    "prepare_job",
    "read_committed",
    "read_inputs",
    "read_labels",
    "resolve_class_names",
    "resolve_config",
    "rows_per_block",
    "rows_to_table",
    "run_labeling",
    "write_part",
]
