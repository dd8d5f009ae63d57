"""Label a video corpus with FrameExit on Ray Data: early exit, exactly one row per video.

Local (starts a Ray instance on this machine when no cluster is running)::

    python pipelines/label.py --input data/corpus/manifest.parquet --output out/labels \\
        --checkpoint runs/synthetic/checkpoints/stage2.pt
    python pipelines/label.py --input videos/ --output out/labels-all --checkpoint ... --no-exit
    python pipelines/label.py --input in.csv --output out/l --checkpoint ... --threshold 0.8 \\
        label.batch_size=16 label.concurrency=2

Against a running cluster (the script connects through RAY_ADDRESS)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python pipelines/label.py --input s3://BUCKET/corpus/manifest.csv \\
        --output s3://BUCKET/labels/run1 --checkpoint s3://BUCKET/runs/x/checkpoints/stage2.pt

Multi-node, one GPU per model actor (every node reads videos and writes parts through
object storage; credentials from the environment or ``data.storage_options``)::

    ray job submit --address http://HEAD:8265 -- python pipelines/label.py \\
        --input s3://BUCKET/activitynet/videos/ --output s3://BUCKET/labels/anet \\
        --checkpoint s3://BUCKET/runs/anet/checkpoints/stage2.pt \\
        label.concurrency=16 label.gpus_per_actor=1 label.cpus_per_actor=6 label.batch_size=64

Calibrated on the corpus itself (a uniform random sample of 200 inputs labeled with all
T first, then the rest at thresholds that keep labels that differ from all T under 5 %
with probability 0.9)::

    python pipelines/label.py --input s3://B/new-source/ --output s3://B/labels/new \
        --checkpoint runs/synthetic/checkpoints/stage2.pt --calibrate 200 --max-disagreement 0.05

``--input`` is a manifest (ActivityNet JSON, Kinetics/HVU CSV, a plain CSV with a
``video`` column, Parquet) or a directory/prefix whose files are listed. Without
``--checkpoint`` a randomly initialised model of the config labels (with a warning).
Exits follow the checkpoint's operating point (chosen on held-out data when it was
trained, with its guarantee); ``--calibrate N`` chooses one on this corpus instead;
``--no-exit`` runs all T frames; ``--threshold`` is the paper's rule at that τ (gate
probability ≥ τ at every step, no guarantee). After a run the output holds exactly one
row per entry of the current input: rerunning after an interruption labels only what has
no committed row, rows of retryable errors (timeout, access_denied, throttled,
unavailable) are labeled again (``label.retry=false`` keeps them), and rows of entries
removed from the input are dropped — unless ``--append`` (shards: one output, several
inputs, nothing dropped). One run per output at a time (a lease). Output layout, row
schema and the
exactly-once argument: ``pipelines/labeling/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/label.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frameexit.config import fields_with  # noqa: E402
from pipelines.common import (  # noqa: E402
    add_common_flags,
    print_config,
    resolved_config_help,
    run_command,
    setup_logging,
)
from pipelines.labeling import format_summary, run_labeling  # noqa: E402

log = logging.getLogger("frameexit.label")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="frameexit label",
        description=__doc__.split("\n")[0],
        epilog=resolved_config_help("label", sys.argv[1:] if argv is None else argv)
        + f"\n  {', '.join(fields_with('checkpoint_override'))} (may change with --checkpoint)"
        + "\nexit codes: 0 done, 1 incomplete (rerun to resume), 2 bad arguments/config, "
        "3 runtime failure",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    required = not {"--print-config"} & set(sys.argv[1:] if argv is None else argv)
    parser.add_argument("--input", required=required, help="manifest URI, or a directory/prefix")
    parser.add_argument("--output", required=required, help="output directory URI (Parquet parts)")
    parser.add_argument("--checkpoint", help="model checkpoint URI (default: random init)")
    parser.add_argument(
        "--config", help="YAML config (label.*, data.*; model.* without a checkpoint)"
    )
    parser.add_argument("--classes", help="classes.json naming the model's outputs")
    parser.add_argument("--no-exit", action="store_true", help="use all T frames (no early exit)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="the paper's rule at this τ instead of the checkpoint's operating point "
        "(model.exit_threshold)",
    )
    parser.add_argument(
        "--calibrate",
        type=int,
        metavar="N",
        help="label a uniform random sample of N inputs with all T steps first and choose "
        "the exit thresholds on it (label.calibration_videos)",
    )
    parser.add_argument(
        "--max-disagreement",
        type=float,
        metavar="EPS",
        help="with --calibrate: at most this share of labels may differ from all T, with "
        "probability 1 - exit.delta (exit.max_disagreement; default 0.05)",
    )
    parser.add_argument("--overwrite", action="store_true", help="clear the output first")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this input (a shard) to an output that holds other inputs' rows; rows of "
        "entries not in this input are kept",
    )
    parser.add_argument("--decode-threads", type=int, help="decode threads per actor")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_flags(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging(verbose_console=args.verbose)
    overrides = list(args.overrides)
    if args.no_exit:
        overrides.append("label.early_exit=false")
    if args.threshold is not None:
        overrides.append(f"model.exit_threshold={args.threshold}")
    if args.calibrate is not None:
        overrides.append(f"label.calibration_videos={args.calibrate}")
    if args.max_disagreement is not None:
        overrides.append(f"exit.max_disagreement={args.max_disagreement}")
    if args.print_config:
        from frameexit.config import load_config

        return print_config(load_config(args.config, overrides))
    summary = _run(args, overrides)
    print(format_summary(summary), flush=True)
    return summary


def _run(args: argparse.Namespace, overrides: list[str]) -> dict:
    return run_labeling(
        args.input,
        args.output,
        checkpoint=args.checkpoint,
        config_file=args.config,
        overrides=overrides,
        classes_uri=args.classes,
        overwrite=args.overwrite,
        append=args.append,
        decode_threads=args.decode_threads,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
