"""``frameexit check``: open every video of a manifest, cluster-wide, before training.

    python pipelines/check.py --manifest s3://B/k400/manifest.parquet --output s3://B/k400/checked
    frameexit check --manifest ... --output ...          (the same)

::

    manifest ─► input rows (stable ids, as labeling) ─► lease ─► committed ids
      ▼ Ray Data tasks (data.decode_concurrency at a time, any node)
    per video: open (header) ─► num_frames (present), fps, duration, width, height,
               codec, container ─► decode one frame (the middle one) ─► status, reason
      ▼ driver: parts, atomic (the labeling part protocol), compaction
    {output}/checked.parquet    the manifest with the check's columns, one row per input
    {output}/manifest.parquet   the usable rows only (status ok), num_frames from the
                                check: what training reads (data.manifest)
    {output}/classes.json       the class map, unchanged
    {output}/summary.parquet    rows per status

Resumable like labeling (a rerun checks only what has no committed row, and retries
retryable errors); one row per input; missing/corrupt/truncated/non-video rows carry
their reason. Training on the clean manifest never meets a video the check found
unusable, and uses the frame counts the check measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python pipelines/check.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from frameexit.config import Config, load_config  # noqa: E402
from frameexit.errors import VideoDecodeError  # noqa: E402
from frameexit.storage import (  # noqa: E402
    absolute_uri,
    exists,
    join_uri,
    options_for,
    scrub,
    write_parquet,
    write_text,
)
from frameexit.testing import hooks  # noqa: E402
from pipelines.common import (  # noqa: E402
    add_common_flags,
    ensure_ray,
    print_config,
    resolved_config_help,
    run_command,
    setup_logging,
    shared,
    unshared,
)

log = logging.getLogger("frameexit.pipelines.check")

CHECK_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),
        pa.field("input_id", pa.string()),
        pa.field("video", pa.string()),
        pa.field("status", pa.string()),  # ok | a VideoDecodeError kind | bad_manifest_row
        pa.field("retryable", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("warning", pa.string()),
        pa.field("num_frames", pa.int32()),  # frames present (a lying header is corrected)
        pa.field("declared_frames", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("duration", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("container", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("run_id", pa.string()),
    ]
)
CHECK_COLUMNS = [f.name for f in CHECK_SCHEMA if f.name not in ("row", "input_id", "video")]


def _row(**values: Any) -> dict[str, Any]:
    from pipelines.labeling.schema import RETRYABLE_STATUSES

    out = {name: None for name in CHECK_SCHEMA.names}
    out.update(values)
    out["retryable"] = out["status"] in RETRYABLE_STATUSES
    return out


def check_batch(
    batch: pd.DataFrame, *, cfg: Any, run_id: str, poison: str | None = None
) -> pa.Table:
    """Ray Data task body: one check row per input row (header, one decoded frame).
    ``poison``: test hook ``check.kill_worker_on``."""
    from frameexit.inference import as_decode_error
    from frameexit.video import open_video

    cfg = unshared(cfg)
    rows = []
    for r in batch.itertuples(index=False):
        base = dict(row=int(r.row), input_id=str(r.input_id), video=str(r.video),
                    attempts=int(r.attempts), run_id=run_id)  # fmt: skip
        if poison and poison in str(r.video):
            hooks.exit_process(137)  # test hook check.kill_worker_on (like the OOM killer)
        try:
            with open_video(
                str(r.video), cfg.data.decode, storage_options=cfg.data.storage_options
            ) as reader:
                info = reader.info
                present = int(info["decodable_frames"])
                if present < 1:
                    raise VideoDecodeError(str(r.video), "empty", "no frame in the file")
                reader.get([present // 2])  # one frame decodes
            declared = max(int(info["num_frames"]), int(info["declared_frames"] or 0))
            warning = (
                f"the header declares {declared} frames, {present} are present"
                if declared > present
                else None
            )
            rows.append(_row(**base, status="ok", warning=warning, num_frames=present,
                             declared_frames=declared, fps=info["fps"],
                             duration=info["duration"], width=info["width"],
                             height=info["height"], codec=info["codec"],
                             container=info["container"]))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - every failure is this video's row
            typed = as_decode_error(str(r.video), error)
            reason = scrub(typed.reason, cfg.data.storage_options)
            rows.append(_row(**base, status=typed.kind, reason=reason))
    return pa.Table.from_pylist(rows, schema=CHECK_SCHEMA)


def task_videos(num_videos: int, cfg: Any) -> int:
    """Videos per check task: about 8 tasks per decode slot, at most
    ``label.check_task_videos`` (a task is what a crash or a retry costs)."""
    spread = math.ceil(num_videos / (8 * cfg.data.decode_concurrency))
    return max(1, min(cfg.label.check_task_videos, max(8, spread)))


def _check_all(todo: pa.Table, cfg: Any, run_id: str, writer: Any, progress: bool) -> None:
    """Check ``todo`` on Ray Data in tasks of :func:`task_videos` videos, committing rows
    as they come. A task whose worker dies (a video that crashes the decoder or exhausts
    memory) is skipped, not fatal: its videos are checked again in tasks an eighth the
    size, down to one video alone, and a video whose task fails alone gets a final
    ``crashed`` row. Nothing another task committed is lost."""
    import ray
    from tqdm import tqdm

    size = task_videos(todo.num_rows, cfg)
    poison = hooks.value("check.kill_worker_on")  # test hook
    with tqdm(total=todo.num_rows, unit="video", desc="check", disable=not progress) as bar:
        while todo.num_rows:
            ds = ray.data.from_arrow([todo.slice(i, size) for i in range(0, todo.num_rows, size)])
            ds = ds.map_batches(
                check_batch,
                fn_kwargs={"cfg": shared(cfg), "run_id": run_id, "poison": poison},
                batch_size=size,
                batch_format="pandas",
                num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=cfg.data.decode_concurrency),
                max_retries=1,
            )
            ds.context.max_errored_blocks = -1  # a failed task: its videos are left over
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(batch)
                bar.update(batch.num_rows)
            left = pc.invert(pc.is_in(todo.column("input_id"), value_set=writer.seen_ids()))
            todo = todo.filter(left)
            if not todo.num_rows:
                break
            if size == 1:
                log.warning("%d videos crashed their worker when checked alone", todo.num_rows)
                writer.add(_crashed_rows(todo, run_id))
                bar.update(todo.num_rows)
                break
            log.warning(
                "%d check tasks failed (a video crashed its worker): checking their %d "
                "videos again in tasks of %d", math.ceil(todo.num_rows / size),
                todo.num_rows, max(1, size // 8),
            )  # fmt: skip
            size = max(1, size // 8)


def _crashed_rows(todo: pa.Table, run_id: str) -> pa.Table:
    rows = [
        _row(row=int(r["row"]), input_id=r["input_id"], video=r["video"], status="crashed",
             reason="checking this video killed its worker, alone, twice (decoder crash or "
             "out of memory)", attempts=int(r["attempts"]), run_id=run_id)
        for r in todo.to_pylist()
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=CHECK_SCHEMA)


def run_check(
    manifest: str,
    output: str,
    *,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Check every video of ``manifest`` into ``output`` (resumable); returns the summary."""

    from pipelines.labeling.inputs import read_inputs
    from pipelines.labeling.parts import PartWriter, compact, read_committed, read_winners
    from pipelines.labeling.run import plan
    from pipelines.lease import Lease

    began = time.perf_counter()
    cfg = load_config(config_file, overrides)
    manifest, output = absolute_uri(manifest), absolute_uri(output)
    options = options_for(output, cfg.data.storage_options)
    parts = join_uri(output, "parts")
    inputs = read_inputs(
        manifest, storage_options=options_for(manifest, cfg.data.storage_options),
        allowed_prefixes=cfg.data.allowed_prefixes, allow_http=cfg.data.allow_http,
    )  # fmt: skip
    run_id = uuid.uuid4().hex[:12]
    lease = Lease(output, options, seconds=cfg.label.lease_seconds, what="frameexit check")
    with lease:
        committed = read_committed(parts, options, CHECK_SCHEMA)
        todo, bad_todo, retried = plan(
            inputs, committed, retry=cfg.label.retry, max_attempts=cfg.label.max_attempts
        )
        writer = PartWriter(
            parts, options, cfg.label.part_size, CHECK_SCHEMA, fence=lease.check,
            max_attempts=cfg.label.max_attempts, index=committed,
        )  # fmt: skip
        writer.add(_bad_rows(bad_todo, run_id))
        if todo.num_rows:
            ensure_ray(cfg, object_store_mb=512, cpus_needed=cfg.data.decode_concurrency)
            _check_all(todo, cfg, run_id, writer, progress)
        writer.flush()
        compact(parts, options, inputs.ids, CHECK_SCHEMA, fence=lease.check, state=committed)
        checked = read_winners(parts, storage_options=options, schema=CHECK_SCHEMA, state=committed)
        lease.check()
        summary = _write_outputs(manifest, output, inputs, checked, options, cfg, retried)
    summary.update(
        checked_this_run=int(todo.num_rows + bad_todo.num_rows),
        seconds=time.perf_counter() - began,
        videos_per_second=todo.num_rows / max(time.perf_counter() - began, 1e-9),
    )
    write_text(join_uri(output, "_summary.json"), json.dumps(summary, indent=1),
               storage_options=options)  # fmt: skip
    return summary


