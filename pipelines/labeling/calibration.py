"""Calibrating the operating point on the corpus being labeled (``--calibrate N``).

A threshold chosen on the training data's validation split holds its guarantee only for
videos like those; a corpus from another source, or harder, breaks it silently. So::

    inputs ──uniform random sample of N ids (keyed hash: order-free, same on every rerun)
      │
      ├─► label the sample with all T steps: final rows, `calibration` = true, each
      │   step's exit score and labels kept (step_scores, step_labels)
      ├─► Learn-then-Test over the checkpoint's threshold family on those rows
      │   (frameexit.operating_point.calibrate): disagreement with the all-T label
      │   <= ε with probability >= 1 − δ ──► _calibration.json
      └─► the rest labeled with early exit at that operating point

Exactly-once like every other row: sample rows are committed through the same parts; a
crash during calibration resumes with the sample rows still missing, and a rerun reuses
``_calibration.json`` (its settings are in the output's fingerprint). Sample videos that
fail to decode get their error row and are left out of the calibration (n counts the
answered ones).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from frameexit.operating_point import OperatingPoint, calibrate, step_losses, summary
from frameexit.storage import exists, join_uri, read_bytes, write_text
from pipelines.labeling.inputs import LabelInputs
from pipelines.labeling.job import LabelJob
from pipelines.labeling.parts import read_winners
from pipelines.labeling.schema import CALIBRATION_NAME, STATUS_OK

log = logging.getLogger("frameexit.pipelines.label")


def calibration_sample(ids: pa.Array | pa.ChunkedArray, size: int, seed: int) -> pa.Array:
    """A uniform random sample of ``size`` ids: those with the smallest SHA-256 of
    ``seed:id`` (a random permutation that depends on neither the input's order nor its
    other rows, so reruns and reordered inputs draw the same videos)."""
    values = ids.to_pylist()
    keys = np.fromiter(
        (
            int.from_bytes(hashlib.sha256(f"{seed}:{v}".encode()).digest()[:8], "big")
            for v in values
        ),
        dtype=np.uint64,
        count=len(values),
    )
    chosen = np.argsort(keys, kind="stable")[: min(size, len(values))]
    return pa.array([values[i] for i in np.sort(chosen)], pa.string())


def calibrate_on_corpus(
    job: LabelJob,
    inputs: LabelInputs,
    todo: pa.Table,
    options: Mapping[str, Any],
    label: Callable[[pa.Table], Any],
) -> dict[str, Any]:
    """Calibrate ``job``'s operating point on a sample of its own inputs (labeling the
    sample rows of ``todo`` with all T via ``label`` first), or reuse the output's
    ``_calibration.json``; sets ``job.operating_point`` and returns the record."""
    spec = dict(job.calibration or {})
    uri = join_uri(job.output, CALIBRATION_NAME)
    if exists(uri, storage_options=options):
        record = json.loads(read_bytes(uri, storage_options=options))
        if record.get("settings") == json.loads(json.dumps(spec)):
            job.operating_point = OperatingPoint.from_dict(record["operating_point"])
            log.info("calibration: reusing %s (%s)", uri, job.operating_point.describe())
            return _public(record)
    sample = calibration_sample(inputs.videos.column("input_id"), spec["videos"], spec["seed"])
    if len(sample) >= len(inputs.videos):
        log.warning(
            "calibration: the sample (%d) covers every input (%d): every video is labeled "
            "with all T steps",
            spec["videos"], len(inputs.videos),
        )  # fmt: skip
    rows = todo.filter(pc.is_in(todo.column("input_id"), value_set=sample))
    log.info(
        "calibration: labeling %d of a uniform random sample of %d inputs with all T steps",
        rows.num_rows, len(sample),
    )  # fmt: skip
    if rows.num_rows:
        label(rows)
    answered = _sample_rows(job, sample, options)
    failed = len(sample) - answered.num_rows
    scores = np.asarray(answered.column("step_scores").to_pylist(), dtype=np.float64)
    labels = answered.column("step_labels").to_pylist()
    steps = job.cfg.model.num_steps
    if answered.num_rows == 0:
        scores = np.zeros((0, steps))
    codes = step_codes(labels, steps)
    point = calibrate(
        job.family, scores, step_losses(codes, risk=spec["risk"]), score=spec["score"],
        risk=spec["risk"], bound=spec["bound"], delta=spec["delta"],
        calibrated_on=f"a uniform random sample of the {len(inputs.videos)} inputs",
    )  # fmt: skip
    job.operating_point = point
    record = {
        "settings": spec,
        "sample": len(sample),
        "answered": int(answered.num_rows),
        "failed": int(failed),
        "operating_point": point.to_dict(),
        "expected_steps": point.mean_steps,
        "expected_gflops": None if point.mean_steps is None else point.mean_steps * job.step_gflops,
    }
    write_text(uri, json.dumps(record, indent=1), storage_options=options)
    (log.warning if point.fallback else log.info)("calibration: %s", point.describe())
    return _public(record)


def step_codes(step_labels: list[list[list[int]]], steps: int) -> np.ndarray:
    """Per video and step, the label ids as a comparable code ``[n, T]``: the set of ids,
    whatever their order (a multi-label row lists its labels best score first, and two
    steps with the same labels in another order agree)."""
    codes = np.empty((len(step_labels), steps), dtype=object)
    for i, per_step in enumerate(step_labels):
        for t, ids in enumerate(per_step):
            codes[i, t] = tuple(sorted(ids))
    return codes


def _sample_rows(job: LabelJob, sample: pa.Array, options: Mapping[str, Any]) -> pa.Table:
    """The committed, answered calibration rows of the sample."""
    winners = read_winners(job.output, storage_options=options)
    mine = pc.and_(
        pc.is_in(winners.column("input_id"), value_set=sample),
        pc.and_(pc.equal(winners.column("status"), STATUS_OK), winners.column("calibration")),
    )
    return winners.filter(pc.fill_null(mine, False))


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """The record for summaries: the operating point's headline numbers, no family."""
    point = OperatingPoint.from_dict(record["operating_point"])
    out = {k: v for k, v in record.items() if k != "operating_point"}
    out["operating_point"] = summary(point, 0.0)
    out["operating_point"].pop("calibration_gflops", None)
    return out
