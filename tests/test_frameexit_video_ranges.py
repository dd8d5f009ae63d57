"""Remote reads by byte ranges, as the loopback S3 server logged them: only the header and
the packets decoded are fetched, so bytes read follow frames decoded."""

from __future__ import annotations

import os
from collections.abc import Iterator

import av
import numpy as np
import pytest

from frameexit.errors import VideoDecodeError
from frameexit.testing.clips import decode_all, write_clip, write_spec_clip
from frameexit.testing.s3 import LoopbackS3
from frameexit.testing.s3_requests import RequestLog, S3Request, start_recording_s3
from frameexit.video import VideoReader, open_video
from frameexit.video.source import HEAD_BYTES

pytestmark = pytest.mark.s3

THRESHOLD = 16 * 1024  # range_min_bytes here: objects above the first GET go by ranges


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackS3, RequestLog]]:
    s3 = start_recording_s3(str(tmp_path_factory.mktemp("s3log") / "requests.jsonl"))
    try:
        yield s3, RequestLog(s3)
    finally:
        s3.stop()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, server) -> dict[str, tuple[str, str]]:
    """name -> (local path, s3 URI): 300 frames with a keyframe every 40, moov at the end
    (PyAV's default) and at the start; a small clip; an MKV (no per-frame index)."""
    s3, _ = server
    directory = tmp_path_factory.mktemp("ranged")
    bucket = s3.create_bucket()
    common = dict(num_frames=300, width=160, height=120, options={"bf": "3", "g": "40"})
    paths = {
        "moov_end.mp4": write_clip(str(directory / "moov_end.mp4"), **common),
        "moov_start.mp4": write_clip(
            str(directory / "moov_start.mp4"),
            container_options={"movflags": "faststart"},
            **common,
        ),
        "small.mp4": write_spec_clip(str(directory), "h264_bframes.mp4"),
        "clip.mkv": write_clip(str(directory / "clip.mkv"), **common),
    }
    fs = s3.filesystem()
    out = {}
    for name, path in paths.items():
        fs.put_file(path, f"{bucket}/{name}")
        out[name] = (path, f"{bucket}/{name}")
    return out


def packet_spans(path: str) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """``[start, end)`` byte span of every video packet (decode order), keyframe indices,
    and each frame's decode index (frame i = i-th smallest pts) — from a plain demux."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        spans = [(p.pos, p.pos + p.size) for p in packets]
        keys = [i for i, p in enumerate(packets) if p.is_keyframe]
        order = sorted(range(len(packets)), key=lambda i: packets[i].pts)
    return spans, keys, order


def ranged(s3: LoopbackS3, uri: str) -> VideoReader:
    """The default reader (``fetch="auto"``) with this file's small threshold."""
    return open_video(uri, storage_options=s3.storage_options, range_min_bytes=THRESHOLD)


def ranged_gets(requests: list[S3Request], key: str) -> list[tuple[int, int]]:
    return [r.range for r in requests if r.method == "GET" and r.key == key and r.range]


def inside(span: tuple[int, int], allowed: list[tuple[int, int]]) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in allowed)


@pytest.mark.parametrize("name", ["moov_end.mp4", "moov_start.mp4"])
def test_ranged_reads_touch_only_the_header_and_the_packets_decoded(
    server, videos: dict, name: str
) -> None:
    s3, log = server
    path, uri = videos[name]
    ref = decode_all(path)
    spans, keys, order = packet_spans(path)
    size = os.path.getsize(path)
    steps = [150, 0, 299, 75]
    with log.recording() as requests, ranged(s3, uri) as video:
        assert video.stats["fetch"] == "ranges" and video.stats["mode"] == "index"
        for i in steps:
            np.testing.assert_array_equal(video.get([i])[0], ref[i])
        fetched = video.stats["bytes_fetched"]
    gets = ranged_gets(requests, uri[5:])
    assert [r.method for r in requests].count("HEAD") == 0  # S3 said the size with the bytes
    assert gets[0] == (0, HEAD_BYTES)  # the first bytes (ftyp, and moov when it is first)
    mdat = (min(a for a, _ in spans), max(b for _, b in spans))
    header = [(0, mdat[0]), (mdat[1], size)]  # everything that is not packet data
    # each step: its keyframe's packet .. a few packets past the frame (B-frame reorder)
    expected = []
    for i in steps:
        d = order[i]
        key = max(k for k in keys if k <= d)
        expected.append((spans[key][0], spans[min(d + 8, len(spans) - 1)][1]))
    for span in gets[1:]:
        assert inside(span, header + expected), (span, expected)
    frames_span = sum(b - a for a, b in expected)
    assert sum(b - a for a, b in gets) == fetched
    assert fetched <= HEAD_BYTES + (size - mdat[1]) + frames_span
    # an exit after step 1 would have read the header and one GOP prefix: a fraction
    assert len(gets) <= 2 + len(steps) + 1