def _bad_rows(bad: pa.Table, run_id: str) -> pa.Table:
    """Unparsable manifest rows (labeling's rows) as check rows."""
    rows = [
        _row(
            row=r["row"],
            input_id=r["input_id"],
            video=None,
            status=r["status"],
            reason=r["error"],
            attempts=1,
            run_id=run_id,
        )  # fmt: skip
        for r in bad.to_pylist()
    ]
    return pa.Table.from_pylist(rows, schema=CHECK_SCHEMA)


def _write_outputs(
    manifest: str,
    output: str,
    inputs: Any,
    checked: pa.Table,
    options: Mapping[str, Any],
    cfg: Config,
    retried: int,
) -> dict[str, Any]:
    """checked.parquet (every input), manifest.parquet (usable rows), summary.parquet."""
    from frameexit.manifests import (
        class_map_uri_for,
        load_manifest,
        read_class_names,
        write_class_names,
        write_manifest,
    )

    loaded = load_manifest(
        manifest,
        storage_options=options_for(manifest, cfg.data.storage_options) or None,
        save_class_map=False,
        duplicates="keep",
        allowed_prefixes=cfg.data.allowed_prefixes,
        allow_http=cfg.data.allow_http,
    )
    source = loaded.table.reset_index(drop=True)
    results = checked.to_pandas()
    table = source.drop(columns=[c for c in CHECK_COLUMNS if c in source.columns])
    table["input_id"] = inputs.videos.column("input_id").to_pylist()
    # joined by input id, never by position: a rerun on a reordered or edited manifest
    # finds each video's own result (a row number is where it was on an earlier run)
    videos = results[results["status"] != "bad_manifest_row"]
    by_id = videos.drop_duplicates("input_id", keep="last").set_index("input_id")
    table = table.join(by_id[CHECK_COLUMNS], on="input_id", how="left")
    bad = results[results["status"] == "bad_manifest_row"].reset_index(drop=True)
    everything = pd.concat([table, bad], ignore_index=True) if len(bad) else table
    write_parquet(join_uri(output, "checked.parquet"), everything, storage_options=options)
    usable = table[table["status"] == "ok"].drop(columns=["input_id", *CHECK_COLUMNS])
    usable["num_frames"] = table.loc[usable.index, "num_frames"].astype("int64")
    usable["duration"] = table.loc[usable.index, "duration"]
    clean = join_uri(output, "manifest.parquet")
    write_manifest(usable.reset_index(drop=True), clean, storage_options=options)
    # The clean manifest keeps the whole corpus's class map (the stored one, else the one
    # the load built from every row): rebuilt from the usable rows alone, a class whose
    # videos all failed would vanish and shift every later label id.
    manifest_options = options_for(manifest, cfg.data.storage_options)
    if exists(class_map_uri_for(manifest), storage_options=manifest_options):
        names = read_class_names(class_map_uri_for(manifest), storage_options=manifest_options)
    else:
        names = list(loaded.class_names)
    write_class_names(names, class_map_uri_for(clean), storage_options=options)
    counts = everything["status"].value_counts().sort_index()
    by_status = pd.DataFrame({"status": counts.index, "count": counts.to_numpy()})
    write_parquet(join_uri(output, "summary.parquet"), by_status, storage_options=options)
    return {
        "manifest": manifest,
        "output": output,
        "inputs": len(inputs),
        "rows": int(len(everything)),
        "usable": int(len(usable)),
        "by_status": {str(k): int(v) for k, v in counts.items()},
        "retried": int(retried),
        "complete": int(len(everything)) == len(inputs),
        "clean_manifest": clean,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    line = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="frameexit check",
        description=__doc__.split("\n")[0],
        epilog=resolved_config_help("check", line)
        + "\nexit codes: 0 done, 1 incomplete (rerun to resume), 2 bad arguments/manifest, "
        "3 runtime failure",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    required = "--print-config" not in line
    parser.add_argument("--manifest", required=required, help="manifest URI (any format)")
    parser.add_argument("--output", required=required, help="output folder URI")
    parser.add_argument("--config", help="YAML config (data.*: storage options, decoding)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_flags(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)
    setup_logging(verbose_console=args.verbose)
    if args.print_config:
        return print_config(load_config(args.config, args.overrides))
    summary = run_check(
        args.manifest,
        args.output,
        config_file=args.config,
        overrides=args.overrides,
        progress=not args.no_progress,
    )
    lines = [f"checked {summary['inputs']} inputs: {summary['usable']} usable"]
    lines += [f"  {status}: {count}" for status, count in summary["by_status"].items()]
    lines.append(f"clean manifest: {summary['clean_manifest']}")
    print("\n".join(lines), flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
