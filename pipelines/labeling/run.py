"""Running a labeling job: plan against what is committed, label, commit, compact, report.

::

    driver: prepare_job (config, model, inputs as Arrow) ─► lease ─► fingerprint
      │  committed winners: final rows are done; retryable rows (timeout, throttled, ...)
      │  are labeled again with attempts + 1 (label.retry); the rest is new
      ▼
    Ray Data: from_arrow(blocks) ─► map_batches(VideoLabeler, pool of label.concurrency
      │  actors, label.cpus_per_actor / label.gpus_per_actor / memory each, 2 batches in
      │  flight per actor; bounded actor restarts and task retries, crash isolation)
      ▼
    driver: iter_batches ─► PartWriter (parts of label.part_size rows, atomic, running
            totals) ─► compact (drop superseded rows and rows of entries no longer in
            the input) ─► _summary.json ─► release the lease

The driver holds the inputs and the committed ids as Arrow columns and one part's rows at
a time, so its memory grows by a few dozen bytes per input, not by the outputs.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from frameexit.config import Config
from frameexit.errors import LeaseLost
from frameexit.operating_point import summary as summary_of
from frameexit.storage import join_uri, options_for, redact, scrub, write_text
from frameexit.testing import hooks
from pipelines.common import ensure_ray, shared
from pipelines.labeling.actor import VideoLabeler
from pipelines.labeling.calibration import calibrate_on_corpus
from pipelines.labeling.inputs import LabelInputs
from pipelines.labeling.isolation import (
    LEDGER_NAME_PREFIX,
    start_ledger,
    stop_labelers,
    task_retries,
)
from pipelines.labeling.job import LabelJob, check_fingerprint, prepare_job
from pipelines.labeling.parts import (
    Committed,
    PartWriter,
    clean_temporaries,
    compact,
    output_totals,
    read_committed,
)
from pipelines.labeling.schema import STATUS_BAD_ROW, SUMMARY_NAME
from pipelines.lease import Lease

log = logging.getLogger("frameexit.pipelines.label")

#: Test hook: the driver dies after its last commit, before compaction and the summary.


def actor_cpus(cfg: Config) -> float:
    """CPUs per labeling actor: ``label.cpus_per_actor``, or by default 1 for a CPU actor
    and, for a GPU actor, its share of a GPU node's CPUs (decoding feeds the GPU; on a
    16-core node with one GPU an actor with one GPU gets 16 CPUs, i.e. 32 decode threads)."""
    if cfg.label.cpus_per_actor is not None:
        return float(cfg.label.cpus_per_actor)
    gpus = cfg.label.gpus_per_actor
    if gpus <= 0:
        return 1.0
    import ray

    shares = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if node.get("Alive") and resources.get("GPU", 0) > 0:
            shares.append(resources.get("CPU", 1.0) / resources["GPU"] * gpus)
    return max(1.0, math.floor(min(shares))) if shares else 1.0


def actor_memory(job: LabelJob, cpus: float, calls_per_actor: int) -> int:
    """Bytes of memory a labeling actor declares: ``label.memory_per_actor_mb``, or what
    it holds (``frameexit.inference.labeling_memory_bytes``): the model twice, per video
    in flight its frames at model-input size and the decoder memory it may keep, per
    decode thread the largest frame ``data.decode.max_pixels`` allows being decoded."""
    from frameexit.inference import labeling_memory_bytes

    cfg = job.cfg
    if cfg.label.memory_per_actor_mb is not None:
        return int(cfg.label.memory_per_actor_mb) * 1024**2
    m = cfg.model
    return labeling_memory_bytes(
        weights_bytes=sum(v.numel() * v.element_size() for v in job.weights.values()),
        videos_in_flight=cfg.label.batch_size * calls_per_actor,
        decode_threads=decode_threads_for(cfg, cpus),
        decode=cfg.data.decode,
        image_size=m.image_size,
        clip_length=m.clip_length,
        num_steps=m.num_steps,
    )


def decode_threads_for(cfg: Config, cpus: float | None = None) -> int:
    """Decode threads per actor: two per CPU it holds (decord and PyAV release the GIL,
    and a thread waiting on storage leaves its core to another)."""
    cpus = actor_cpus(cfg) if cpus is None else cpus
    return max(2, 2 * math.ceil(cpus))


def rows_per_block(num_videos: int, cfg: Config) -> int:
    """Input rows per Ray Data block: a multiple of the batch size, small enough that the
    pool always has work (≥ 8 blocks per actor) and results stream back steadily."""
    b = cfg.label.batch_size
    target = math.ceil(num_videos / max(1, 8 * cfg.label.concurrency))
    per = max(b, min(cfg.label.part_size, target))
    return int(math.ceil(per / b) * b)


def label_dataset(
    job: LabelJob,
    todo: pa.Table,
    *,
    run_id: str = "",
    decode_threads: int | None = None,
    calls_per_actor: int = 2,
    ledger: str | None = None,
    calibration: bool = False,
):
    """The lazy Ray Dataset of output rows for the input rows ``todo`` (``INPUT_SCHEMA``);
    ``calibration``: every row with all T steps, each step's score and labels kept.

    Each actor runs ``calls_per_actor`` batches at once (threads): while one batch waits
    for storage or runs the model, the other decodes, so the actor's CPUs stay busy.
    Weights and the config (with credentials) travel through the object store.
    """
    import ray
    from ray.data import ActorPoolStrategy

    cfg = job.cfg
    per = rows_per_block(todo.num_rows, cfg)
    blocks = [todo.slice(i, per) for i in range(0, todo.num_rows, per)]
    ds = ray.data.from_arrow(blocks)
    cpus = actor_cpus(cfg)
    gpus = cfg.label.gpus_per_actor
    resources: dict[str, Any] = {
        "num_cpus": cpus,
        "memory": actor_memory(job, cpus, calls_per_actor),
        "max_restarts": cfg.label.max_actor_restarts,
        "max_task_retries": task_retries(cfg.label.batch_size),
    }
    if gpus > 0:
        resources["num_gpus"] = gpus
    with warnings.catch_warnings():
        # max_restarts / max_task_retries have no named parameter in this Ray version;
        # the generic remote args that carry them are deprecated for Ray 2.64
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            VideoLabeler,
            fn_constructor_args=(
                shared(cfg),
                shared(job.weights),
                job.class_names,
            ),
            fn_constructor_kwargs={
                "step_gflops": job.step_gflops,
                "run_id": run_id,
                "decode_threads": decode_threads or decode_threads_for(cfg, cpus),
                "device": "cuda" if gpus > 0 else "cpu",
                "torch_threads": max(1, int(cpus)),
                "ledger": ledger,
                "poison": hooks.value("label.kill_worker_on"),  # test hook
                "operating_point": None
                if job.operating_point is None
                else job.operating_point.to_dict(with_family=False),
                "calibration": calibration,
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


def plan(
    inputs: LabelInputs, committed: Any, *, retry: bool, max_attempts: int | None = None
) -> tuple[pa.Table, pa.Table, int]:
    """``(videos to label, bad rows to commit, retried count)``: entries without a row,
    and — with ``retry`` — entries whose row is retryable, with ``attempts`` + 1, unless
    it already had ``max_attempts`` (then its row stands)."""
    winners = committed.winners
    done = winners
    retried = 0
    videos = inputs.videos
    if retry and winners.num_rows:
        again_ok = winners.column("retryable")
        if max_attempts:
            again_ok = pc.and_(again_ok, pc.less(winners.column("attempts"), max_attempts))
        retryable = winners.filter(again_ok)
        done = winners.filter(pc.invert(again_ok))
        again = pc.is_in(videos.column("input_id"), value_set=retryable.column("input_id"))
        retried = int(pc.sum(again).as_py() or 0)
        if retried:
            index = pc.index_in(videos.column("input_id"), value_set=retryable.column("input_id"))
            previous = pc.take(retryable.column("attempts"), index)
            attempts = pc.if_else(again, pc.add(pc.fill_null(previous, 0), 1), 1)
            videos = videos.set_column(
                videos.schema.get_field_index("attempts"),
                "attempts",
                attempts.cast(pa.int32()),
            )
    done_ids = done.column("input_id")
    todo = videos.filter(pc.invert(pc.is_in(videos.column("input_id"), value_set=done_ids)))
    bad = inputs.bad.filter(
        pc.invert(pc.is_in(inputs.bad.column("input_id"), value_set=winners.column("input_id")))
    )
    return todo, bad, retried


def run_labeling(
    input_uri: str,
    output_uri: str,
    *,
    checkpoint: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    classes_uri: str | None = None,
    overwrite: bool = False,
    append: bool = False,
    decode_threads: int | None = None,
    calls_per_actor: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Label every entry of the input once into ``output_uri`` and make the output hold
    exactly one row per current entry (resumable; ``append``: keep the rows of other
    inputs labeled into it); returns the summary."""
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
    run_id = uuid.uuid4().hex[:12]
    phases = {"inputs": time.perf_counter() - began}  # where the driver's time went
    with Lease(output, options, seconds=cfg.label.lease_seconds) as lease:
        check_fingerprint(job, options, overwrite=overwrite, append=append)
        clean_temporaries(output, options)
        mark = time.perf_counter()
        committed = read_committed(output, options, totals=True)  # the run's one read
        phases["read_committed"] = time.perf_counter() - mark
        mark = time.perf_counter()
        todo, bad_todo, retried = plan(
            inputs, committed, retry=cfg.label.retry, max_attempts=cfg.label.max_attempts
        )
        phases["plan"] = time.perf_counter() - mark
        log.info(
            "%s: %d inputs (%d unparsable manifest rows), %d labeled before, %d to label "
            "(%d retried after a retryable error)",
            job.input,
            len(inputs),
            inputs.bad.num_rows,
            committed.winners.num_rows,
            todo.num_rows + bad_todo.num_rows,
            retried,
        )
        writer = PartWriter(
            output, options, cfg.label.part_size, fence=lease.check,
            max_attempts=cfg.label.max_attempts, index=committed,
        )  # fmt: skip
        writer.add(_with_run(bad_todo, run_id))
        writer.flush()
        calibrated = None
        calibration_began = mark = time.perf_counter()
        if job.calibration is not None:
            calibrated = calibrate_on_corpus(
                job, inputs, todo, options,
                lambda rows: _label(job, rows, writer, run_id, decode_threads, calls_per_actor,
                                    progress, calibration=True),
            )  # fmt: skip
            done = writer.seen_ids()
            todo = todo.filter(pc.invert(pc.is_in(todo.column("input_id"), value_set=done)))
        timing = _label(job, todo, writer, run_id, decode_threads, calls_per_actor, progress)
        if calibrated is not None:  # the run's rates count the calibration rows too
            timing["began"] = calibration_began
        if hooks.value("label.exit_before_compact"):  # test hook: a driver killed right here
            hooks.exit_process(3)
        phases["label"] = time.perf_counter() - mark
        mark = time.perf_counter()
        compaction = compact(
            output, options, None if append else inputs.ids, fence=lease.check, state=committed
        )
        phases["compact"] = time.perf_counter() - mark
        mark = time.perf_counter()
        summary = _summary(job, inputs, writer, timing, compaction, retried, began, committed)
        phases["summary"] = time.perf_counter() - mark
        summary["phase_seconds"] = phases
        if calibrated is not None:
            summary["calibration"] = calibrated
        summary["run"]["lease_token"] = lease.token
        lease.check()
        write_text(
            join_uri(output, SUMMARY_NAME),
            json.dumps(redact(summary), indent=1),
            storage_options=options,
        )
    if summary["missing"]:
        log.error("%d inputs have no row", summary["missing"])
    return summary