def test_bytes_read_follow_frames_decoded(server, videos: dict) -> None:
    """Exiting after step 1 reads, past the first GET, under a third of what ten steps read."""
    s3, _ = server
    path, uri = videos["moov_end.mp4"]
    from frameexit.policy import coarse_to_fine

    steps = coarse_to_fine(300, 10)
    read = []
    for used in (1, 10):
        with ranged(s3, uri) as video:
            video.plan(steps)
            for i in steps[:used]:
                video.get([i])
            read.append(video.stats["bytes_fetched"])
    beyond = [r - HEAD_BYTES for r in read]  # the first GET is the same for both
    assert beyond[0] < beyond[1] / 3, read
    assert read[1] <= os.path.getsize(path)


def test_small_object_is_one_whole_get(server, videos: dict) -> None:
    s3, log = server
    path, uri = videos["small.mp4"]
    with log.recording() as requests, ranged(s3, uri) as video:
        assert video.stats["fetch"] == "whole"
        video.get([47, 0])
    assert [(r.method, r.range) for r in requests] == [("GET", (0, HEAD_BYTES))]
    assert os.path.getsize(path) < HEAD_BYTES


def test_object_under_the_threshold_is_completed_whole(server, videos: dict) -> None:
    """Above the first GET but under ``range_min_bytes``: one more GET for the rest."""
    s3, log = server
    path, uri = videos["moov_end.mp4"]
    size = os.path.getsize(path)
    with (
        log.recording() as requests,
        open_video(uri, storage_options=s3.storage_options, range_min_bytes=size + 1) as video,
    ):
        assert video.stats["fetch"] == "whole" and video.stats["requests"] == 2
        video.get([299])
    assert [(r.method, r.range) for r in requests] == [
        ("GET", (0, HEAD_BYTES)),
        ("GET", (HEAD_BYTES, size)),
    ]


def test_container_without_index_is_fetched_in_one_more_request(server, videos: dict) -> None:
    """MKV has no per-frame index: the scan needs every byte, fetched in one request for
    the rest of the object, not one per block the demuxer touches."""
    s3, log = server
    path, uri = videos["clip.mkv"]
    ref = decode_all(path)
    with log.recording() as requests, ranged(s3, uri) as video:
        assert video.stats["mode"] == "scan"
        np.testing.assert_array_equal(video.get([150, 299]), ref[[150, 299]])
    gets = ranged_gets(requests, uri[5:])
    assert gets == [(0, HEAD_BYTES), (HEAD_BYTES, os.path.getsize(path))], gets


def test_empty_and_missing_objects_are_typed(server) -> None:
    """A zero-byte object (S3 refuses any byte range of it) is ``empty``, not unreadable."""
    from frameexit.errors import VideoDecodeError

    s3, _ = server
    bucket = s3.create_bucket()
    s3.filesystem().pipe_file(f"{bucket}/empty.mp4", b"")
    for name, kind in (("empty.mp4", "empty"), ("nope.mp4", "missing")):
        with pytest.raises(VideoDecodeError) as info:
            ranged(s3, f"{bucket}/{name}")
        assert info.value.kind == kind and info.value.uri == f"{bucket}/{name}"


@pytest.mark.s3
@pytest.mark.parametrize("fetch", ["auto", "whole", "ranges"])
def test_a_video_over_max_bytes_is_refused_before_it_is_fetched(server, videos, fetch):
    s3, _ = server
    path, uri = videos["moov_end.mp4"]
    limit = os.path.getsize(path) - 1
    with pytest.raises(VideoDecodeError) as info:
        open_video(uri, storage_options=s3.storage_options, fetch=fetch, max_bytes=limit)
    assert info.value.kind == "too_large" and str(limit) in info.value.reason
    with pytest.raises(VideoDecodeError, match="too_large"):
        open_video(path, max_bytes=limit)  # local files too
    with open_video(uri, storage_options=s3.storage_options, fetch=fetch,
                    max_bytes=limit + 1) as reader:  # fmt: skip
        assert reader.num_frames == 300
