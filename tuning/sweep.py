"""Accuracy–GFLOPs sweep over T (steps) and β (gate loss), with post-hoc exit thresholds.

Stage 1 runs once per (backbone, T) and builds its feature cache; every β trial of that
T trains only the gates on the cached features, is evaluated, and its exit threshold is
swept post hoc (no training). Out come, in the sweep's storage URI
(``sweep.storage``, default ``{train.storage}/sweeps/{train.name}``): ``points.parquet`` (all
points, failed trials as ``status="error"``), ``pareto.parquet`` (the non-dominated
subset), ``pareto.png`` (all points, front highlighted) and ``summary.json`` (wall time,
stage-1 vs stage-2 share). Layout and cost: ``tuning/records.py``, ``docs/tuning.md``.

Single machine (a local Ray instance is started when none is running)::

    python tuning/sweep.py --config configs/synthetic_tiny.yaml \\
        --num-steps 4 8 --betas 1e-6 1e-4 1e-2

Multi-objective Optuna (T and log β) instead of the grid, 16 trials::

    python tuning/sweep.py --config configs/synthetic_tiny.yaml --num-steps 4 8 \\
        --searcher optuna --num-samples 16

Continue an interrupted sweep (finished units are never recomputed; ``--resume`` also
restores the Tune experiments, which an Optuna search needs to go on where it stopped)::

    python tuning/sweep.py --config configs/synthetic_tiny.yaml --num-steps 4 8 --resume

On a cluster (S3 storage; see cluster/README.md)::

    ray job submit --working-dir . -- python tuning/sweep.py --config configs/X.yaml \\
        train.storage=s3://bucket/frameexit --num-steps 4 8 10 16

Any ``key.sub=value`` argument overrides the config (``sweep.trial_cpus=0.5``,
``train.stage2.epochs=5``, ``sweep.stage2_in_process_mb=0`` to train every β trial's gates
with Ray Train instead of in the trial's process …).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``frameexit sweep``'s command line (``--help`` lists the sweep's and training's
    config fields with the values this command line resolves to)."""
    from pipelines.common import add_common_flags
    from pipelines.defaults import DEFAULT_CONFIG

    line = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="frameexit sweep",
        description=__doc__.split("\n\n")[0],
        epilog=_fields_help(line, str(DEFAULT_CONFIG))
        + "\nexit codes: 0 done, 2 bad arguments/config, 3 runtime failure "
        "(rerun with --resume)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (default: configs/synthetic.yaml)")
    parser.add_argument("--num-steps", nargs="+", help="T values (sweep.num_steps)")
    parser.add_argument("--betas", nargs="+", help="β values (sweep.betas)")
    parser.add_argument("--backbones", nargs="+", help="backbones (sweep.backbones)")
    parser.add_argument("--thresholds", nargs="*", help="post-hoc τ values (none: skip)")
    parser.add_argument("--searcher", choices=["grid", "optuna"], help="sweep.searcher")
    parser.add_argument("--num-samples", type=int, help="Optuna trials (sweep.num_samples)")
    parser.add_argument("--storage", help="sweep storage URI (sweep.storage)")
    parser.add_argument("--resume", action="store_true", help="restore the Tune experiments")
    add_common_flags(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)
    # A list option swallows the key=value overrides that follow it: hand them back.
    for name in ("num_steps", "betas", "backbones", "thresholds"):
        values = getattr(args, name)
        if values is not None:
            args.overrides += [v for v in values if "=" in v]
            setattr(args, name, [v for v in values if "=" not in v])
    return args


def _fields_help(argv: list[str], default: str) -> str:
    """The ``sweep.*`` fields, then the training fields every trial reads."""
    import dataclasses

    from frameexit.config import load_config
    from pipelines.common import config_argument, resolved_config_help
    from tuning.spec import SweepSpec

    train = resolved_config_help("train", argv, default)
    if not {"-h", "--help"} & set(argv):
        return train
    try:
        overrides = [a for a in argv if "=" in a and not a.startswith("-")]
        cfg = load_config(config_argument(argv) or default, overrides)
    except Exception:  # noqa: BLE001 - the train part says why
        from frameexit.config import Config

        cfg = Config()
    try:
        spec = SweepSpec.from_config(cfg)
    except Exception:  # noqa: BLE001 - a bad sweep.* value: show the defaults
        spec = SweepSpec()
    lines = ["sweep fields (set with --config FILE.yaml or sweep.x=value):"]
    lines += [
        f"  sweep.{f.name} = {getattr(spec, f.name)!r}  ({f.type})"
        for f in dataclasses.fields(spec)
    ]
    return "\n".join(lines) + "\n" + train.replace("config fields", "training fields", 1)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from frameexit.config import load_config
    from pipelines.common import print_config, setup_logging
    from pipelines.defaults import DEFAULT_CONFIG
    from tuning.driver import run_sweep

    setup_logging(verbose_console=args.verbose)
    flags = {
        "num_steps": args.num_steps,
        "betas": args.betas,
        "backbones": args.backbones,
        "thresholds": args.thresholds,
        "searcher": args.searcher,
        "num_samples": args.num_samples,
        "storage": args.storage,
    }
    overrides = [f"sweep.{k}={_yaml(v)}" for k, v in flags.items() if v is not None]
    cfg = load_config(args.config or str(DEFAULT_CONFIG), [*args.overrides, *overrides])
    if args.print_config:
        from tuning.spec import SweepSpec

        SweepSpec.from_config(cfg)  # a bad sweep.* value fails here, naming the field
        return print_config(cfg)
    result = run_sweep(cfg, resume=args.resume)
    columns = ["source", "num_steps", "beta", "threshold", "accuracy", "gflops", "status"]
    trials = result.points[result.points["source"] == "beta"]
    print(trials[[*columns, "pareto"]].to_string(index=False))
    print("\nPareto front:")
    print(result.front[columns].to_string(index=False))
    s = result.summary
    print(
        f"\n{result.root}: {s['points']} points, {s['pareto_points']} on the front, "
        f"{s['failed_trials']} failed trials; wall {s['wall_seconds']:.0f} s "
        f"(stage 1 + cache {s['phase1_share']:.0%}, stage-2 trials {s['phase2_share']:.0%})"
    )
    return dict(s)


def _yaml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


if __name__ == "__main__":
    from pipelines.common import run_command

    sys.exit(run_command(main, sys.argv[1:]))
