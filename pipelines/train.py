"""Train FrameExit with Ray: stage 1 (DDP), feature cache, stage 2 (gates), evaluation.

Single node (no arguments: generates — or reuses — a small synthetic corpus under
data/synthetic-default and trains the tiny backbone in a few minutes on 2 CPU cores)::

    python pipelines/train.py
    python pipelines/train.py --config configs/synthetic.yaml train.stage1.epochs=3
    python pipelines/train.py --config configs/synthetic.yaml --resume   # continue a run

Against a running Ray cluster (the script connects to it through RAY_ADDRESS)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python pipelines/train.py --config configs/synthetic.yaml train.storage=/tmp/runs

Multi-node (every node reads the videos and writes the run through object storage)::

    ray job submit --address http://HEAD:8265 -- python pipelines/train.py \\
        --config configs/activitynet_resnet50.yaml \\
        data.manifest=s3://BUCKET/activitynet/manifest.parquet \\
        train.storage=s3://BUCKET/frameexit/runs train.num_workers=8 train.use_gpu=true

The default corpus lives in ``$FRAMEEXIT_DATA/synthetic-default`` (default: ``data/`` in
the repository). Outputs go to ``{train.storage}/{train.name}/`` (layout:
pipelines/common.py); the final table is printed and ``eval/`` holds the plots. Without
``--resume`` an existing run is never touched: the run gets the next free name
(``synthetic-2``, ...). ``--resume`` continues the named run from its last checkpoint
and skips its finished stages.
"""

from __future__ import annotations

import argparse
import logging
import sys

from frameexit.config import Config, load_config
from frameexit.storage import exists
from pipelines.common import (
    RunPaths,
    add_common_flags,
    print_config,
    resolved_config_help,
    run_command,
    setup_logging,
)
from pipelines.defaults import DEFAULT_CONFIG, ROOT, default_corpus
from pipelines.pipeline import run_pipeline
from pipelines.report import format_metrics

log = logging.getLogger("frameexit.train")


def fresh_name(cfg: Config) -> None:
    """Give the run the first free name ``name``, ``name-2``, ``name-3``, ... (in place)."""
    base, index = cfg.train.name, 1
    while exists(RunPaths(cfg).root, storage_options=RunPaths(cfg).options):
        index += 1
        cfg.train.name = f"{base}-{index}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """``frameexit train``'s command line (``--help`` lists the config fields with the
    values of ``--config`` and the overrides, or of the default config)."""
    line = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="frameexit train",
        description=__doc__.split("\n")[0],
        epilog=resolved_config_help("train", line, str(DEFAULT_CONFIG))
        + "\nexit codes: 0 done, 2 bad arguments/config/manifest, 3 runtime failure "
        "(rerun with --resume)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(ROOT)})"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run train.name")
    add_common_flags(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging(verbose_console=args.verbose)
    cfg = load_config(args.config or str(DEFAULT_CONFIG), args.overrides)
    if args.print_config:
        return print_config(cfg)
    if not cfg.data.manifest:
        cfg.data.manifest = default_corpus(cfg)
    if not args.resume:
        fresh_name(cfg)
    log.info("run %s", RunPaths(cfg).root)
    metrics = run_pipeline(cfg, resume=args.resume)
    print(format_metrics(metrics), flush=True)
    print(
        f"outputs: {metrics['run']}  ({metrics['pipeline_seconds']:.0f} s, "
        f"{metrics['skipped_videos']} videos skipped)",
        flush=True,
    )
    return metrics


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
