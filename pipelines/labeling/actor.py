"""The Ray Data actor that labels batches of input rows with early exit.

Per batch of ``label.batch_size`` rows (pandas), on a pool of decode threads (decord and
PyAV release the GIL): ``frameexit.inference.label_videos`` opens every video once,
decodes at step t only frame π_t of the videos still running, and drops exited videos
from the batch. Each outcome becomes exactly one output row. A batch whose earlier
attempt killed the actor is labeled in isolation mode (``isolation``), so a video that
kills its worker twice gets a final ``crashed`` row and the job finishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pyarrow as pa

from frameexit.errors import VideoDecodeError
from frameexit.inference import (
    VideoOutcome,
    VideoRequest,
    device_plan,
    label_videos,
    named_answer,
    prepare_model,
    select_labels,
)
from frameexit.storage import scrub
from frameexit.testing import hooks
from frameexit.video import open_video
from pipelines.common import unshared
from pipelines.labeling.isolation import DEATHS_TO_CRASH, ExclusiveGate, batch_key
from pipelines.labeling.schema import STATUS_OK, output_row, rows_to_table


class VideoLabeler:
    """Ray Data actor: a FrameExit model that labels pandas batches of input rows.

    Built once per actor (model weights and the config, credentials included, come
    through the object store, never as plain task arguments). ``__call__`` returns a
    ``pyarrow.Table`` of ``OUTPUT_SCHEMA`` with exactly one row per input row. Usable
    without Ray (tests): then there is no ledger and no isolation.
    """

    def __init__(
        self,
        cfg: Any,
        weights: Any,
        class_names: Sequence[str],
        *,
        step_gflops: float,
        run_id: str = "",
        decode_threads: int = 2,
        device: str = "cpu",
        torch_threads: int | None = None,
        ledger: str | None = None,
        poison: str | None = None,
        operating_point: dict[str, Any] | None = None,
        calibration: bool = False,
    ) -> None:
        import torch

        from frameexit.checkpoint import model_from_state
        from frameexit.operating_point import OperatingPoint

        self.cfg, weights = unshared(cfg), unshared(weights)  # pipelines.common.shared
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.plan = device_plan(self.cfg, device)
        model = model_from_state(self.cfg.model, weights, source="labeling weights")
        self.model = prepare_model(model, self.plan)
        self.device = device
        self.class_names = list(class_names)
        self.step_gflops = float(step_gflops)
        self.run_id = run_id
        self.pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="fe-decode")
        self.gate = ExclusiveGate()
        self.ledger = None
        if ledger:
            import ray

            self.ledger = ray.get_actor(ledger)
            context = ray.get_runtime_context()
            actor_id = context.get_actor_id()
            if actor_id:  # a Ray actor: the driver may have to stop it
                ray.get(self.ledger.register_labeler.remote(actor_id, context.current_actor))
        self.poison = poison
        # the rule the driver resolved (None: all T); calibration rows run all T steps
        # and keep every step's exit score and labels
        self.point = OperatingPoint.from_dict(operating_point) if operating_point else None
        self.calibration = calibration

    def _open_reader(self, uri: str) -> Any:
        if self.poison and self.poison in uri:
            hooks.exit_process(137)  # test hook label.kill_worker_on (like the OOM killer)
        return open_video(uri, self.cfg.data.decode, storage_options=self.cfg.data.storage_options)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        return self.label(batch)

    def label(self, batch: pd.DataFrame) -> pa.Table:
        """One output row per row of ``batch`` (columns ``INPUT_COLUMNS``)."""
        rows = list(batch.itertuples(index=False))
        if self.ledger is None:
            return self._label(rows)
        import ray

        key = batch_key([str(r.input_id) for r in rows])
        attempt, deaths = ray.get(self.ledger.start_batch.remote(key))
        if attempt == 1:
            with self.gate.normal():
                table = self._label(rows)
        else:
            with self.gate.exclusive():
                table = self._isolated(key, rows, deaths)
        ray.get(self.ledger.finish_batch.remote(key))
        return table

    def _label(self, rows: list[Any]) -> pa.Table:
        requests = [VideoRequest(str(r.video), float(r.start), float(r.end)) for r in rows]
        outcomes = label_videos(
            self.model,
            requests,
            self.cfg,
            pool=self.pool,
            open_reader=self._open_reader,
            operating_point=self.point,
            exit=self.cfg.label.early_exit and not self.calibration and self.point is not None,
            record_steps=self.calibration,
            plan=self.plan,
        )
        return rows_to_table([self._output(r, o) for r, o in zip(rows, outcomes, strict=True)])

    def _isolated(self, key: str, rows: list[Any], deaths: dict[str, int]) -> pa.Table:
        """One video at a time; a video blamed for two deaths is not opened again."""
        import ray

        out = []
        for r in rows:
            input_id = str(r.input_id)
            if deaths.get(input_id, 0) >= DEATHS_TO_CRASH:
                error = VideoDecodeError(
                    str(r.video),
                    "crashed",
                    f"decoding it killed its worker process {deaths[input_id]} times "
                    "(decoder crash or out of memory); not tried again",
                )
                out.append(
                    rows_to_table([self._output(r, VideoOutcome(str(r.video), error=error))])
                )
                continue
            ray.get(self.ledger.video_in_flight.remote(key, input_id))
            out.append(self._label([r]))
        return pa.concat_tables(out) if out else rows_to_table([])

    def _output(self, r: Any, outcome: VideoOutcome) -> dict[str, Any]:

        base = dict(
            row=int(r.row),
            input_id=str(r.input_id),
            video=outcome.uri,
            start=_bound(r.start),
            end=_bound(r.end),
            frames_decoded=outcome.frames_decoded,
            num_frames=outcome.num_frames,
            attempts=int(getattr(r, "attempts", 1) or 1),
            run_id=self.run_id,
            warning=outcome.warning,
        )
        if not outcome.ok:
            error = outcome.error or VideoDecodeError(outcome.uri, "unreadable", "no answer")
            message = scrub(str(error), self.cfg.data.storage_options)
            return output_row(
                **base, status=error.kind, error=message, calibration=self.calibration
            )
        steps: dict[str, Any] = {}
        if self.calibration and outcome.step_scores is not None:
            steps = dict(
                calibration=True,
                step_scores=[float(v) for v in outcome.step_scores.tolist()],
                step_labels=[
                    select_labels(
                        self.model.scores_from_logits(logits.unsqueeze(0))[0],
                        multi_label=self.cfg.model.multi_label,
                        top_k=1,
                        threshold=self.cfg.label.multi_label_threshold,
                    )[0]
                    for logits in outcome.step_logits
                ],
            )
        return output_row(
            **base,
            **steps,
            status=STATUS_OK,
            **named_answer(outcome, self.cfg, self.class_names, self.step_gflops),
        )


def _bound(value: Any) -> float | None:
    value = float(value)
    return value if value == value else None
