"""frameexit.video: exact frames in any order, from local paths and S3, typed errors."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from frameexit.errors import VideoDecodeError
from frameexit.testing.clips import CLIP_SPECS, decode_all, write_clip, write_spec_clip
from frameexit.video import clip_indices, open_video, read_frames
from frameexit.video.pyav_backend import PyAVDecoder

DECORD_EXACT = sorted(n for n, s in CLIP_SPECS.items() if s["decord_exact"])
DECORD_WRONG = sorted(n for n, s in CLIP_SPECS.items() if not s["decord_exact"])


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every ``CLIP_SPECS`` encoding, written once per session (~1.5 s)."""
    directory = tmp_path_factory.mktemp("clips")
    for name in CLIP_SPECS:
        write_spec_clip(str(directory), name)
    return str(directory)


@pytest.fixture(scope="session")
def reference(clip_dir: str) -> dict[str, np.ndarray]:
    """Plain sequential PyAV decode of each clip: the ground truth."""
    return {name: decode_all(os.path.join(clip_dir, name)) for name in CLIP_SPECS}


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """300 frames, 160x120, H.264 with B-frames, a keyframe every 40 frames (1.6 s)."""
    path = str(tmp_path_factory.mktemp("long") / "long.mp4")
    return write_clip(path, num_frames=300, width=160, height=120, options={"bf": "3", "g": "40"})


def orders(n: int) -> dict[str, list[int]]:
    rng = random.Random(n)
    shuffled = list(range(n))
    rng.shuffle(shuffled)
    c2f = [n // 2, 0, n - 1, n // 4, 3 * n // 4, n // 8, 3 * n // 8, 5 * n // 8, 7 * n // 8]
    return {
        "random": shuffled,
        "reversed": list(range(n - 1, -1, -1)),
        "coarse_to_fine": c2f,
        "repeats": [5, 5, n - 1, 0, 5, n - 1],
    }


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("name", sorted(CLIP_SPECS))
def test_frames_equal_sequential_decode_in_any_order(
    clip_dir: str, reference: dict[str, np.ndarray], name: str, backend: str
) -> None:
    ref = reference[name]
    with open_video(os.path.join(clip_dir, name), backend=backend) as video:
        assert video.num_frames == len(ref)
        for order_name, order in orders(len(ref)).items():
            # one step at a time, as early exit asks, then all at once
            for step in range(0, len(order), 3):
                chunk = order[step : step + 3]
                np.testing.assert_array_equal(
                    video.get(chunk), ref[chunk], err_msg=f"{name} {order_name} {chunk}"
                )
            np.testing.assert_array_equal(video.get(order), ref[order], err_msg=order_name)


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "h264_opengop.mp4", "mpeg4_bframes.avi"])
def test_ranged_index_mode_is_exact(
    clip_dir: str, reference: dict[str, np.ndarray], name: str
) -> None:
    ref = reference[name]
    with open_video(os.path.join(clip_dir, name), fetch="ranges") as video:
        assert video.backend == "pyav"
        for order in orders(len(ref)).values():
            np.testing.assert_array_equal(video.get(order), ref[order])


