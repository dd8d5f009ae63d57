"""The Ray Data actor that labels batches of input rows with early exit.

Per batch of ``label.batch_size`` rows (pandas), on a pool of decode threads (decord and
PyAV release the GIL): ``frameexit.inference.label_videos`` opens every video once,
decodes at step t only frame π_t of the videos still running, and drops exited videos
from the batch. Each outcome becomes exactly one output row.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pyarrow as pa

from frameexit.errors import VideoDecodeError
from frameexit.inference import VideoOutcome, VideoRequest, label_videos, select_labels
from pipelines.labeling.schema import STATUS_OK, output_row, rows_to_table


class VideoLabeler:
    """Ray Data actor: a FrameExit model that labels pandas batches of input rows.

    Built once per actor (model weights come through the object store, so every actor has
    the same model, checkpointed or random). ``__call__`` returns a ``pyarrow.Table`` of
    ``OUTPUT_SCHEMA`` with exactly one row per input row. Usable without Ray (tests).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        weights: Any,
        class_names: Sequence[str],
        *,
        step_gflops: float,
        decode_threads: int = 2,
        device: str = "cpu",
        torch_threads: int | None = None,
        backend: str | None = None,
    ) -> None:
        import torch

        from frameexit.checkpoint import model_from_state
        from frameexit.config import config_from_dict

        if isinstance(weights, list):  # [ObjectRef] (a bare ref would not reach us as-is)
            import ray

            weights = ray.get(weights[0])
        self.cfg = config_from_dict(cfg)
        if backend:
            self.cfg.data.decode_backend = backend
        self.backend = self.cfg.data.decode_backend
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model = model_from_state(self.cfg.model, weights, source="labeling weights")
        self.model = self.model.to(device).eval()
        self.device = device
        self.class_names = list(class_names)
        self.step_gflops = float(step_gflops)
        self.pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="fe-decode")

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        return self.label(batch)

    def label(self, batch: pd.DataFrame) -> pa.Table:
        """One output row per row of ``batch`` (columns ``INPUT_COLUMNS``)."""
        rows = list(batch.itertuples(index=False))
        requests = [VideoRequest(str(r.video), float(r.start), float(r.end)) for r in rows]
        outcomes = label_videos(
            self.model,
            requests,
            self.cfg,
            pool=self.pool,
            exit=self.cfg.label.early_exit,
        )
        return rows_to_table(
            [self._output(r, outcome) for r, outcome in zip(rows, outcomes, strict=True)]
        )

    def _output(self, r: Any, outcome: VideoOutcome) -> dict[str, Any]:
        from frameexit.flops import video_gflops

        base = dict(
            row=int(r.row),
            input_id=str(r.input_id),
            video=outcome.uri,
            frames_decoded=outcome.frames_decoded,
            num_frames=outcome.num_frames,
        )
        if not outcome.ok:
            error = outcome.error or VideoDecodeError(outcome.uri, "unreadable", "no answer")
            return output_row(**base, status=error.kind, error=str(error))
        ids, values = select_labels(
            outcome.scores,
            multi_label=self.cfg.model.multi_label,
            top_k=self.cfg.label.top_k,
            threshold=self.cfg.label.multi_label_threshold,
        )
        names = [self._name(i) for i in ids]
        return output_row(
            **base,
            status=STATUS_OK,
            label=names[0] if names else None,
            labels=names,
            label_ids=ids,
            scores=values,
            exit_step=outcome.exit_step,
            gflops=video_gflops(self.step_gflops, outcome.exit_step),
        )

    def _name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else f"class_{index}"
