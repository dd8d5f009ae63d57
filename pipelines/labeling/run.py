"""Running a labeling job: the Ray Data pipeline, committing parts, the summary.

::

    driver: prepare_job (config, model, inputs) ─► check_fingerprint ─► committed ids
      │  todo = inputs without a committed row
      ▼
    Ray Data: from_items(blocks) ─► map_batches(VideoLabeler, pool of label.concurrency
      │  actors, label.cpus_per_actor / label.gpus_per_actor each, 2 batches in flight per
      │  actor so one decodes while the other waits on storage or runs the model)
      ▼
    driver: iter_batches ─► PartWriter (parts of label.part_size rows, atomic) ─► summary
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from frameexit.config import Config, config_to_dict
from frameexit.storage import join_uri, options_for, write_text
from pipelines.common import ensure_ray
from pipelines.labeling.actor import VideoLabeler
from pipelines.labeling.job import LabelJob, check_fingerprint, prepare_job
from pipelines.labeling.parts import (
    PartWriter,
    clean_temporaries,
    committed_ids,
    read_labels,
)
from pipelines.labeling.schema import (
    INPUT_COLUMNS,
    STATUS_BAD_ROW,
    STATUS_OK,
    SUMMARY_NAME,
    empty_output,
)

log = logging.getLogger("frameexit.pipelines.label")


def decode_threads_for(cfg: Config) -> int:
    """Decode threads per actor: two per CPU it holds (decord and PyAV release the GIL,
    and a thread waiting on storage leaves its core to another)."""
    return max(2, 2 * math.ceil(cfg.label.cpus_per_actor))


def rows_per_block(num_videos: int, cfg: Config) -> int:
    """Input rows per Ray Data block: a multiple of the batch size, small enough that the
    pool always has work (≥ 8 blocks per actor) and results stream back steadily."""
    b = cfg.label.batch_size
    target = math.ceil(num_videos / max(1, 8 * cfg.label.concurrency))
    per = max(b, min(cfg.label.part_size, target))
    return int(math.ceil(per / b) * b)


def label_dataset(
    job: LabelJob,
    todo: pd.DataFrame,
    *,
    decode_threads: int | None = None,
    calls_per_actor: int = 2,
):
    """The lazy Ray Dataset of output rows for the input rows ``todo``.

    Each actor runs ``calls_per_actor`` batches at once (threads): while one batch waits
    for storage or runs the model, the other decodes, so the actor's CPUs stay busy.
    """
    import ray
    from ray.data import ActorPoolStrategy

    cfg = job.cfg
    per = rows_per_block(len(todo), cfg)
    # from_items builds the blocks in the driver (from_pandas runs a remote metadata task
    # per block); records keep NaN segment bounds as floats.
    ds = ray.data.from_items(
        todo.to_dict("records"), override_num_blocks=max(1, math.ceil(len(todo) / per))
    )
    gpus = cfg.label.gpus_per_actor
    resources: dict[str, Any] = {"num_cpus": cfg.label.cpus_per_actor}
    if gpus > 0:
        resources["num_gpus"] = gpus
    return ds.map_batches(
        VideoLabeler,
        fn_constructor_args=(config_to_dict(cfg), [ray.put(job.weights)], job.class_names),
        fn_constructor_kwargs={
            "step_gflops": job.step_gflops,
            "decode_threads": decode_threads or decode_threads_for(cfg),
            "device": "cuda" if gpus > 0 else "cpu",
            "torch_threads": max(1, int(cfg.label.cpus_per_actor)),
        },
        batch_size=cfg.label.batch_size,
        batch_format="pandas",
        compute=ActorPoolStrategy(
            size=cfg.label.concurrency,
            max_concurrent_calls_per_actor=calls_per_actor,
            enable_true_multi_threading=calls_per_actor > 1,
        ),
        **resources,
    )


def summarize(rows: pd.DataFrame) -> dict[str, Any]:
    """Counts and means over output rows: per status, frames and GFLOPs per ok video."""
    ok = rows[rows["status"] == STATUS_OK]
    statuses = Counter(rows["status"].tolist())
    return {
        "videos": int(len(rows)),
        "ok": int(len(ok)),
        "errors_by_kind": {k: int(v) for k, v in sorted(statuses.items()) if k != STATUS_OK},
        "frames_decoded_per_video": float(ok["frames_decoded"].mean()) if len(ok) else 0.0,
        "frames_decoded_total": int(rows["frames_decoded"].sum()),
        "gflops_per_video": float(ok["gflops"].mean()) if len(ok) else 0.0,
        "mean_exit_step": float(ok["exit_step"].mean()) if len(ok) else 0.0,
    }


def run_labeling(
    input_uri: str,
    output_uri: str,
    *,
    checkpoint: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    classes_uri: str | None = None,
    overwrite: bool = False,
    decode_threads: int | None = None,
    calls_per_actor: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Label every input video once into ``output_uri`` (resumable); returns the summary."""
    began = time.perf_counter()
    job, inputs = prepare_job(
        input_uri,
        output_uri,
        checkpoint=checkpoint,
        config_file=config_file,
        overrides=overrides,
        classes_uri=classes_uri,
    )
    cfg, output = job.cfg, job.output
    options = options_for(output, cfg.data.storage_options)
    check_fingerprint(job, options, overwrite=overwrite)
    clean_temporaries(output, options)
    done = committed_ids(output, options)
    todo = inputs.videos[~inputs.videos["input_id"].isin(done)].reset_index(drop=True)
    bad_ids = inputs.bad.column("input_id").to_pylist()
    bad_todo = inputs.bad.filter(pa.array([i not in done for i in bad_ids], pa.bool_()))
    log.info(
        "%s: %d inputs (%d unparsable manifest rows), %d already labeled, %d to label",
        job.input,
        len(inputs),
        inputs.bad.num_rows,
        len(done & set(inputs.videos["input_id"]).union(bad_ids)),
        len(todo) + bad_todo.num_rows,
    )
    writer = PartWriter(output, options, cfg.label.part_size)
    writer.add(bad_todo)
    writer.flush()
    produced: list[pa.Table] = [bad_todo]
    label_began = time.perf_counter()
    first_result, first_rows, first_frames = None, 0, 0
    if len(todo):
        # room for the actor pool plus the driver's small Ray Data tasks
        ensure_ray(
            cfg,
            object_store_mb=512,
            cpus_needed=cfg.label.concurrency * cfg.label.cpus_per_actor,
        )
        ds = label_dataset(
            job,
            todo[list(INPUT_COLUMNS)],
            decode_threads=decode_threads,
            calls_per_actor=calls_per_actor,
        )
        bar = _progress(len(todo), progress)
        status: Counter[str] = Counter()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if first_result is None:
                    first_result, first_rows = time.perf_counter(), batch.num_rows
                    first_frames = int(pa.compute.sum(batch.column("frames_decoded")).as_py() or 0)
                writer.add(batch)
                produced.append(batch)
                status.update(batch.column("status").to_pylist())
                bar.update(batch.num_rows)
                bar.set_postfix(
                    ok=status[STATUS_OK], errors=sum(status.values()) - status[STATUS_OK]
                )
            writer.flush()
        finally:
            bar.close()
    finished = time.perf_counter()
    seconds = finished - label_began
    this_run = pa.concat_tables(produced).to_pandas() if produced else empty_output().to_pandas()
    videos_this_run = this_run[this_run["status"] != STATUS_BAD_ROW]
    run = summarize(videos_this_run)
    frames_total = int(videos_this_run["frames_decoded"].sum())
    steady = (finished - first_result) if first_result and len(todo) > first_rows else 0.0
    run.update(
        seconds=seconds,
        videos_per_second=len(videos_this_run) / seconds if seconds > 0 else 0.0,
        frames_decoded_per_second=float(videos_this_run["frames_decoded"].sum()) / seconds
        if seconds > 0
        else 0.0,
        # startup (actors starting, models loading) vs the steady rate after the first result
        startup_seconds=(first_result - label_began) if first_result else seconds,
        steady_videos_per_second=(len(todo) - first_rows) / steady if steady else 0.0,
        steady_frames_decoded_per_second=(frames_total - first_frames) / steady if steady else 0.0,
        parts_written=len(writer.parts),
        bad_manifest_rows=int(bad_todo.num_rows),
    )
    labels = read_labels(output, storage_options=options)
    expected = set(inputs.videos["input_id"]).union(bad_ids)
    missing = sorted(expected - set(labels["input_id"]))
    summary = {
        "input": job.input,
        "output": output,
        "checkpoint": job.checkpoint,
        "early_exit": cfg.label.early_exit,
        "exit_threshold": cfg.model.exit_threshold,
        "num_steps": cfg.model.num_steps,
        "step_gflops": job.step_gflops,
        "run": run,
        "total": summarize(labels),
        "inputs": len(inputs),
        "missing": len(missing),
        "complete": not missing,
        "wall_seconds": time.perf_counter() - began,
    }
    write_text(
        join_uri(output, SUMMARY_NAME), json.dumps(summary, indent=1), storage_options=options
    )
    if missing:
        log.error("%d inputs have no row (first: %s)", len(missing), missing[:3])
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="labeling", disable=not enabled, mininterval=1.0)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable end-of-run report."""
    run, total = summary["run"], summary["total"]
    mode = (
        "all T frames"
        if not summary["early_exit"]
        else f"early exit (threshold {summary['exit_threshold']:g})"
    )
    lines = [
        f"labeled {run['videos']} videos in {run['seconds']:.1f} s: "
        f"{run['videos_per_second']:.2f} videos/s, {run['frames_decoded_per_second']:.1f} frames/s "
        f"[{mode}, T={summary['num_steps']}]",
        f"  frames decoded per video {run['frames_decoded_per_video']:.2f}, "
        f"GFLOPs per video {run['gflops_per_video']:.4g} "
        f"({summary['step_gflops']:.4g} per step), mean exit step {run['mean_exit_step']:.2f}",
        "  errors by kind: "
        + (", ".join(f"{k} {v}" for k, v in run["errors_by_kind"].items()) or "none"),
        f"output {summary['output']}: {total['videos']} rows for {summary['inputs']} inputs "
        f"({total['ok']} ok"
        + "".join(f", {k} {v}" for k, v in total["errors_by_kind"].items())
        + ")"
        + ("" if summary["complete"] else f"; {summary['missing']} MISSING"),
    ]
    return "\n".join(lines)