def test_auto_never_opens_decord(
    clip_dir: str, reference: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default path is exact by construction: no file makes it use decord."""
    import decord

    def no_decord(*args, **kwargs):
        raise AssertionError("backend='auto' must not open decord")

    monkeypatch.setattr(decord, "VideoReader", no_decord)
    for name in DECORD_EXACT:  # even where decord happens to be right
        with open_video(os.path.join(clip_dir, name)) as video:
            assert video.backend == "pyav"
            np.testing.assert_array_equal(video.get([5]), reference[name][[5]])


@pytest.mark.parametrize("name", DECORD_WRONG)
def test_blind_decord_is_wrong_where_measured(
    clip_dir: str, reference: dict[str, np.ndarray], name: str
) -> None:
    """The measured decord failures (open GOP, AVI, MPEG-TS, WebM without cues, edit
    lists, rotation matrices) still happen: why ``backend="decord"`` is opt-in only."""
    path = os.path.join(clip_dir, name)
    ref = reference[name]
    order = orders(len(ref))["random"]
    try:
        with open_video(path, backend="decord") as video:
            wrong = video.num_frames != len(ref) or any(
                not np.array_equal(video.get([i])[0], ref[i]) for i in order
            )
    except VideoDecodeError as exc:  # WebM without cues, rotated MP4: decord fails outright
        assert exc.kind == "unreadable" and "decord" in exc.reason.lower()
    else:
        assert wrong, f"decord now reads {name} exactly; update CLIP_SPECS and the docs"


def test_pyav_opens_the_container_once_and_seeks_to_the_right_keyframe(
    long_clip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-video cost of the exact path: the decoder that scanned the packet table decodes
    (one ``av.open``, no decord), every step of a coarse-to-fine walk seeks instead of reopening,
    and a seek lands on the frame's own keyframe, not one GOP early (B-frame delay: the
    keyframe's dts is before its pts)."""
    import av
    import decord

    opened = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    def no_decord(*args, **kwargs):
        raise AssertionError("backend='pyav' must not open decord")

    monkeypatch.setattr(av, "open", counting_open)
    monkeypatch.setattr(decord, "VideoReader", no_decord)
    ref = decode_all(long_clip)  # 300 frames, keyframes at most 40 apart, B-frames
    with open_video(long_clip, backend="pyav") as video:
        assert video.backend == "pyav"
        fed = []
        decoder = video._decoder
        feed = decoder._feed
        monkeypatch.setattr(decoder, "_feed", lambda: fed.append(1) or feed())
        for index in [150, 0, 299, 75, 225, 37, 112, 187, 262, 18]:
            fed.clear()
            pts = decoder._frame_pts[index]
            key = decoder._key_for(pts)  # its keyframe (decode order)
            np.testing.assert_array_equal(video.get([index])[0], ref[index])
            assert decoder._session_start == key, index
            # packets from that keyframe to the frame, plus the decoder's reorder delay
            assert len(fed) <= decoder._idx_of_pts[pts] - key + 8, (index, len(fed))
    assert len(opened) == 2  # the reference decode and the reader


def test_open_gop_detection_matches_the_clips(clip_dir: str) -> None:
    def open_gops(name: str) -> list[int]:
        path = os.path.join(clip_dir, name)
        probe = PyAVDecoder(lambda: path, path)
        try:
            return probe.open_gop_keys
        finally:
            probe.close()

    assert open_gops("h264_opengop.mp4") and open_gops("hevc_opengop.mp4")
    assert not open_gops("h264_bframes.mp4") and not open_gops("h264_faststart.mp4")


@pytest.mark.s3
def test_incremental_walk_reads_the_object_once(long_clip: str, moto_s3, s3_bucket: str) -> None:
    """Early exit opens once and asks step by step: one GET for the whole walk."""
    uri = f"{s3_bucket}/long.mp4"
    fsspec.filesystem("s3", **moto_s3.storage_options).put_file(long_clip, uri)
    ref = decode_all(long_clip)
    steps = [150, 0, 299, 75, 225, 37, 112, 187, 262, 18]
    with open_video(uri, storage_options=moto_s3.storage_options, fetch="whole") as video:
        assert video.stats["requests"] == 1
        for step in steps:
            np.testing.assert_array_equal(video.get([step])[0], ref[step])
        assert video.stats["requests"] == 1
        assert video.stats["bytes_fetched"] == os.path.getsize(long_clip)


@pytest.mark.s3
def test_ranged_fetch_reads_only_what_the_steps_need(
    long_clip: str, moto_s3, s3_bucket: str
) -> None:
    uri = f"{s3_bucket}/long.mp4"
    fsspec.filesystem("s3", **moto_s3.storage_options).put_file(long_clip, uri)
    ref = decode_all(long_clip)
    size = os.path.getsize(long_clip)
    with open_video(
        uri, storage_options=moto_s3.storage_options, fetch="ranges", block_size=8192
    ) as video:
        assert video.stats["mode"] == "index"
        opened = video.stats["bytes_fetched"]
        np.testing.assert_array_equal(video.get([150])[0], ref[150])
        one_step = video.stats["bytes_fetched"]
        np.testing.assert_array_equal(video.get([151])[0], ref[151])  # next frame: a packet more
        assert video.stats["bytes_fetched"] - one_step < size * 0.05
    assert opened < size / 2 and one_step < size * 0.75


# ----------------------------------------------------------------------------- clips


def test_clip_indices_center_and_clamp() -> None:
    assert clip_indices(10, 5, 100) == [8, 9, 10, 11, 12]
    assert clip_indices(0, 5, 100) == [0, 0, 0, 1, 2]
    assert clip_indices(99, 4, 100) == [97, 98, 99, 99]
    assert clip_indices(1, 13, 3) == [0] * 5 + [0, 1, 2] + [2] * 5
    assert clip_indices(4, 13, 10)[13 // 2] == 4
    with pytest.raises(ValueError):
        clip_indices(0, 0, 10)


def test_get_clips(clip_dir: str, reference: dict[str, np.ndarray]) -> None:
    ref = reference["h264_bframes.mp4"]
    n = len(ref)
    with open_video(os.path.join(clip_dir, "h264_bframes.mp4")) as video:
        clips = video.get_clips([n // 2, 0, n - 1], 13)
    assert clips.shape == (3, 13, *ref.shape[1:]) and clips.dtype == np.uint8
    for clip, center in zip(clips, [n // 2, 0, n - 1], strict=True):
        np.testing.assert_array_equal(clip, ref[clip_indices(center, 13, n)])
        np.testing.assert_array_equal(clip[6], ref[center])


def test_read_frames_order_dtype_and_file_uri(
    clip_dir: str, reference: dict[str, np.ndarray]
) -> None:
    path = os.path.join(clip_dir, "h264_faststart.mp4")
    out = read_frames("file://" + path, [40, 2, 40])
    assert out.dtype == np.uint8 and out.shape == (3, 48, 64, 3)
    np.testing.assert_array_equal(out, reference["h264_faststart.mp4"][[40, 2, 40]])
    assert read_frames(path, []).shape[0] == 0


# ----------------------------------------------------------------------------- sources


@pytest.mark.s3
@pytest.mark.parametrize("where", ["local", "s3_whole", "s3_ranges", "memory"])
def test_same_frames_from_every_storage(
    clip_dir: str, reference: dict[str, np.ndarray], moto_s3, s3_bucket: str, where: str
) -> None:
    name = "h264_bframes.mp4"
    path = os.path.join(clip_dir, name)
    kwargs: dict = {}
    if where == "local":
        uri = path
    elif where == "memory":
        uri = f"memory://frameexit-test/{name}"
        fsspec.filesystem("memory").put_file(path, uri)
    else:
        uri = f"{s3_bucket}/videos/{name}"
        fsspec.filesystem("s3", **moto_s3.storage_options).put_file(path, uri)
        kwargs = {
            "storage_options": moto_s3.storage_options,
            "fetch": "ranges" if where == "s3_ranges" else "whole",
        }
    order = orders(48)["random"]
    np.testing.assert_array_equal(read_frames(uri, order, **kwargs), reference[name][order])


@pytest.mark.s3
def test_s3_credentials_from_environment(
    clip_dir: str, moto_s3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(clip_dir, "h264_bframes.mp4")
    uri = f"{s3_bucket}/env.mp4"
    fsspec.filesystem("s3", **moto_s3.storage_options).put_file(path, uri)
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        assert read_frames(uri, [3]).shape == (1, 48, 64, 3)
    finally:
        fsspec.filesystem("s3").clear_instance_cache()


@pytest.mark.s3
def test_seaweedfs_enforces_credentials(clip_dir: str, seaweedfs_s3) -> None:
    path = os.path.join(clip_dir, "h264_bframes.mp4")
    bucket = seaweedfs_s3.create_bucket()
    uri = f"{bucket}/clip.mp4"
    seaweedfs_s3.filesystem().put_file(path, uri)
    good = seaweedfs_s3.storage_options
    assert read_frames(uri, [0, 47], storage_options=good).shape == (2, 48, 64, 3)
    bad = {**good, "secret": "wrong-secret", "skip_instance_cache": True}
    for fetch in ("whole", "ranges"):
        with pytest.raises(VideoDecodeError) as info:
            read_frames(uri, [0], storage_options=bad, fetch=fetch)
        assert info.value.kind == "access_denied"
        assert info.value.uri == uri and "wrong-secret" not in str(info.value)


# ----------------------------------------------------------------------------- errors


def expect(kind: str, uri: str, *args, **kwargs) -> VideoDecodeError:
    with pytest.raises(VideoDecodeError) as info:
        read_frames(uri, *args, **kwargs)
    assert info.value.kind == kind, info.value
    assert info.value.uri == uri and uri in str(info.value) and info.value.reason
    return info.value


def test_missing_local(tmp_path) -> None:
    expect("missing", str(tmp_path / "nope.mp4"), [0])
    expect("missing", str(tmp_path), [0])  # a directory is not a video file


@pytest.mark.s3
def test_missing_s3(moto_s3, s3_bucket: str) -> None:
    for fetch in ("whole", "ranges"):
        expect(
            "missing",
            f"{s3_bucket}/nope.mp4",
            [0],
            storage_options=moto_s3.storage_options,
            fetch=fetch,
        )
    expect("missing", "s3://no-such-bucket-fe/x.mp4", [0], storage_options=moto_s3.storage_options)


def test_empty(tmp_path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    expect("empty", str(path), [0])


@pytest.mark.parametrize("content", ["random", "text"])
def test_not_video(tmp_path, content: str) -> None:
    path = tmp_path / f"{content}.mp4"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(20000))
    else:  # FFmpeg opens text as ANSI art with a "video" stream: must still be refused
        path.write_text("".join(f"not a video, line {i}\n" for i in range(400)))
    expect("not_video", str(path), [0])


def _cut(src: str, dst, fraction: float = 0.6) -> str:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return str(dst)


def test_truncated_mp4_index_at_end(long_clip: str, tmp_path) -> None:
    """Cut before the moov box: nothing to index; the box sizes tell it was cut."""
    err = expect("truncated", _cut(long_clip, tmp_path / "cut.mp4"), [0])
    assert "mdat" in err.reason or "moov" in err.reason


@pytest.mark.parametrize(
    "backend,fetch", [("auto", "whole"), ("pyav", "whole"), ("auto", "ranges")]
)
def test_truncated_faststart_mp4(tmp_path, backend: str, fetch: str) -> None:
    """moov first: the container still declares every frame; early frames decode, the
    ones past the cut raise ``truncated`` (decord alone would silently report fewer)."""
    full = write_clip(
        str(tmp_path / "fs.mp4"),
        num_frames=150,
        width=96,
        height=64,
        options={"bf": "3", "g": "30"},
        container_options={"movflags": "faststart"},
    )
    path = _cut(full, tmp_path / "cut.mp4")
    ref = decode_all(full)
    with open_video(path, backend=backend, fetch=fetch) as video:
        assert video.backend == "pyav" and video.num_frames == 150
        np.testing.assert_array_equal(video.get([0, 20]), ref[[0, 20]])
        with pytest.raises(VideoDecodeError) as info:
            video.get([140])
        assert info.value.kind == "truncated"


@pytest.mark.parametrize("name", ["h264_12.5fps.mkv", "mpeg4_bframes.avi"])
def test_truncated_mkv_and_avi(clip_dir: str, tmp_path, name: str) -> None:
    path = _cut(os.path.join(clip_dir, name), tmp_path / name, 0.5)
    with open_video(path) as video:
        assert video.num_frames == 48
        assert video.get([0]).shape[0] == 1
        with pytest.raises(VideoDecodeError) as info:
            video.get([47])
        assert info.value.kind == "truncated"


def test_index_out_of_range(clip_dir: str) -> None:
    path = os.path.join(clip_dir, "h264_bframes.mp4")
    for bad in ([48], [-1], [0, 1000]):
        err = expect("index_out_of_range", path, bad)
        assert "48" in err.reason
    with open_video(path) as video, pytest.raises(VideoDecodeError) as info:
        video.get_clips([48], 3)
    assert info.value.kind == "index_out_of_range"
    with pytest.raises(TypeError):
        read_frames(path, [1.5])


# ----------------------------------------------------------------------------- time bound


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_timeout_is_typed_and_the_reader_is_then_unusable(long_clip: str, backend: str) -> None:
    start = time.monotonic()
    with pytest.raises(VideoDecodeError) as info:
        read_frames(long_clip, list(range(0, 300, 7)), timeout_s=1e-4, backend=backend)
    assert info.value.kind == "timeout"
    assert time.monotonic() - start < 5

    video = open_video(long_clip, timeout_s=30, backend="pyav")
    video._watchdog.remaining = 1e-4  # budget nearly spent by earlier steps
    with pytest.raises(VideoDecodeError) as info:
        video.get(list(range(300)))
    assert info.value.kind == "timeout"
    with pytest.raises(VideoDecodeError, match="earlier call"):
        video.get([0])
    video.close()


class _StallingFS(MemoryFileSystem):
    """A filesystem whose reads hang until released: a stuck network read."""

    protocol = "stallfs"
    release = threading.Event()

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.release.wait(60)
        return super().cat_file(path, start, end, **kwargs)


def test_timeout_when_storage_hangs() -> None:
    fsspec.register_implementation("stallfs", _StallingFS, clobber=True)
    _StallingFS.release.clear()
    _StallingFS().pipe_file("/stuck.mp4", b"\x00" * 100)
    start = time.monotonic()
    try:
        err = expect("timeout", "stallfs://stuck.mp4", [0], timeout_s=0.5)
        assert "0.5" in err.reason
        assert time.monotonic() - start < 3
    finally:
        _StallingFS.release.set()


def test_pyav_work_stops_after_timeout(long_clip: str) -> None:
    """The abandoned PyAV decode notices the cancel flag; its thread ends."""
    video = open_video(long_clip, timeout_s=30, backend="pyav")
    video._watchdog.remaining = 1e-3
    with pytest.raises(VideoDecodeError):
        video.get(list(range(299, -1, -1)))  # backwards: a seek per frame, ~1 s of work
    video.close()
    video._watchdog.thread.join(timeout=5)
    assert not video._watchdog.thread.is_alive()


def test_dropped_reader_frees_its_thread(clip_dir: str) -> None:
    video = open_video(os.path.join(clip_dir, "h264_bframes.mp4"))
    thread = video._watchdog.thread
    assert thread.is_alive()
    del video
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_no_time_bound_runs_inline(clip_dir: str) -> None:
    path = os.path.join(clip_dir, "h264_bframes.mp4")
    before = threading.active_count()
    with open_video(path, timeout_s=None) as video:
        assert threading.active_count() == before
        assert video.get([1]).shape == (1, 48, 64, 3)


def test_bad_arguments(clip_dir: str) -> None:
    path = os.path.join(clip_dir, "h264_bframes.mp4")
    with pytest.raises(ValueError):
        open_video(path, fetch="chunks")
    with pytest.raises(ValueError):
        open_video(path, backend="opencv")
    with pytest.raises(ValueError):
        open_video(path, backend="decord", fetch="ranges")
    with pytest.raises(ValueError):
        open_video(path, timeout_s=0)
    video = open_video(path)
    video.close()
    with pytest.raises(ValueError, match="closed"):
        video.get([0])


@pytest.mark.parametrize("name", ["faststart.mp4", "h264_12.5fps.mkv", "mpeg4_bframes.avi"])
def test_every_frame_said_present_in_a_cut_file_is_that_frame(
    clip_dir: str, tmp_path, name: str
) -> None:
    """A file cut anywhere: the ``decodable_frames`` frames the reader offers are exactly
    the full file's first frames — the packet cut inside the last sample is not one of
    them, nor (with B-frames) a frame shown after one that is missing, which would shift
    every later index."""
    if name == "faststart.mp4":
        full = write_clip(
            str(tmp_path / name),
            num_frames=48,
            options={"bf": "2", "g": "12"},
            container_options={"movflags": "faststart"},
        )
    else:
        full = os.path.join(clip_dir, name)
    ref = decode_all(full)
    offered = []
    for fraction in np.linspace(0.5, 0.97, 12):
        with open_video(_cut(full, tmp_path / f"cut_{name}", fraction)) as video:
            n = video.decodable_frames  # num_frames: the header's (MKV: from its duration)
            assert 0 < n <= video.num_frames <= len(ref)
            np.testing.assert_array_equal(video.get(list(range(n))), ref[:n], err_msg=f"{fraction}")
            offered.append(n)
    assert offered == sorted(offered) and offered[-1] > offered[0]
