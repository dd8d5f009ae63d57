"""The synthetic corpus: plans, drawing, H.264 files, manifest, determinism, any URI, and
the complementary classes (cues in separate frames)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter

import av
import fsspec
import numpy as np
import pytest
from av.video.frame import PictureType
from fixtures.corpus import TINY_CORPUS_ARGS

from frameexit.manifests import load_manifest, read_class_names, read_manifest_parquet
from frameexit.synthetic import (
    COLOURS,
    DIFFICULTIES,
    ComplementaryClass,
    class_signatures,
    complementary_family,
    corpus_classes,
    encode_mp4,
    evidence_mask,
    frame_labels,
    generate_corpus,
    main,
    plan_corpus,
    render_video,
)

SMALL = {"image_size": 64, "min_frames": 24, "max_frames": 48, "fps": 12.0}


def decode_all(uri: str) -> np.ndarray:
    with fsspec.open(uri, "rb") as handle, av.open(handle) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def frame_types(path: str) -> tuple[list[bool], list[str]]:
    with av.open(path) as container:
        frames = list(container.decode(video=0))
    return [f.key_frame for f in frames], [PictureType(int(f.pict_type)).name for f in frames]


# --------------------------------------------------------------------------- classes


def test_class_signatures_are_distinct_seed_free_and_sorted() -> None:
    sigs = class_signatures(10)
    triples = {(s.shape, s.colour, s.texture) for s in sigs}
    assert len(triples) == 10
    names = [s.name for s in sigs]
    assert sorted(names) == names  # sorting names (the class map rule) keeps class order
    # the first three classes differ in every attribute, the first seven in colour
    assert len({s.colour for s in sigs[:7]}) == 7
    for a in range(3):
        for b in range(a):
            assert all(
                x != y for x, y in zip(triples_of(sigs[a]), triples_of(sigs[b]), strict=True)
            )
    # the greedy choice does not depend on K: corpora with more classes extend fewer
    assert class_signatures(10)[:3] == class_signatures(3)
    assert len(class_signatures(126)) == 126
    with pytest.raises(ValueError):
        class_signatures(0)
    with pytest.raises(ValueError):
        class_signatures(127)


def triples_of(sig) -> tuple[str, str, str]:
    return (sig.shape, sig.colour, sig.texture)


# --------------------------------------------------------------------------- plans


def check_plan(plan, num_classes: int, multi_label: bool) -> None:
    segs = sorted(plan.segments, key=lambda s: s.start)
    for seg in segs:
        assert 0 <= seg.start < seg.end <= plan.num_frames
        assert 0 <= seg.label_id < num_classes
    for a, b in zip(segs, segs[1:], strict=False):
        assert b.start >= a.end + 1, (a, b)  # disjoint, one frame apart
    evidence = plan.evidence
    assert {s.label_id for s in evidence} == set(plan.label_ids)
    assert all(s.length >= 2 for s in evidence)
    lo, hi, _, max_segments = DIFFICULTIES[plan.difficulty]
    for owner in {(s.label_id, s.cue) for s in evidence}:  # per label, or per cue of one
        assert 1 <= sum((s.label_id, s.cue) == owner for s in evidence) <= max_segments
    if not multi_label:
        shortest = min(s.length for s in evidence)
        for seg in plan.distractors:
            if seg.kind == "brief":
                assert seg.label_id not in plan.label_ids
                assert seg.length <= max(1, shortest // 2)
    else:
        assert all(s.kind in ("occluded", "gray") for s in plan.distractors)
    assert plan.keyframe_interval in range(int(plan.fps * 1.0) - 1, int(plan.fps * 2.0) + 2)


def test_plan_is_valid_mixed_and_balanced() -> None:
    plans = plan_corpus(num_videos=60, num_classes=5, seed=3, min_frames=40, max_frames=200)
    assert len({p.video_id for p in plans}) == 60
    for p in plans:
        check_plan(p, 5, multi_label=False)
        lo, hi, _, _ = DIFFICULTIES[p.difficulty]
        assert lo - 0.03 <= p.evidence_fraction <= hi + 0.03, (p.difficulty, p.evidence_fraction)
    difficulties = Counter(p.difficulty for p in plans)
    assert difficulties == {"easy": 24, "medium": 18, "hard": 18}
    splits = Counter(p.split for p in plans)
    assert splits["train"] > splits["val"] > 0 and splits["test"] > 0
    for split in ("train", "val", "test"):
        assert {p.difficulty for p in plans if p.split == split} == set(DIFFICULTIES)
    train_classes = Counter(p.label_ids[0] for p in plans if p.split == "train")
    assert max(train_classes.values()) - min(train_classes.values()) <= 1
    kinds = Counter(s.kind for p in plans for s in p.distractors)
    assert kinds["brief"] > 0 and kinds["occluded"] > 0 and kinds["gray"] > 0
    easy = np.mean([p.evidence_fraction for p in plans if p.difficulty == "easy"])
    hard = np.mean([p.evidence_fraction for p in plans if p.difficulty == "hard"])
    assert easy > 3 * hard


def test_plan_evidence_is_spread_over_time() -> None:
    """Evidence sits at random places, so the first frames are often not evidence."""
    plans = plan_corpus(num_videos=90, num_classes=4, seed=5)
    hard = [p for p in plans if p.difficulty == "hard"]
    starts = np.array([p.evidence[0].start / p.num_frames for p in hard])
    assert starts.min() < 0.2 and starts.max() > 0.6
    assert np.mean([p.evidence[0].start > 10 for p in hard]) > 0.6


def test_plan_multi_label() -> None:
    plans = plan_corpus(
        num_videos=40, num_classes=6, seed=2, multi_label=True, max_labels=3, min_frames=30
    )
    sizes = Counter(len(p.label_ids) for p in plans)
    assert set(sizes) == {1, 2, 3}
    for p in plans:
        assert len(set(p.label_ids)) == len(p.label_ids)
        check_plan(p, 6, multi_label=True)


def test_plan_is_deterministic_from_seed() -> None:
    args = {"num_videos": 20, "num_classes": 4}
    assert plan_corpus(**args, seed=7) == plan_corpus(**args, seed=7)
    assert plan_corpus(**args, seed=7) != plan_corpus(**args, seed=8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 63},
        {"height": 8},
        {"min_frames": 50, "max_frames": 40},
        {"min_frames": 3},
        {"difficulty_mix": {"easy": 1.0, "trivial": 1.0}},
        {"difficulty_mix": {"easy": 0.0}},
        {"splits": {"train": -1.0}},
        {"fps": 0.0},
        {"keyframe_interval_s": (2.0, 1.0)},
        {"num_videos": 0},
        {"multi_label": True, "max_labels": 3, "min_frames": 6},
    ],
)
def test_plan_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"num_videos": 4, "num_classes": 3, **kwargs}
    with pytest.raises(ValueError):
        plan_corpus(**args)


def test_fixed_keyframe_interval_and_custom_mix() -> None:
    plans = plan_corpus(
        num_videos=10,
        num_classes=3,
        fps=25.0,
        keyframe_interval_s=2.0,
        difficulty_mix={"hard": 1.0},
        splits={"train": 1.0},
    )
    assert {p.keyframe_interval for p in plans} == {50}
    assert {p.difficulty for p in plans} == {"hard"}
    assert {p.split for p in plans} == {"train"}


# --------------------------------------------------------------------------- drawing


def colour_pixels(frames: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Per frame, how many pixels are close to a (saturated) signature colour."""
    diff = np.abs(frames.astype(np.int32) - np.asarray(rgb)).max(axis=-1)
    return (diff < 40).sum(axis=(1, 2))


