"""One-video inference (``frameexit predict``, ``frameexit.predict``), class names stored in
checkpoints, and ``label --input`` of a single video file — all without Ray.

The model is a random tiny network whose checkpoint carries the corpus's class names and a
fixed operating point chosen so that the videos exit at different steps.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frameexit.checkpoint import (
    load_model_checkpoint,
    read_checkpoint_class_names,
    read_model_checkpoint,
    save_model_checkpoint,
)
from frameexit.config import load_config
from frameexit.errors import CheckpointError
from frameexit.exit_strip import BORDER, PROCESSED, render_strip, strip_size, tile_boxes
from frameexit.inference import VideoRequest, label_videos, select_labels
from frameexit.model import build_model
from frameexit.operating_point import OperatingPoint
from frameexit.predict import Predictor, load_predictor, main

T = 5
MODEL = [
    "model.backbone=tiny",
    "model.feature_dim=32",
    "model.num_classes=3",
    f"model.num_steps={T}",
    "model.image_size=32",
]
ROW_KEYS = {"video", "label", "score", "exit_step", "gflops", "labels", "scores",
            "frames_decoded", "status", "error", "operating_point"}  # fmt: skip


def _spread_point(model, videos: list[str]) -> OperatingPoint:
    """Per-step gate thresholds at the median of the videos' exit probabilities, so that
    some exit at each step and some go on (a random model's gates are near-constant)."""
    from frameexit.inference import VideoRequest

    cfg = load_config(None, MODEL)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        outcomes = label_videos(
            model, [VideoRequest(v) for v in videos], cfg, pool=pool, exit=False,
            record_steps=True,
            operating_point=OperatingPoint("gate", [0.5] * T),
        )  # fmt: skip
    scores = np.stack([o.step_scores.numpy() for o in outcomes])
    thresholds = [float(np.quantile(scores[:, t], 0.6)) for t in range(T - 1)] + [math.inf]
    return OperatingPoint("gate", thresholds, rule="fixed")


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    videos = tiny_corpus.table["video"].tolist()[:6]
    cfg = load_config(None, MODEL)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    point = _spread_point(model, videos)
    named = str(root / "named.pt")
    save_model_checkpoint(
        model, cfg, named, extra={"operating_point": point.to_dict()},
        class_names=list(tiny_corpus.class_names),
    )  # fmt: skip
    unnamed = str(root / "unnamed.safetensors")
    save_model_checkpoint(model, cfg, unnamed, extra={"operating_point": point.to_dict()})
    return {"videos": videos, "named": named, "unnamed": unnamed, "point": point,
            "names": list(tiny_corpus.class_names), "root": root}  # fmt: skip


# ---------------------------------------------------------------- class names in checkpoints


def test_checkpoints_carry_their_class_names(setup, tmp_path):
    model, _ = load_model_checkpoint(setup["named"])
    assert model.class_names == setup["names"]
    assert read_checkpoint_class_names(setup["named"]) == setup["names"]
    assert load_model_checkpoint(setup["unnamed"])[0].class_names is None
    assert read_checkpoint_class_names(setup["unnamed"]) is None
    # safetensors keeps them too, and a wrong count is refused when writing
    state, cfg, _ = read_model_checkpoint(setup["named"])
    again = str(tmp_path / "again.safetensors")
    save_model_checkpoint(model, cfg, again, class_names=["a", "b", "c"])
    assert read_checkpoint_class_names(again) == ["a", "b", "c"]
    assert load_model_checkpoint(again)[0].class_names == ["a", "b", "c"]
    with pytest.raises(CheckpointError, match="2 class names for a model of 3"):
        save_model_checkpoint(model, cfg, str(tmp_path / "bad.pt"), class_names=["a", "b"])


def test_training_stores_the_manifests_class_map(tiny_corpus, caplog):
    from pipelines.stages import class_names

    cfg = load_config(None, [f"data.manifest={tiny_corpus.manifest}", "model.num_classes=3"])
    assert class_names(cfg) == list(tiny_corpus.class_names)
    # a model with more outputs than the manifest has classes: the rest are named, warned
    cfg = load_config(None, [f"data.manifest={tiny_corpus.manifest}", "model.num_classes=5"])
    with caplog.at_level(logging.WARNING):
        assert class_names(cfg) == [*tiny_corpus.class_names, "class_3", "class_4"]
    assert "outputs 3..4 are named class_<i>" in caplog.text


def test_labeling_prefers_the_checkpoints_names_and_warns_when_it_guesses(setup, caplog):
    from pipelines.labeling.job import resolve_class_names

    cfg = load_config(None, MODEL)
    other = ["x", "y", "z"]
    assert (
        resolve_class_names(cfg, 3, checkpoint=setup["named"], input_names=other)
        == (setup["names"])
    )
    with caplog.at_level(logging.WARNING):
        guessed = resolve_class_names(cfg, 3, checkpoint=setup["unnamed"], input_names=other)
    assert guessed == other and "GUESSED from the input manifest" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        placeholders = resolve_class_names(cfg, 3, checkpoint=setup["unnamed"])
    assert placeholders == ["class_0", "class_1", "class_2"]
    assert "NO CLASS NAMES" in caplog.text and "stores none" in caplog.text


def test_the_official_converter_checks_the_names_it_is_given(tmp_path):
    from frameexit.official import convert_official_checkpoint

    with pytest.raises(CheckpointError, match="3 class names for a model of 200"):
        convert_official_checkpoint(
            "activitynet", str(tmp_path / "x.pth"), str(tmp_path / "y.pt"),
            class_names=["a", "b", "c"],
        )  # fmt: skip


# ---------------------------------------------------------------- predict


def test_predict_answers_as_label_videos_and_the_labeler_do(setup):
    """The same answers as ``frameexit.inference.label_videos`` at the checkpoint's point
    and as labeling's actor, with the checkpoint's names."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.labeling import VideoLabeler
    from pipelines.labeling.job import prepare_job

    videos = setup["videos"]
    with load_predictor(setup["named"], device="cpu") as predictor:
        got = predictor.predict_many(videos)
        single = predictor.predict(videos[0])
    assert all(p.ok for p in got)
    assert len({p.exit_step for p in got}) > 1, "the operating point should spread the exits"
    model, cfg = load_model_checkpoint(setup["named"])
    with ThreadPoolExecutor(2) as pool:
        want = label_videos(
            model, [VideoRequest(v) for v in videos], cfg, pool=pool,
            operating_point=setup["point"],
        )  # fmt: skip
    for p, o in zip(got, want, strict=True):
        ids, values = select_labels(o.scores, multi_label=False, top_k=cfg.label.top_k,
                                    threshold=0.5)  # fmt: skip
        assert (p.exit_step, p.frames_decoded, p.label_ids) == (o.exit_step, o.exit_step, ids)
        np.testing.assert_allclose(p.scores, values, rtol=1e-5)
        assert p.labels == [setup["names"][i] for i in ids] and p.label == p.labels[0]
        assert p.score == p.scores[0] and p.gflops == pytest.approx(
            p.exit_step * predictor.step_gflops
        )
    assert single.to_dict() == got[0].to_dict()
    # labeling's actor, from labeling's own job resolution (no Ray)
    job, _ = prepare_job(videos[0], str(setup["root"] / "labels"), checkpoint=setup["named"])
    labeler = VideoLabeler(
        job.cfg, job.weights, job.class_names, step_gflops=job.step_gflops,
        operating_point=job.operating_point.to_dict(),
    )  # fmt: skip
    import pandas as pd

    batch = pd.DataFrame({"row": range(len(videos)), "input_id": videos, "video": videos,
                          "start": np.nan, "end": np.nan})  # fmt: skip
    rows = labeler.label(batch).to_pandas()
    assert list(rows["label"]) == [p.label for p in got]
    assert list(rows["exit_step"]) == [p.exit_step for p in got]
    assert list(rows["gflops"]) == pytest.approx([p.gflops for p in got])


def test_threshold_and_no_exit(setup):
    with load_predictor(setup["named"], device="cpu", early_exit=False) as predictor:
        assert predictor.rule == f"no early exit: all {T} steps"
        assert {p.exit_step for p in predictor.predict_many(setup["videos"][:3])} == {T}
    with load_predictor(setup["named"], device="cpu", threshold=1.0) as predictor:
        assert predictor.rule.startswith("paper rule: gate probability >= 1")
        assert predictor.point.thresholds == [1.0] * T


def test_json_rows_a_bad_video_and_a_folder(setup, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(setup["videos"][0], folder / "a.mp4")
    shutil.copy(setup["videos"][1], folder / "sub" / "b.mp4")
    (folder / "notes.txt").write_text("not a video\n")
    (folder / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    missing = str(tmp_path / "missing.mp4")
    rows = main([str(folder), missing, "--checkpoint", setup["named"], "--json",
                 "--device", "cpu", "label.top_k=2"])  # fmt: skip
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == rows
    by_name = {Path(r["video"]).name: r for r in rows}
    assert set(by_name) == {"a.mp4", "b.mp4", "broken.mp4", "missing.mp4"}  # no notes.txt
    for row in rows:
        assert set(row) >= ROW_KEYS
    for name in ("a.mp4", "b.mp4"):
        row = by_name[name]
        assert row["status"] == "ok" and row["error"] is None
        assert row["label"] in setup["names"] and len(row["labels"]) == 2
        assert 1 <= row["exit_step"] <= T and row["frames_decoded"] == row["exit_step"]
    assert by_name["missing.mp4"]["status"] == "missing"
    assert by_name["broken.mp4"]["status"] == "not_video"
    for name in ("missing.mp4", "broken.mp4"):
        assert by_name[name]["label"] is None and by_name[name]["error"]
    # the text form: the operating point once, then a line per video
    main([setup["videos"][0], "--checkpoint", setup["named"], "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("operating point: gate >= [")
    assert "exit at step" in lines[1] and "GFLOPs" in lines[1]


def test_a_checkpoint_without_names_warns_loudly(setup, caplog):
    with caplog.at_level(logging.WARNING):
        predictor = load_predictor(setup["unnamed"], device="cpu")
    predictor.close()
    assert predictor.class_names == ["class_0", "class_1", "class_2"]
    assert "NO CLASS NAMES" in caplog.text
    with load_predictor(setup["unnamed"], device="cpu", classes=["p", "q", "r"]) as named:
        assert named.predict(setup["videos"][0]).label in {"p", "q", "r"}


def test_visualize_writes_fig7_per_video(setup, tmp_path):
    out = tmp_path / "figs"
    rows = main(setup["videos"][:2] + ["--checkpoint", setup["named"], "--device", "cpu",
                                       "--visualize", str(out)])  # fmt: skip
    for row in rows:
        image = np.asarray(Image.open(row["figure"]).convert("RGB"))
        assert (image.shape[1], image.shape[0]) == strip_size(T)
        for t, (left, top, right, _) in enumerate(tile_boxes(T)):
            border = tuple(image[top - BORDER // 2, (left + right) // 2])
            assert (border == PROCESSED) == (t < row["exit_step"]), (t, row["exit_step"])
    # a dimmed tile is the same frame, darker, than when it was processed
    frames = [np.full((40, 60, 3), 50 * (t + 1), np.uint8) for t in range(T)]
    all_run = np.asarray(render_strip(frames, T, "all"), dtype=np.float32)
    one_run = np.asarray(render_strip(frames, 1, "one"), dtype=np.float32)
    for t, (left, top, right, bottom) in enumerate(tile_boxes(T)):
        inside = (slice(top + 20, bottom), slice(left + 20, right))  # below the step text
        if t == 0:
            np.testing.assert_array_equal(all_run[inside], one_run[inside])
        else:
            assert one_run[inside].mean() < 0.6 * all_run[inside].mean()


# ---------------------------------------------------------------- label --input FILE


def test_label_input_takes_a_single_video_file(setup, tmp_path):
    from pipelines.labeling.inputs import read_inputs

    video = setup["videos"][0]
    inputs = read_inputs(video)
    assert inputs.kind == "video" and inputs.videos.column("video").to_pylist() == [video]
    bare = tmp_path / "clip"  # no suffix: recognised by its MP4 header
    shutil.copy(video, bare)
    assert read_inputs(str(bare)).videos.column("video").to_pylist() == [str(bare)]
    missing = read_inputs(str(tmp_path / "gone.mp4"))  # labeled as one `missing` row
    assert missing.kind == "video" and len(missing) == 1
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video\n{video}\n")
    assert read_inputs(str(manifest)).kind == "manifest"
    assert read_inputs(str(setup["root"])).kind == "listing"


def test_predictor_is_usable_from_a_model_in_memory(setup):
    model, cfg = load_model_checkpoint(setup["named"])
    with Predictor(model, cfg, model.class_names, device="cpu") as predictor:
        answer = predictor.predict(setup["videos"][0])
    assert answer.ok and answer.label in setup["names"]
