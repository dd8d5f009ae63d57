"""Policy-aware decoding: ``VideoReader.plan`` keeps the planned frames a decode passes,
so later steps cost nothing, and every frame is still the one a fresh decode returns."""

from __future__ import annotations

import os

import numpy as np
import pytest

from frameexit.policy import coarse_to_fine
from frameexit.testing.clips import decode_all, write_clip, write_spec_clip
from frameexit.video import VideoDecodeError, open_video

# index mode (MP4), open GOP, scan (MKV, TS), ordinal counting (AVI with B-frames)
KINDS = ["h264_bframes.mp4", "h264_opengop.mp4", "vp9.webm", "mpeg2_bframes.ts", "h264_bframes.avi"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, np.ndarray]]:
    directory = str(tmp_path_factory.mktemp("plan"))
    out = {}
    for name in KINDS:
        path = write_spec_clip(directory, name)
        out[name] = (path, decode_all(path))
    path = write_clip(
        os.path.join(directory, "gop60.mp4"),
        num_frames=240,
        width=96,
        height=64,
        options={"bf": "3", "g": "60", "preset": "veryfast"},
    )
    out["gop60.mp4"] = (path, decode_all(path))
    return out


def walk(path: str, steps: list[int], plan: bool) -> tuple[list[np.ndarray], list[int]]:
    """One frame per step, as early exit asks; frames and decoded-frame counts per step."""
    frames, decoded = [], []
    with open_video(path) as video:
        if plan:
            video.plan(steps)
        for i in steps:
            frames.append(video.get([i])[0])
            decoded.append(video.stats["frames_decoded"])
    return frames, decoded


@pytest.mark.parametrize("name", [*KINDS, "gop60.mp4"])
def test_planned_walk_returns_the_frames_of_a_fresh_decode(clips: dict, name: str) -> None:
    path, ref = clips[name]
    steps = coarse_to_fine(len(ref), 10)
    planned, with_plan = walk(path, steps, plan=True)
    _, without = walk(path, steps, plan=False)
    for step, (i, frame) in enumerate(zip(steps, planned, strict=True)):
        np.testing.assert_array_equal(frame, ref[i], err_msg=f"{name} step {step} frame {i}")
    assert with_plan[-1] <= without[-1], (with_plan, without)


def test_a_passed_planned_frame_costs_no_decoding(clips: dict) -> None:
    """240 frames, a keyframe every 60: step 1 (frame 119) decodes from 60 and passes the
    planned frames 74, 89, 104 and 112; when their steps come, nothing is decoded."""
    path, ref = clips["gop60.mp4"]
    steps = coarse_to_fine(240, 16)
    passed = [i for i in steps[1:] if 60 < i < steps[0]]
    assert steps[0] == 119 and len(passed) >= 3
    with open_video(path) as video:
        video.plan(steps)
        video.get([steps[0]])
        for i in steps[1:]:
            before = video.stats["frames_decoded"]
            np.testing.assert_array_equal(video.get([i])[0], ref[i])
            if i in passed:
                assert video.stats["frames_decoded"] == before, i
        # bounded: nothing is kept once every planned use was served
        assert video._decoder._kept == {}


def test_kept_frames_are_bounded_by_the_plan(clips: dict) -> None:
    path, ref = clips["gop60.mp4"]
    steps = [200, 10, 20, 30, 40, 50]
    with open_video(path) as video:
        video.plan(steps)
        video.get([59])  # not planned: passes 10..50, keeps each once
        kept = video._decoder._kept
        assert sorted(kept) == [10, 20, 30, 40, 50]
        for i in kept:
            np.testing.assert_array_equal(kept[i], ref[i])
        assert video.get([30]).shape[0] == 1 and 30 not in kept  # last use served: dropped


def test_repeated_planned_index_is_kept_until_its_last_use(clips: dict) -> None:
    """Short videos repeat indices (N < T): a frame asked twice is decoded once."""
    path, ref = clips["h264_bframes.mp4"]
    steps = [24, 0, 47, 24, 0]
    with open_video(path) as video:
        video.plan(steps)
        for k, i in enumerate(steps):
            before = video.stats["frames_decoded"]
            np.testing.assert_array_equal(video.get([i])[0], ref[i])
            if k >= 3:
                assert video.stats["frames_decoded"] == before
        assert video._decoder._kept == {}


def test_plan_checks_indices_and_can_be_replaced(clips: dict) -> None:
    path, ref = clips["h264_bframes.mp4"]
    with open_video(path) as video:
        with pytest.raises(VideoDecodeError) as info:
            video.plan([0, 48])
        assert info.value.kind == "index_out_of_range"
        video.plan([40, 10])
        video.get([20])  # passes 10
        video.plan([])  # a new plan drops what the old one kept
        assert video._decoder._kept == {}
        np.testing.assert_array_equal(video.get([10, 40]), ref[[10, 40]])


def test_plan_may_name_frames_past_a_cut(tmp_path) -> None:
    """A cut file: planning all steps works; only the step whose frame is missing fails."""
    from pathlib import Path

    path = write_clip(str(tmp_path / "cut.mp4"), container_options={"movflags": "faststart"})
    ref = decode_all(path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * 0.7)])
    with open_video(path) as video:
        video.plan([23, 0, 47])
        np.testing.assert_array_equal(video.get([23, 0]), ref[[23, 0]])
        with pytest.raises(VideoDecodeError) as info:
            video.get([47])
        assert info.value.kind == "truncated"


def test_a_plan_keeps_a_session_per_gop_it_will_return_to(clips: dict) -> None:
    """Coarse-to-fine jumps between GOPs; with a plan the decoder parks its session in a
    GOP that later steps come back to and goes on from there instead of seeking back to
    the keyframe: all 16 steps cost well under the decoding of an unplanned walk."""
    path, ref = clips["gop60.mp4"]
    steps = coarse_to_fine(240, 16)
    planned, with_plan = walk(path, steps, plan=True)
    _, without = walk(path, steps, plan=False)
    for i, frame in zip(steps, planned, strict=True):
        np.testing.assert_array_equal(frame, ref[i])
    assert with_plan[-1] <= 0.7 * without[-1], (with_plan[-1], without[-1])
