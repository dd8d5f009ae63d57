"""Fault injection: the few named points in production code that a test can switch on.

Production code asks :func:`value` at a named point; it is ``None`` (nothing happens)
unless a test switched that point on. The switches travel in one environment variable,
``FRAMEEXIT_TEST_HOOKS`` (a JSON object), so they reach the driver subprocesses a test
starts; a driver that needs one inside Ray workers reads it and passes it on as an
argument (a Ray worker's environment is fixed when the cluster starts).

The points (:data:`POINTS`) and what they do:

* ``train.fail_after_epoch`` ``"STAGE:EPOCH[:MARKER]"``: a training worker raises after
  that epoch's checkpoint, once if a marker file path is given (it is created), else
  every time (Ray Train then retries from the checkpoint, up to ``train.max_failures``).
* ``label.kill_worker_on`` ``"TEXT"``: the labeling worker that opens a URI containing
  TEXT exits at once (``os._exit(137)``, like the out-of-memory killer).
* ``label.exit_before_compact`` ``true``: the labeling driver exits (``os._exit(3)``)
  after its last part is committed, before compaction.
* ``check.kill_worker_on`` ``"TEXT"``: the ``frameexit check`` worker that reaches a URI
  containing TEXT exits at once (exit 137), as a decoder crash would.
* ``label.part_delay_s`` ``SECONDS``: the labeling driver waits after each committed part
  (so a test can kill it between parts).

Tests switch points on with :func:`switched_on` (this process and what it starts) or
:func:`environment` (the variables for a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

ENV = "FRAMEEXIT_TEST_HOOKS"
POINTS = {
    "train.fail_after_epoch": "STAGE:EPOCH[:MARKER]: a training worker raises after it",
    "label.kill_worker_on": "TEXT: the labeling worker opening a URI with it exits",
    "label.exit_before_compact": "true: the labeling driver exits before compaction",
    "label.part_delay_s": "SECONDS: the labeling driver waits after each part",
    "check.kill_worker_on": "TEXT: the check worker opening a URI with it exits",
}


def _check(names: Any) -> None:
    unknown = sorted(set(names) - set(POINTS))
    if unknown:
        raise KeyError(f"unknown test hook {unknown[0]!r}; known: {', '.join(POINTS)}")


def active() -> dict[str, Any]:
    """Every point switched on in this process, with its value."""
    text = os.environ.get(ENV, "")
    if not text:
        return {}
    points = json.loads(text)
    _check(points)
    return points


def value(name: str) -> Any:
    """The value of point ``name`` if a test switched it on, else None."""
    _check([name])
    return active().get(name)


def environment(points: Mapping[str, Any], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``points`` switched on as well."""
    _check(points)
    env = dict(os.environ if base is None else base)
    current = json.loads(env.get(ENV) or "{}")
    env[ENV] = json.dumps({**current, **dict(points)})
    return env


@contextlib.contextmanager
def switched_on(points: Mapping[str, Any]) -> Iterator[None]:
    """Switch ``points`` on in this process (and what it starts) for the ``with`` block."""
    before = os.environ.get(ENV)
    os.environ[ENV] = environment(points)[ENV]
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def exit_process(code: int) -> NoReturn:
    """End this process at once, without cleanup (a killed worker or driver)."""
    os._exit(code)