def test_render_shows_signature_only_in_evidence_frames() -> None:
    plans = plan_corpus(num_videos=12, num_classes=7, seed=11, multi_label=False)
    sigs = class_signatures(7)
    for plan in plans:
        frames = render_video(plan, 7)
        assert frames.shape == (plan.num_frames, 64, 64, 3) and frames.dtype == np.uint8
        label = plan.label_ids[0]
        counts = colour_pixels(frames, sigs[label].rgb)
        own = np.zeros(plan.num_frames, bool)
        for seg in plan.segments:  # any frame that draws this class's colour
            if seg.label_id == label and seg.kind != "gray":
                own[seg.start : seg.end] = True
        mask = np.zeros(plan.num_frames, bool)
        for seg in plan.evidence:
            mask[seg.start : seg.end] = True
        assert counts[mask].min() > 80  # the lit part of a whole signature (>= 2 % of pixels)
        assert counts[~own].max(initial=0) < 40  # no colour where the class is not shown


def test_render_scales_with_resolution() -> None:
    (plan,) = plan_corpus(num_videos=1, num_classes=3, width=112, height=96, seed=1)
    frames = render_video(plan, 3)
    assert frames.shape == (plan.num_frames, 96, 112, 3)
    sig = class_signatures(3)[plan.label_ids[0]]
    mask = np.zeros(plan.num_frames, bool)
    for seg in plan.evidence:
        mask[seg.start : seg.end] = True
    assert colour_pixels(frames, sig.rgb)[mask].min() > 0.02 * 96 * 96  # as at 64 px