def _with_run(table: pa.Table, run_id: str) -> pa.Table:
    index = table.schema.get_field_index("run_id")
    return table.set_column(index, "run_id", pa.array([run_id] * table.num_rows, pa.string()))


def _label(
    job: LabelJob,
    todo: pa.Table,
    writer: PartWriter,
    run_id: str,
    decode_threads: int | None,
    calls_per_actor: int,
    progress: bool,
    *,
    calibration: bool = False,
) -> dict[str, float]:
    """Label ``todo`` on Ray Data and commit as results stream in; returns timings."""
    cfg = job.cfg
    label_began = time.perf_counter()
    timing = {"began": label_began, "first": 0.0, "first_rows": 0, "first_frames": 0}
    if not todo.num_rows:
        timing["finished"] = time.perf_counter()
        return timing
    cpus = cfg.label.cpus_per_actor or 1.0
    ensure_ray(cfg, object_store_mb=512, cpus_needed=cfg.label.concurrency * cpus)
    import ray

    ledger_name = LEDGER_NAME_PREFIX + run_id
    ledger = start_ledger(run_id)
    bar = _progress(todo.num_rows, progress, "calibrating (all T)" if calibration else "labeling")
    restarts = 0
    try:
        while todo.num_rows:
            ds = label_dataset(
                job,
                todo,
                run_id=run_id,
                decode_threads=decode_threads,
                calls_per_actor=calls_per_actor,
                ledger=ledger_name,
                calibration=calibration,
            )
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    if not timing["first"]:
                        timing["first"], timing["first_rows"] = time.perf_counter(), batch.num_rows
                        frames = pc.sum(batch.column("frames_decoded")).as_py() or 0
                        timing["first_frames"] = int(frames)
                    writer.add(batch)
                    bar.update(batch.num_rows)
                    ok = writer.totals.ok
                    bar.set_postfix(ok=ok, errors=writer.totals.rows - ok)
                break
            except LeaseLost:  # another writer holds the output now: stop, commit nothing
                raise
            except Exception as error:  # noqa: BLE001 - a lost node, actor or object
                restarts += 1
                if restarts > cfg.label.max_pipeline_restarts:
                    raise
                writer.flush()  # every row received so far is complete: keep it
                stopped = stop_labelers(ledger)
                todo = todo.filter(
                    pc.invert(pc.is_in(todo.column("input_id"), value_set=writer.seen_ids()))
                )
                log.warning(
                    "labeling pipeline failed (%s: %s); %d labeling actors stopped; restarting "
                    "it for the %d inputs left (%d of %d restarts)",
                    type(error).__name__,
                    scrub(
                        str(error).splitlines()[0] if str(error) else "", cfg.data.storage_options
                    ),
                    stopped,
                    todo.num_rows,
                    restarts,
                    cfg.label.max_pipeline_restarts,
                )
        writer.flush()
    finally:
        bar.close()
        ray.kill(ledger)
    timing["finished"] = time.perf_counter()
    timing["restarts"] = restarts
    return timing


