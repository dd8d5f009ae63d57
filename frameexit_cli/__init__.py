"""The ``frameexit`` console command: one entry point, a subcommand per job.

::

    frameexit train    [--config C] [--resume] [a.b=value ...]     pipelines/train.py
    frameexit label    --input I --output O [--checkpoint M] ...   pipelines/label.py
    frameexit evaluate --checkpoint M --split test [--views 3]     pipelines/evaluate.py
    frameexit sweep    [--num-steps 4 8] [--betas ...]             tuning/sweep.py
    frameexit prepare  train=a.csv val=b.csv --output m.parquet    frameexit.manifests.prepare
    frameexit check    --manifest M --output O                     pipelines/check.py
    frameexit convert-checkpoint --dataset D --input X --output Y  frameexit/official.py
    frameexit predict  VIDEO_OR_DIR... --checkpoint M              frameexit/predict.py
    frameexit --version

Each subcommand is the same code as its script (``python pipelines/train.py ...`` and
``ray job submit -- python pipelines/train.py ...`` keep working), with the same
``--config`` / ``a.b=value`` overrides and ``--help`` (which lists the config fields
that matter for it, with the values of ``--config FILE`` when one is given);
``--print-config`` prints the resolved config (credentials masked) without starting Ray,
and ``--verbose`` brings Ray's own logs back to the console. Exit codes, for schedulers: 0 done, 1 finished but incomplete
(rerun: it resumes), 2 bad arguments/config/manifest/checkpoint, 3 runtime failure
(infrastructure or storage: retrying may help), 130 interrupted.

This package sits above every layer (it imports pipelines and tuning); nothing imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _train() -> Callable[[list[str]], Any]:
    from pipelines import train

    return train.main


def _label() -> Callable[[list[str]], Any]:
    from pipelines import label

    return label.main


def _evaluate() -> Callable[[list[str]], Any]:
    from pipelines import evaluate

    return evaluate.main


def _sweep() -> Callable[[list[str]], Any]:
    from tuning import sweep

    return sweep.main


def _prepare() -> Callable[[list[str]], Any]:
    from frameexit.manifests import prepare

    return prepare.main


def _check() -> Callable[[list[str]], Any]:
    from pipelines import check

    return check.main


def _convert() -> Callable[[list[str]], Any]:
    from frameexit import official

    return official.main


def _predict() -> Callable[[list[str]], Any]:
    from frameexit.predict import main as predict_main

    return predict_main


COMMANDS: dict[str, tuple[Callable[[], Callable[[list[str]], Any]], str]] = {
    "train": (_train, "train FrameExit on Ray: stage 1 (DDP), feature cache, stage 2, evaluation"),
    "label": (_label, "label a video corpus with early exit (exactly one row per input)"),
    "evaluate": (_evaluate, "evaluate a checkpoint on any split of a manifest (K views)"),
    "sweep": (_sweep, "sweep T and beta with Ray Tune: the accuracy-GFLOPs Pareto front"),
    "prepare": (_prepare, "annotation files / a video bucket -> one checked, canonical manifest"),
    "check": (_check, "open every video of a manifest; write what is usable and why not"),
    "convert-checkpoint": (_convert, "the authors' released checkpoints -> frameexit format"),
    "predict": (_predict, "what is in these videos: label, score, exit step (in process, no Ray)"),
}


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("frameexit")
    except PackageNotFoundError:
        import frameexit

        return str(frameexit.__version__)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: frameexit [--version] COMMAND [options] [a.b=value ...]",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "frameexit COMMAND --help shows a command's options and the config fields it reads",
        "(with --config FILE: that file's values); --print-config shows the resolved config,",
        "--verbose Ray's own logs.",
        "exit codes: 0 done, 1 incomplete (rerun to resume), 2 bad arguments/config, "
        "3 runtime failure, 130 interrupted",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``frameexit COMMAND ...``: run the subcommand; return its exit code."""
    from pipelines.common import EXIT_CONFIG, run_command

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else EXIT_CONFIG
    if args[0] in ("-V", "--version", "version"):
        print(f"frameexit {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"frameexit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_CONFIG
    command = COMMANDS[name][0]()
    return run_command(lambda a: command(a), rest)


def console() -> None:
    """The console-script entry point."""
    sys.exit(main())