def test_background_moves() -> None:
    (plan,) = plan_corpus(num_videos=1, num_classes=3, seed=4, min_frames=30, max_frames=30)
    frames = render_video(plan, 3).astype(np.int16)
    moving = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    assert (moving > 1.0).mean() > 0.8


# --------------------------------------------------------------------------- corpus on disk


def test_tiny_corpus_files_and_manifest(tiny_corpus) -> None:
    table = tiny_corpus.table
    assert len(table) == 12 and tiny_corpus.num_classes == 3
    assert list(tiny_corpus.class_names) == [s.name for s in class_signatures(3)]
    assert read_class_names(tiny_corpus.classes) == list(tiny_corpus.class_names)
    assert set(table["split"]) == {"train", "val", "test"}
    for split, part in table.groupby("split"):
        assert set(part["difficulty"]) == {"easy", "medium", "hard"}, split
    for _, row in table.iterrows():
        assert row["video"].startswith(tiny_corpus.root) and os.path.isfile(row["video"])
        assert 24 <= row["num_frames"] <= 60
        assert row["duration"] == pytest.approx(row["num_frames"] / 12.0)
        assert [tiny_corpus.class_names[i] for i in row["label_ids"]] == row["labels"]
        mask = evidence_mask(row)
        assert mask.mean() == pytest.approx(row["evidence_fraction"])
        labels = frame_labels(row)
        assert ((labels >= 0) == mask).all() and set(labels[mask]) == set(row["label_ids"])
    # the published loader reads it with the stored class map and finds nothing wrong
    loaded = load_manifest(tiny_corpus.manifest)
    assert loaded.bad_rows.empty and loaded.class_names == list(tiny_corpus.class_names)
    assert loaded.table["label_ids"].tolist() == table["label_ids"].tolist()
    assert loaded.table["evidence_segments"].tolist() == table["evidence_segments"].tolist()


def test_tiny_corpus_is_real_h264(tiny_corpus) -> None:
    table = tiny_corpus.table
    saw_b_frames = False
    for _, row in table.iterrows():
        with av.open(row["video"]) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert (stream.width, stream.height) == (64, 64)
            assert float(stream.average_rate) == pytest.approx(12.0)
        keys, types = frame_types(row["video"])
        assert len(keys) == row["num_frames"]
        positions = np.flatnonzero(keys)
        assert positions[0] == 0
        gaps = np.diff(np.append(positions, len(keys)))
        assert gaps.max() <= row["keyframe_interval"]
        assert 12 <= row["keyframe_interval"] <= 24
        saw_b_frames |= "B" in types
    assert saw_b_frames


