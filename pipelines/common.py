"""What every Ray entry point shares: the run layout, logging, connecting to Ray.

Run layout under ``{train.storage}/{train.name}/`` (any fsspec URI, see docs/API.md)::

    config.yaml               resolved config of the run
    checkpoints/stage1.pt     final models (frameexit.checkpoint format)
    checkpoints/stage2.pt
    ray/stage1/, ray/stage2/  Ray Train's run directories (per-epoch checkpoints)
    features/{split}/         stage-2 feature cache (Parquet), `_SUCCESS` when complete
    eval/                     metrics.json, Parquet tables, PNG plots
    skipped/                  one small Parquet per decode task that skipped videos
    skipped_videos.parquet    all of them, merged (video, split, kind, reason, count)

Credentials: ``data.storage_options`` (s3fs keyword arguments, e.g.
``{"client_kwargs": {"endpoint_url": ...}, "key": ..., "secret": ...}``) apply to every
``s3://`` URI of the run — videos, manifest and run storage; without them the standard
AWS sources (environment, ``~/.aws``, instance role) are used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from frameexit.config import Config
from frameexit.storage import (
    absolute_uri,
    install_secret_filter,
    join_uri,
    local_path,
    options_for,
)

log = logging.getLogger("frameexit.pipelines")

# Environment every Ray process of ours gets: no usage stats, fail fast on a Ray Data stall
# (measured: a starved pipeline otherwise waits 30 min), no V2 migration warnings.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "300",
}


#: ``--verbose`` sets it: Ray's own progress bars and warnings on the console again.
VERBOSE_ENV = "FRAMEEXIT_VERBOSE"


def verbose() -> bool:
    """Whether Ray's own console output (operator progress bars, worker warnings) is on."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def setup_logging(*, verbose_console: bool = False) -> None:
    """INFO logs of this package on stderr (entry points call it once). The console stays
    quiet — frameexit's lines, one per epoch and phase — unless ``verbose_console``."""
    if verbose_console:
        os.environ[VERBOSE_ENV] = "1"
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    install_secret_filter()  # every line scrubbed of every known secret, whatever its key
    logging.getLogger("frameexit").setLevel(logging.INFO)
    if not verbose():
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)


