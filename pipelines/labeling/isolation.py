"""Isolating a video that kills its worker, so one poison file cannot stall a job.

Ray Data runs a batch as an actor task; when the actor process dies (a decoder crash,
the OOM killer, a node lost) Ray restarts the actor and runs the task again. A small
Ray actor, the :class:`CrashLedger`, remembers across those restarts what each batch was
doing::

    attempt 1        the whole batch at once (normal speed); ledger: "batch in flight"
    actor dies ──►   attempt 2 starts: the batch is a suspect → isolation mode:
                     one video at a time, exclusively in its actor (no other batch runs
                     beside it, so a death can be blamed on exactly one video);
                     ledger: "video v of batch b in flight"
    actor dies ──►   v is blamed once; attempt 3 redoes the batch video by video
    actor dies ──►   v is blamed twice → from now on v gets a final ``crashed`` row
                     without being opened; the rest of the batch is labeled

So a batch with k poison videos needs at most 1 + 2k retries; actor restarts and task
retries are bounded explicitly (``label.max_actor_restarts``, and 1 + 2 × batch size
task retries). The ledger lives as long as the job's driver; a video that crashed a
run gets its ``crashed`` row and is not tried again unless the output is overwritten.

The ledger also holds the handles of the pipeline's labeling actors: when a pipeline
fails (a lost node took blocks with it), Ray Data only drops its own handles, and an
actor Ray restarted on a surviving node keeps its CPUs; the driver kills them all
(:func:`stop_labelers`) before it starts the next pipeline, which would otherwise wait
for those CPUs forever.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

LEDGER_NAME_PREFIX = "frameexit-crash-ledger-"
DEATHS_TO_CRASH = 2


class CrashLedger:
    """Ray actor (``num_cpus=0``): attempts per batch and deaths per video of one job."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.in_flight: dict[str, str | None] = {}  # batch -> video in flight (None: all)
        self.deaths: dict[str, int] = {}
        self.labelers: dict[str, Any] = {}  # actor id -> handle of a labeling actor

    def start_batch(self, batch: str) -> tuple[int, dict[str, int]]:
        """Register an attempt of ``batch``; blame the video that was in flight when its
        previous attempt died. Returns ``(attempt, deaths per video so far)``."""
        attempt = self.attempts.get(batch, 0) + 1
        self.attempts[batch] = attempt
        if batch in self.in_flight:  # the previous attempt never finished: it died
            video = self.in_flight[batch]
            if video is not None:
                self.deaths[video] = self.deaths.get(video, 0) + 1
        self.in_flight[batch] = None
        return attempt, dict(self.deaths)

    def video_in_flight(self, batch: str, video: str) -> None:
        """In isolation mode: ``video`` of ``batch`` is being decoded now."""
        self.in_flight[batch] = video

    def finish_batch(self, batch: str) -> None:
        """The batch returned its rows: nothing of it is in flight any more."""
        self.in_flight.pop(batch, None)

    def crashed(self) -> dict[str, int]:
        """Videos blamed for deaths (id -> deaths)."""
        return dict(self.deaths)

    def register_labeler(self, actor_id: str, actor: Any) -> None:
        """A labeling actor of the running pipeline (again after each restart)."""
        self.labelers[actor_id] = actor

    def take_labelers(self) -> list[Any]:
        """The registered labeling actors, forgotten here."""
        handles = list(self.labelers.values())
        self.labelers.clear()
        return handles


def start_ledger(job_key: str) -> Any:
    """A named :class:`CrashLedger` for one job, pinned to the driver's node (it must
    outlive the worker nodes whose deaths it records; a soft affinity was seen to place
    it on a worker node, and the loss of that node took the ledger with it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_restarts=0)(CrashLedger)
    return actor.options(
        name=LEDGER_NAME_PREFIX + job_key, scheduling_strategy=strategy, lifetime=None
    ).remote()


def stop_labelers(ledger: Any) -> int:
    """Kill the labeling actors of a failed pipeline (those registered in ``ledger``), so
    that their CPUs are free for the next one; returns how many."""
    import ray

    handles = ray.get(ledger.take_labelers.remote())
    for handle in handles:
        ray.kill(handle, no_restart=True)
    return len(handles)


class ExclusiveGate:
    """Inside one actor: normal batches run side by side; an isolation batch runs alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._normal = 0
        self._exclusive = False

    @contextmanager
    def normal(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._normal += 1
        try:
            yield
        finally:
            with self._cond:
                self._normal -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._normal == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def batch_key(input_ids: Sequence[str]) -> str:
    """A batch's identity in the ledger (its ids; Ray retries a task with the same rows)."""
    import hashlib

    return hashlib.sha256("\n".join(input_ids).encode("utf-8")).hexdigest()[:24]


def task_retries(batch_size: int) -> int:
    """Task retries that let isolation blame every video of a batch twice."""
    return 1 + 2 * int(batch_size)