def test_decoded_frames_match_the_drawing(tiny_corpus) -> None:
    """H.264 at the default quality keeps what was drawn (so evidence stays visible)."""
    table = tiny_corpus.table
    args = dict(TINY_CORPUS_ARGS)
    size = args.pop("image_size")
    plans = plan_corpus(**args, width=size, height=size)
    for plan, (_, row) in zip(plans[:4], table.iloc[:4].iterrows(), strict=True):
        assert row["video"].endswith(f"{plan.video_id}.mp4")
        drawn = render_video(plan, 3).astype(np.int16)
        decoded = decode_all(row["video"]).astype(np.int16)
        assert decoded.shape == drawn.shape
        assert np.abs(decoded - drawn).mean() < 6.0


def test_multilabel_corpus(tiny_multilabel_corpus) -> None:
    table = tiny_multilabel_corpus.table
    assert {len(ids) for ids in table["label_ids"]} == {1, 2}
    for _, row in table.iterrows():
        for label in row["label_ids"]:
            assert evidence_mask(row, label).any()
        assert all(s["kind"] in ("occluded", "gray") for s in row["distractor_segments"])


def test_same_seed_same_corpus_other_seed_differs(tmp_path) -> None:
    args = {"num_videos": 3, "num_classes": 3, **SMALL}
    a = read_manifest_parquet(generate_corpus(str(tmp_path / "a"), seed=5, **args))
    b = read_manifest_parquet(generate_corpus(str(tmp_path / "b"), seed=5, **args))
    c = read_manifest_parquet(generate_corpus(str(tmp_path / "c"), seed=6, **args))
    for column in ("labels", "num_frames", "evidence_segments", "distractor_segments"):
        assert a[column].tolist() == b[column].tolist()
    for va, vb in zip(a["video"], b["video"], strict=True):
        assert np.array_equal(decode_all(va), decode_all(vb))
    differs = [
        a["num_frames"].tolist() != c["num_frames"].tolist(),
        not np.array_equal(decode_all(a["video"][0])[:1], decode_all(c["video"][0])[:1]),
    ]
    assert all(differs)


def test_workers_give_the_same_files(tmp_path) -> None:
    args = {"num_videos": 4, "num_classes": 3, "seed": 9, **SMALL}
    one = read_manifest_parquet(generate_corpus(str(tmp_path / "one"), workers=1, **args))
    two = read_manifest_parquet(generate_corpus(str(tmp_path / "two"), workers=2, **args))
    for va, vb in zip(one["video"], two["video"], strict=True):
        assert np.array_equal(decode_all(va), decode_all(vb))


def test_generate_to_any_fsspec_uri() -> None:
    root = "memory://frameexit-test-synthetic/corpus"
    manifest = generate_corpus(root, num_videos=2, num_classes=2, seed=1, **SMALL)
    try:
        assert manifest == root + "/manifest.parquet"
        table = read_manifest_parquet(manifest)
        fs = fsspec.filesystem("memory")
        assert fs.exists("/frameexit-test-synthetic/corpus/classes.json")
        assert fs.exists("/frameexit-test-synthetic/corpus/corpus.json")
        for _, row in table.iterrows():
            assert row["video"].startswith(root + "/videos/")
            assert len(decode_all(row["video"])) == row["num_frames"]
    finally:
        fsspec.filesystem("memory").rm("/frameexit-test-synthetic", recursive=True)


def test_encode_mp4_gop(tmp_path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, size=(30, 32, 48, 3), dtype=np.uint8)
    path = str(tmp_path / "x.mp4")
    encode_mp4(frames, path, fps=10.0, keyframe_interval=10)
    keys, _ = frame_types(path)
    assert len(keys) == 30 and keys[0]
    assert np.diff(np.append(np.flatnonzero(keys), 30)).max() <= 10