def _summary(
    job: LabelJob,
    inputs: LabelInputs,
    writer: PartWriter,
    timing: dict[str, float],
    compaction: dict[str, int],
    retried: int,
    began: float,
    committed: Committed,
) -> dict[str, Any]:
    cfg = job.cfg
    run = writer.totals.summary(exclude=[STATUS_BAD_ROW])
    seconds = timing["finished"] - timing["began"]
    first = timing["first"]
    steady = timing["finished"] - first if first else 0.0
    later_rows = run["videos"] - timing["first_rows"]
    later_frames = run["frames_decoded_total"] - timing["first_frames"]
    run.update(
        seconds=seconds,
        videos_per_second=run["videos"] / seconds if seconds > 0 else 0.0,
        frames_decoded_per_second=run["frames_decoded_total"] / seconds if seconds > 0 else 0.0,
        # startup (actors starting, models loading) vs the steady rate after the first result
        startup_seconds=(first - timing["began"]) if first else seconds,
        steady_videos_per_second=later_rows / steady if steady and later_rows > 0 else 0.0,
        steady_frames_decoded_per_second=later_frames / steady
        if steady and later_rows > 0
        else 0.0,
        parts_written=len(writer.parts),
        bad_manifest_rows=int(writer.totals.statuses.get(STATUS_BAD_ROW, 0)),
        retried=int(retried),
        pipeline_restarts=int(timing.get("restarts", 0)),
    )
    ids = committed.ids()
    current = inputs.ids
    missing = int(pc.sum(pc.invert(pc.is_in(current, value_set=ids))).as_py() or 0)
    extra = int(pc.sum(pc.invert(pc.is_in(ids, value_set=current))).as_py() or 0)
    total = output_totals(job.output, state=committed).summary()
    return {
        "input": job.input,
        "output": job.output,
        "checkpoint": job.checkpoint,
        "early_exit": cfg.label.early_exit,
        "operating_point": None
        if job.operating_point is None
        else summary_of(job.operating_point, job.step_gflops),
        "num_steps": cfg.model.num_steps,
        "step_gflops": job.step_gflops,
        "run": run,
        "total": total,
        "inputs": len(inputs),
        "missing": missing,
        "rows_of_other_inputs": extra,
        "stale_rows_removed": int(compaction["stale_rows"]),
        "superseded_rows_removed": int(compaction["rows_dropped"] - compaction["stale_rows"]),
        "complete": missing == 0,
        "wall_seconds": time.perf_counter() - began,
    }


