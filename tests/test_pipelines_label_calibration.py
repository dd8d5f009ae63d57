"""Labeling with the operating point: the checkpoint's by default, or calibrated on the
corpus itself (``--calibrate N``), exactly once through a crash and reruns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from fixtures.kill import kill_label_run_after_parts

from frameexit.backbones import backbone_spec
from frameexit.checkpoint import load_model_checkpoint, save_model_checkpoint
from frameexit.config import load_config
from frameexit.model import build_model
from frameexit.operating_point import OperatingPoint
from frameexit.policy import get_policy
from frameexit.transforms import frames_to_tensor
from frameexit.video import open_video
from pipelines import labeling
from pipelines.labeling import STATUS_OK, read_labels
from pipelines.labeling.calibration import calibration_sample, step_codes
from pipelines.labeling.schema import CALIBRATION_NAME

ROOT = Path(__file__).resolve().parents[1]
T = 5
MODEL = [
    "model.backbone=tiny", "model.feature_dim=64", "model.num_classes=3",
    f"model.num_steps={T}", "model.image_size=48",
]  # fmt: skip
RUN = ["label.batch_size=1", "label.part_size=2", "label.concurrency=2", "label.cpus_per_actor=0.5"]


def _frames(model, uri: str) -> torch.Tensor:
    m = model.cfg
    spec = backbone_spec(m.backbone)
    with open_video(uri) as reader:
        raw = reader.get(get_policy(m.policy)(reader.num_frames, m.num_steps))
    return frames_to_tensor(raw, image_size=m.image_size, mean=spec.mean, std=spec.std)


@pytest.fixture(scope="module")
def corpus(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    videos = tiny_corpus.table["video"].tolist()
    entries = videos + [str(root / "missing.mp4")]
    manifest = root / "manifest.csv"
    manifest.write_text("video\n" + "\n".join(entries) + "\n")
    cfg = load_config(None, MODEL)
    torch.manual_seed(1)
    model = build_model(cfg.model).eval()
    checkpoint = str(root / "model.pt")
    # a stored operating point: confidence >= 0.2 exits every video at step 1
    stored = OperatingPoint(score="confidence", thresholds=[0.2] * (T - 1) + [math.inf])
    save_model_checkpoint(model, cfg, checkpoint, extra={"operating_point": stored.to_dict()})
    return {"manifest": str(manifest), "videos": videos, "entries": entries,
            "checkpoint": checkpoint, "root": root}  # fmt: skip


def test_calibration_sample_is_uniform_order_free_and_stable():
    ids = pa.array([f"/v/{i}.mp4#n=1" for i in range(1000)])
    sample = calibration_sample(ids, 100, seed=0)
    assert len(sample) == 100 and len(set(sample.to_pylist())) == 100
    shuffled = pa.array(list(reversed(ids.to_pylist())))
    assert sorted(calibration_sample(shuffled, 100, 0).to_pylist()) == sorted(sample.to_pylist())
    assert set(calibration_sample(ids, 100, 1).to_pylist()) != set(sample.to_pylist())
    # roughly uniform: as many from the first half as from the second
    first = sum(int(s.split("/")[2].split(".")[0]) < 500 for s in sample.to_pylist())
    assert 30 <= first <= 70
    assert len(calibration_sample(ids, 5000, 0)) == 1000


def test_step_codes_compare_label_sets_not_their_order():
    codes = step_codes([[[2, 0], [0, 2], [1]]], 3)
    assert codes[0, 0] == codes[0, 1] != codes[0, 2]


def test_labeler_in_calibration_mode_keeps_every_step(corpus):
    """No Ray: a calibration row runs all T steps and records each step's exit score and
    label, and its final label is the all-T label."""
    model, cfg = load_model_checkpoint(corpus["checkpoint"])
    videos = corpus["videos"][:3]
    batch = pd.DataFrame(
        {"row": [0, 1, 2], "input_id": videos, "video": videos, "start": np.nan, "end": np.nan}
    )
    point = model.operating_point
    labeler = labeling.VideoLabeler(
        cfg, model.state_dict(), [], step_gflops=1.0,
        operating_point=point.to_dict(), calibration=True,
    )  # fmt: skip
    rows = labeler.label(batch).to_pandas()
    assert rows["calibration"].all() and (rows["exit_step"] == T).all()
    for row in rows.itertuples():
        with torch.no_grad():
            out = model(_frames(model, row.video)[None])
        probs = out.logits[0].softmax(-1)
        np.testing.assert_allclose(row.step_scores, probs.max(-1).values.numpy(), rtol=1e-4)
        assert [list(s) for s in row.step_labels] == [[int(i)] for i in probs.argmax(-1)]
        assert row.label_ids[0] == int(probs[-1].argmax())
    # the stored operating point without calibration: everyone exits at step 1
    plain = labeling.VideoLabeler(
        cfg, model.state_dict(), [], step_gflops=1.0,
        operating_point=point.to_dict(),
    )  # fmt: skip
    rows = plain.label(batch).to_pandas()
    assert (rows["exit_step"] == 1).all() and not rows["calibration"].any()
    assert rows["step_scores"].isna().all()


@pytest.mark.ray
def test_default_uses_the_checkpoints_operating_point_and_threshold_overrides(
    ray_cluster, corpus, tmp_path
):
    from pipelines.label import main

    summary = main(["--input", corpus["manifest"], "--output", str(tmp_path / "a"),
                    "--checkpoint", corpus["checkpoint"], "--no-progress", *RUN])  # fmt: skip
    rows = read_labels(str(tmp_path / "a"))
    ok = rows[rows["status"] == STATUS_OK]
    assert (ok["exit_step"] == 1).all()  # the stored point: confidence >= 0.2 at step 1
    assert summary["operating_point"]["score"] == "confidence"
    fingerprint = json.loads((tmp_path / "a" / "_labeling.json").read_text())
    assert fingerprint["settings"]["operating_point"]["thresholds"][0] == 0.2
    assert fingerprint["settings"]["decode_backend"] == "auto"  # backends never mix
    summary = main(["--input", corpus["manifest"], "--output", str(tmp_path / "b"),
                    "--checkpoint", corpus["checkpoint"], "--no-progress", "--threshold", "1.01",
                    *RUN])  # fmt: skip
    rows = read_labels(str(tmp_path / "b"))
    assert (rows[rows["status"] == STATUS_OK]["exit_step"] == T).all()
    assert summary["operating_point"]["rule"] == "paper"


@pytest.mark.ray
@pytest.mark.slow
def test_calibrate_on_the_corpus_exactly_once_through_a_crash(ray_cluster, corpus, tmp_path):
    """--calibrate: the sample is labeled with all T first (final rows marked
    `calibration`), the thresholds are chosen on it, the rest is labeled at them. A driver
    killed during calibration resumes with exactly one row per input; a further rerun
    reuses _calibration.json and labels nothing."""
    out = tmp_path / "out"
    args = [
        "--input", corpus["manifest"], "--output", str(out), "--checkpoint",
        corpus["checkpoint"], "--no-progress", "--calibrate", "8", "--max-disagreement", "0.5",
        *RUN,
    ]  # fmt: skip
    kill_label_run_after_parts(args, str(out), ray_cluster["address"], parts=2)
    assert not (out / CALIBRATION_NAME).exists(), "the kill should land during calibration"
    partial = read_labels(str(out))
    assert 0 < len(partial) < 8 and partial["calibration"].all()

    from pipelines.label import main

    summary = main(args)
    rows = read_labels(str(out))
    assert summary["complete"] and len(rows) == len(corpus["entries"])
    assert rows["input_id"].is_unique
    record = json.loads((out / CALIBRATION_NAME).read_text())
    sample = set(calibration_sample(pa.array(rows["input_id"].tolist()), 8, 0).to_pylist())
    assert set(rows[rows["calibration"]]["input_id"]) == sample
    calibrated = rows[rows["calibration"] & (rows["status"] == STATUS_OK)]
    assert record["answered"] == len(calibrated) and record["sample"] == 8
    assert (calibrated["exit_step"] == T).all()
    assert (calibrated["step_scores"].map(len) == T).all()
    point = OperatingPoint.from_dict(record["operating_point"])
    assert point.rule == "calibrated" and point.bound == 0.5 and point.calibration_videos >= 4
    assert summary["calibration"]["answered"] == record["answered"]
    assert summary["operating_point"]["thresholds"] == record["operating_point"]["thresholds"]
    # the rest: early exit at the calibrated point, as the model itself decides
    model, _ = load_model_checkpoint(corpus["checkpoint"])
    rest = rows[~rows["calibration"] & (rows["status"] == STATUS_OK)]
    assert len(rest) == len(corpus["videos"]) - len(calibrated)
    for row in rest.itertuples():
        frames = _frames(model, row.video)
        own = model.early_exit(lambda s, a, f=frames: f[s : s + 1], 1, operating_point=point)
        assert row.exit_step == int(own.exit_step[0])

    again = main(args)
    assert again["run"]["videos"] == 0 and again["complete"]
    assert (
        again["calibration"]["operating_point"]["thresholds"]
        == record["operating_point"]["thresholds"]
    )
    pd.testing.assert_frame_equal(read_labels(str(out)), rows)