def test_command_line(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    uri = main(
        [
            "--out", str(out), "--videos", "3", "--classes", "4", "--seed", "2",
            "--min-frames", "24", "--max-frames", "30", "--size", "48",
            "--keyframe-interval", "1.5", "--difficulty-mix", "easy=1",
        ]
    )  # fmt: skip
    assert uri == str(out / "manifest.parquet")
    assert capsys.readouterr().out.strip() == uri
    table = read_manifest_parquet(uri)
    assert len(table) == 3 and set(table["difficulty"]) == {"easy"}
    assert set(table["keyframe_interval"]) == {18}
    assert set(table["width"]) == {48}


def test_module_entry_point(tmp_path) -> None:
    out = tmp_path / "entry"
    result = subprocess.run(
        [sys.executable, "-m", "frameexit.synthetic", "--out", str(out), "--videos", "2",
         "--classes", "2", "--min-frames", "24", "--max-frames", "24", "--multi-label",
         "--max-labels", "2"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.strip() == str(out / "manifest.parquet")
    assert "videos/s" in result.stderr
    assert len(read_manifest_parquet(result.stdout.strip())) == 2


def test_colours_are_saturated_and_far_apart() -> None:
    rgb = np.array(list(COLOURS.values()), dtype=np.int32)
    assert (rgb.max(axis=1) - rgb.min(axis=1) >= 150).all()
    distances = np.abs(rgb[:, None] - rgb[None]).max(axis=-1)
    assert distances[~np.eye(len(rgb), dtype=bool)].min() >= 75


# --------------------------------------------------------------------------- unchanged defaults

# sha256 of the plans and of some drawn videos for fixed arguments, computed with the
# generator before complementary classes existed: the default corpus must not move.
DEFAULT_DIGEST = "d57c0036c4287ce1249aa111c408d3e7f778cf2dab8edf1f6fe495a96948c54c"


def test_default_plans_and_frames_are_unchanged() -> None:
    digest = hashlib.sha256()
    for kwargs in (
        {"num_videos": 30, "num_classes": 5, "seed": 3},
        {"num_videos": 12, "num_classes": 6, "seed": 2, "multi_label": True, "max_labels": 3,
         "min_frames": 30},
    ):  # fmt: skip
        plans = plan_corpus(**kwargs, max_frames=60)
        for p in plans:
            assert all(seg.cue == "" for seg in p.segments)
            segments = [(seg.label_id, seg.start, seg.end, seg.kind) for seg in p.segments]
            digest.update(repr(segments).encode())
            fields = (p.video_id, p.split, p.difficulty, p.label_ids, p.num_frames,
                      p.keyframe_interval, p.seed)  # fmt: skip
            digest.update(repr(fields).encode())
        for p in plans[:3]:
            digest.update(render_video(p, kwargs["num_classes"]).tobytes())
    assert digest.hexdigest() == DEFAULT_DIGEST


# --------------------------------------------------------------------------- complementary


def test_complementary_family_shares_every_cue() -> None:
    classes = corpus_classes(10, 6)
    assert classes[:4] == class_signatures(10)[:4]  # single-cue classes first, as before
    family = classes[4:]
    assert all(isinstance(c, ComplementaryClass) for c in family)
    names = [c.name for c in classes]
    assert sorted(names) == names and len(set(names)) == 10
    assert [c.cues for c in family] == [
        ("shape:circle",), ("shape:circle", "colour:red"), ("shape:circle", "colour:green"),
        ("shape:cross",), ("shape:cross", "colour:red"), ("shape:cross", "colour:green"),
    ]  # fmt: skip
    uses = Counter(cue for c in family for cue in c.cues)
    assert min(uses.values()) >= 2  # no single cue names a class
    assert len({c.cues for c in family}) == len(family)  # the cues together always do
    assert corpus_classes(10) == class_signatures(10)
    assert len(complementary_family(20, 16)) == 16
    for count in (1, 2, 5, 18):
        with pytest.raises(ValueError, match="complementary_classes"):
            complementary_family(20, count)
    with pytest.raises(ValueError, match="complementary_classes"):
        complementary_family(4, 6)  # more than num_classes


def test_plan_complementary_evidence_is_one_set_per_cue() -> None:
    plans = plan_corpus(num_videos=80, num_classes=10, complementary_classes=6, seed=1)
    classes = corpus_classes(10, 6)
    labels = Counter(p.label_ids[0] for p in plans)
    assert set(labels) == set(range(10))
    for p in plans:
        check_plan(p, 10, multi_label=False)
        (label,) = p.label_ids
        expected = getattr(classes[label], "cues", ("",))
        drawn = {seg.cue for seg in p.evidence}
        assert drawn == set(expected), (p.video_id, drawn, expected)
        lo, hi, _, _ = DIFFICULTIES[p.difficulty]  # the fraction is shared among the cues
        assert lo - 0.03 <= p.evidence_fraction <= hi + 0.03, (p.difficulty, p.evidence_fraction)
        for seg in p.distractors:  # distractors only ever show single-cue classes
            assert seg.label_id < 4 and seg.cue == ""


def test_render_complementary_cues() -> None:
    plans = plan_corpus(num_videos=40, num_classes=10, complementary_classes=6, seed=2)
    pairs = [p for p in plans if len({s.cue for s in p.evidence}) == 2][:4]
    assert pairs
    for plan in pairs:
        frames = render_video(plan, 10).astype(np.int32)
        white = ((frames > 220).all(-1)).sum(axis=(1, 2))
        black = ((frames < 45).all(-1)).sum(axis=(1, 2))
        for seg in plan.evidence:
            kind, _, value = seg.cue.partition(":")
            window = slice(seg.start, seg.end)
            if kind == "shape":  # the black-and-white checker: both levels, many pixels
                assert white[window].min() > 40 and black[window].min() > 40, seg
            else:
                assert colour_pixels(frames[window], COLOURS[value]).min() > 80, seg


def test_complementary_corpus_on_disk(tmp_path) -> None:
    args = {"num_videos": 6, "num_classes": 6, "seed": 4, **SMALL}
    uri = generate_corpus(str(tmp_path / "c"), complementary_classes=4, **args)
    table = read_manifest_parquet(uri)
    assert read_class_names(str(tmp_path / "c" / "classes.json")) == [
        c.name for c in corpus_classes(6, 4)
    ]
    for _, row in table.iterrows():
        cues = {seg["cue"] for seg in row["evidence_segments"]}
        assert cues == ({""} if row["label_ids"][0] < 2 else cues - {""})
        assert evidence_mask(row).mean() == pytest.approx(row["evidence_fraction"])
    info = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert info["arguments"]["complementary_classes"] == 4
    assert info["classes"][2] == {"name": "2_cue_circle", "cues": ["shape:circle"]}
    # without the option the manifest has no cue field and corpus.json no new key
    plain = read_manifest_parquet(generate_corpus(str(tmp_path / "p"), **args))
    assert "cue" not in plain["evidence_segments"][0][0]
    assert (
        "complementary_classes"
        not in json.loads((tmp_path / "p" / "corpus.json").read_text())["arguments"]
    )


def test_command_line_complementary(tmp_path) -> None:
    uri = main(
        ["--out", str(tmp_path / "cli"), "--videos", "2", "--classes", "5", "--complementary",
         "4", "--min-frames", "24", "--max-frames", "30"]
    )  # fmt: skip
    assert read_class_names(str(tmp_path / "cli" / "classes.json"))[1] == "1_cue_circle"
    assert len(read_manifest_parquet(uri)) == 2