def _progress(total: int, enabled: bool, desc: str = "labeling"):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc=desc, disable=not enabled, mininterval=1.0)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable end-of-run report."""
    run, total = summary["run"], summary["total"]
    point = summary.get("operating_point")
    mode = "all T frames" if point is None else "early exit"
    changes = []
    if run.get("retried"):
        changes.append(f"{run['retried']} retried")
    if summary.get("stale_rows_removed"):
        changes.append(f"{summary['stale_rows_removed']} rows of removed entries dropped")
    lines = [
        f"labeled {run['videos']} videos in {run['seconds']:.1f} s: "
        f"{run['videos_per_second']:.2f} videos/s, {run['frames_decoded_per_second']:.1f} frames/s "
        f"[{mode}, T={summary['num_steps']}]" + (f" ({', '.join(changes)})" if changes else ""),
        f"  frames decoded per video {run['frames_decoded_per_video']:.2f}, "
        f"GFLOPs per video {run['gflops_per_video']:.4g} "
        f"({summary['step_gflops']:.4g} per step), mean exit step {run['mean_exit_step']:.2f}",
        "  errors by kind: "
        + (", ".join(f"{k} {v}" for k, v in run["errors_by_kind"].items()) or "none"),
        *([f"  exits: {point['description']}"] if point is not None else []),
        f"output {summary['output']}: {total['videos']} rows for {summary['inputs']} inputs "
        f"({total['ok']} ok"
        + "".join(f", {k} {v}" for k, v in total["errors_by_kind"].items())
        + ")"
        + ("" if summary["complete"] else f"; {summary['missing']} MISSING"),
    ]
    return "\n".join(lines)