def quiet_train_logs() -> None:
    """In a Train worker: Ray Train's INFO lines (a dump of every report, checkpoint
    notices) off the console unless verbose. ``RunConfig.logging_config`` filters only
    loggers named ``ray.train.*``; the report dump's logger is named after its file
    (``getLogger(__file__)`` in ray.train.v2's execution context), so it is set here."""
    install_secret_filter()
    if verbose():
        return
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: nothing to quieten
        return
    named = getattr(train_context, "logger", None)
    if isinstance(named, logging.Logger):
        named.setLevel(logging.WARNING)


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` on a command line, read before argparse runs (``--help``
    exits inside it)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def resolved_config_help(command: str, argv: Sequence[str], default: str | None = None) -> str:
    """``command``'s config fields for ``--help`` (:func:`frameexit.config.config_help`),
    with the values this command line resolves to: the ``--config`` file (else
    ``default``, the file the command reads without one) and the ``a.b=value``
    overrides, credentials masked. Built-in defaults when neither is given or the file
    does not load (said in the header)."""
    from frameexit.config import config_help, config_to_dict, load_config, redacted
    from frameexit.fields import flatten

    text = config_help(command)
    if not {"-h", "--help"} & set(argv):  # only --help shows it: no config read otherwise
        return text
    path = config_argument(argv) or default
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    if not path and not overrides:
        return text
    try:
        values = flatten(config_to_dict(redacted(load_config(path, overrides))))
    except Exception as error:  # noqa: BLE001 - help still prints, with the defaults
        head, _, rest = text.partition("\n")
        return (
            f"{head}\n  (built-in defaults: {path} does not load: {error_message(error)})\n{rest}"
        )
    lines = text.split("\n")
    source = " + ".join(
        p for p in (path and os.path.basename(path), overrides and "overrides") if p
    )
    lines[0] = lines[0].replace("config fields", f"config fields, values of {source}", 1)
    for i, line in enumerate(lines[1:], 1):
        match = _HELP_LINE.match(line)
        if match and match["key"] in values:
            lines[i] = f"  {match['key']} = {values[match['key']]!r}{match['kind'] or ''}"
    return "\n".join(lines)


_HELP_LINE = re.compile(r"^  (?P<key>[\w.]+) = .*?(?P<kind>  \([^()]*(\([^()]*\))?[^()]*\))?$")


def add_common_flags(parser: Any, *, print_config: bool = True) -> None:
    """``--verbose`` and ``--print-config``: the flags every Ray entry point shares."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own logs on the console too (by default they go to the Ray session's "
        "logs folder, named when Ray starts)",
    )
    if print_config:
        parser.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config (YAML, credentials masked) and exit, "
            "without starting Ray",
        )


def print_config(cfg: Config) -> dict[str, Any]:
    """``--print-config``: the resolved config as YAML on stdout, credentials masked."""
    from frameexit.config import config_yaml

    print(config_yaml(cfg), end="", flush=True)
    return {"printed_config": True}


#: Exit codes of the entry points, for schedulers: 0 done, 1 finished but incomplete
#: (rerun the same command: it resumes), 2 bad arguments, config, manifest or checkpoint
#: (fix them first), 3 a runtime failure (infrastructure, storage: retrying may help),
#: 130 interrupted.
EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def register_argument_secrets(argv: Sequence[str]) -> None:
    """Register the storage options a command line carries as secrets before anything
    parses it, so that an error quoting them (a mistyped ``data.storage_options=``
    override, a config file that does not validate) is scrubbed like any later log line:
    the values of ``...storage_options...=`` overrides and of credential-named ones
    (``...secret=``) — every word of one that does not parse — and the storage options
    of a local ``--config`` file."""
    import yaml

    from frameexit.storage import is_local, is_secret_key, register_secrets

    args = list(argv)
    for i, arg in enumerate(args):
        config = None
        if arg == "--config" and i + 1 < len(args):
            config = args[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        if config:
            with contextlib.suppress(Exception):  # read properly (or refused) later
                if is_local(config) and os.path.getsize(local_path(config)) <= 1024**2:
                    with open(local_path(config), encoding="utf-8") as handle:
                        _register_nested(yaml.safe_load(handle), register_secrets)
        if "=" not in arg or arg.startswith("-"):
            continue
        key, raw = arg.split("=", 1)
        parts = key.strip().split(".")
        if "storage_options" not in parts and not any(is_secret_key(p) for p in parts):
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = [raw, *(w for w in _WORDS.findall(raw) if not w.endswith(":"))]
        register_secrets({parts[-1]: value} if value is not None else raw)


_WORDS = re.compile(r"[^\s,{}\[\]'\"]+")
# a YAML error's context: '  in "<unicode string>", line 1, column 5:', then the quoted
# line and a caret line under it
_YAML_SNIPPET = re.compile(r'(\n\s*in "<[^>]*>", line \d+, column \d+:)(\n[^\n]*)?(\n\s*\^)?')


def _register_nested(data: Any, register: Any) -> None:
    """Register every ``storage_options`` mapping inside parsed YAML."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "storage_options" and value:
                register(value)
            else:
                _register_nested(value, register)


def error_message(error: BaseException) -> str:
    """What the log says about ``error``: its text scrubbed of every known secret
    (:func:`frameexit.storage.scrub`). A config error about storage options or a
    credential also loses the YAML parser's quote of the line (it cuts a secret into
    fragments no value match finds)."""
    from frameexit.errors import ConfigError
    from frameexit.storage import is_secret_key, scrub

    text = str(error)
    if isinstance(error, ConfigError):
        parts = str(error.field).split(".")
        if "storage_options" in parts or any(is_secret_key(p) for p in parts):
            text = _YAML_SNIPPET.sub(r"\1 (not shown: it may hold credentials)", text)
    return scrub(text)


def run_command(main: Any, argv: list[str] | None) -> int:
    """Run an entry point's ``main(argv)`` and map its outcome to an exit code (above).
    ``main`` returns a result (a ``complete: False`` in it means incomplete) or raises.
    Every line it logs is scrubbed of every known secret, the command line's storage
    options included (:func:`register_argument_secrets`)."""
    import sys

    from frameexit.errors import CheckpointError, ConfigError, LeaseLost, ManifestError

    register_argument_secrets(sys.argv[1:] if argv is None else argv)
    install_secret_filter()
    try:
        result = main(argv)
    except SystemExit as stop:  # argparse: --help is 0, a usage error 2
        return int(stop.code or 0) if isinstance(stop.code, int) else EXIT_CONFIG
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except (ConfigError, ManifestError, CheckpointError) as error:
        log.error("%s", error_message(error))
        return EXIT_CONFIG
    except LeaseLost as error:  # another writer holds the output: not a failure to retry
        log.error("%s", error_message(error))
        return EXIT_INCOMPLETE
    except Exception as error:  # noqa: BLE001 - the code tells a scheduler to retry
        log.exception("failed: %s: %s", type(error).__name__, error_message(error))
        return EXIT_FAILURE
    if isinstance(result, dict) and result.get("complete") is False:
        return EXIT_INCOMPLETE
    return EXIT_OK


def _ray_env() -> dict[str, str]:
    env = dict(RAY_ENV)
    if not verbose():  # Ray Data's operator bars also run in SplitCoordinator actors
        env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    else:
        env[VERBOSE_ENV] = "1"
    return env


def _quiet_ray_kwargs() -> dict[str, Any]:
    """``ray.init`` arguments of a quiet run: worker-side logging at errors only
    (frameexit's progress lines are written to stdout, not logged, so they still reach
    the driver) and the driver's ``ray`` logger at warnings ("Started a local Ray
    instance" and the like stay off the console)."""
    import ray

    if verbose():
        return {}
    return {
        "logging_config": ray.LoggingConfig(log_level="ERROR"),
        "logging_level": logging.WARNING,
    }


class RunPaths:
    """URIs of one run (see the module docstring)."""

    def __init__(self, cfg: Config) -> None:
        self.root = join_uri(absolute_uri(cfg.train.storage), cfg.train.name)
        self.options = options_for(self.root, cfg.data.storage_options)

    def __call__(self, *parts: str) -> str:
        return join_uri(self.root, *parts)

    @property
    def config(self) -> str:
        return self("config.yaml")

    def model(self, name: str) -> str:
        return self("checkpoints", f"{name}.pt")

    def features(self, split: str) -> str:
        return self("features", split)

    @property
    def ray(self) -> str:
        return self("ray")

    @property
    def eval(self) -> str:
        return self("eval")

    @property
    def skipped_parts(self) -> str:
        return self("skipped")

    @property
    def skipped(self) -> str:
        return self("skipped_videos.parquet")


def uri_options(cfg: Config, uri: str) -> dict[str, Any]:
    """The run's storage options that apply to ``uri`` (``data.storage_options`` for a
    remote URI, none for a local one)."""
    from frameexit.storage import options_for

    return options_for(uri, cfg.data.storage_options)


# --- Ray ------------------------------------------------------------------------------


def shared(value: Any) -> list:
    """``value`` in the object store, as ``[ObjectRef]`` for a task/actor/loop argument.

    Configs carry credentials (``data.storage_options``); passed as plain arguments they
    would sit in task specs, Ray Train's exported run settings and the dashboard. Through
    the object store only a reference travels (the list keeps Ray from resolving it).
    An empty value (no storage options) is passed as it is: nothing to hide, and no
    reference whose owner may drop it while a late actor of a finished pool starts.
    """
    import ray

    if value is None or (isinstance(value, dict | list | str) and not value):
        return value
    return [ray.put(value)]


def unshared(value: Any) -> Any:
    """The value behind :func:`shared` (anything else is returned as it is)."""
    if isinstance(value, list) and len(value) == 1:
        import ray

        if isinstance(value[0], ray.ObjectRef):
            return ray.get(value[0])
    return value


def ray_target() -> tuple[str | None, str]:
    """Where :func:`ensure_ray` connects, as ``ray.init()`` would: ``(address, why)``, or
    ``(None, why)`` for a private local instance.

    ``RAY_ADDRESS`` first (``local`` asks for a private instance), then the head that
    ``ray start`` recorded on this machine (``{RAY_TMPDIR or /tmp}/ray/ray_current_cluster``)
    when a Ray process still serves it — a stale record left by a head that is gone is
    ignored, where ``ray.init()`` would fail on it.
    """
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address == "local":
        return None, "RAY_ADDRESS=local"
    if address:
        return address, "RAY_ADDRESS"
    try:
        from ray._private.services import find_bootstrap_address, find_gcs_addresses
    except ImportError:  # another Ray layout: let ray.init() look for itself
        return None, "no running cluster found"
    recorded = find_bootstrap_address(None)
    if not recorded:
        return None, "no RAY_ADDRESS and no `ray start` head on this machine"
    if _served(recorded, find_gcs_addresses()):
        return recorded, "the head `ray start` runs on this machine"
    return None, f"the head `ray start` recorded at {recorded} is not running"


def _served(address: str, running: Any) -> bool:
    """Whether a raylet on this machine serves the GCS at ``address``: the same port on
    the same host, a loopback address and this node's IP counting as one host."""
    from ray._private.services import get_node_ip_address, parse_address

    def canonical(value: str) -> tuple[str, str] | None:
        parsed = parse_address(value)
        if parsed is None:
            return None
        host, port = parsed
        if host in ("localhost", "127.0.0.1", "0.0.0.0", "::1"):
            host = get_node_ip_address()
        return host, str(port)

    want = canonical(address)
    return want is not None and any(canonical(a) == want for a in running)


def ensure_ray(
    cfg: Config | None = None,
    *,
    object_store_mb: int | None = None,
    cpus_needed: float | None = None,
) -> None:
    """Connect to Ray as ``ray.init()`` would (:func:`ray_target`): the cluster of
    ``RAY_ADDRESS`` (e.g. under ``ray job submit``), else the head ``ray start`` runs on
    this machine, else a private local instance sized for ``cfg``. One log line says
    which, and where Ray's own logs go.

    Locally we declare at least ``cpus_needed`` (default: training's
    ``num_workers × cpus_per_worker + decode_concurrency``) logical CPUs plus one: on a
    2-core machine two Train workers would otherwise leave nothing for the Ray Data
    decode tasks and the run would hang.

    Unless verbose, Ray's internal logging stays off the console
    (:mod:`pipelines.console`): it goes to the session's logs folder.
    """
    import ray

    env = _ray_env()
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if not verbose():
        from ray.data import DataContext

        from pipelines.console import quiet_ray_data_console

        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False  # "Starting execution" + plan per dataset
        context.verbose_stats_logs = False
        quiet_ray_data_console()
    if ray.is_initialized():
        return
    if not verbose():
        from pipelines.console import quiet_console

        quiet_console()
    address, why = ray_target()
    common: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": True,  # the workers' [frameexit] lines; the rest is filtered
        **_quiet_ray_kwargs(),
    }
    if address is not None:
        ray.init(address=address, **common)
        install_secret_filter()  # ray.init adds handlers of its own
        log.info("Ray: joined the cluster at %s (%s)%s", address, why, _logs_note())
        return
    need = 2.0 if cpus_needed is None else cpus_needed
    if cfg is not None and cpus_needed is None:
        need = cfg.train.num_workers * cfg.train.cpus_per_worker + cfg.data.decode_concurrency
    num_cpus = max(os.cpu_count() or 1, int(need + 0.999) + 1)
    kwargs: dict[str, Any] = {}
    if object_store_mb:
        kwargs["object_store_memory"] = object_store_mb * 1024**2
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common, **kwargs)
    install_secret_filter()
    log.info(
        "Ray: started a private instance on this machine, %d CPUs (%s; set RAY_ADDRESS "
        "to join a cluster)%s",
        num_cpus,
        why,
        _logs_note(),
    )


def _logs_note() -> str:
    """Where Ray's own log lines went, for the connect line; opens the hidden-lines file."""
    from pipelines.console import hidden_to, ray_logs_folder

    folder = ray_logs_folder()
    if verbose():
        return f"; Ray's logs: {folder}" if folder else ""
    path = hidden_to(folder)
    return f"; Ray's own log lines: {path} (--verbose shows them here)" if path else ""
