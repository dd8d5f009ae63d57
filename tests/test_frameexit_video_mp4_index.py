"""frameexit.video.mp4_index and the index-built FrameTable, checked against what PyAV
reports for the same files (packet pts/dts, a full packet scan, decoded frames)."""

from __future__ import annotations

import dataclasses
import struct

import av
import numpy as np
import pytest

from frameexit.testing.clips import (
    CLIP_SPECS,
    decode_all,
    frame_pattern,
    write_clip,
    write_spec_clip,
)
from frameexit.video.frame_table import FrameTable, index_table, scan_table
from frameexit.video.mp4_index import find_moov, sample_tables
from frameexit.video.pyav_backend import PyAVDecoder
from frameexit.video.source import Source

MP4_CLIPS = sorted(n for n in CLIP_SPECS if n.endswith((".mp4", ".mov")))


def _tables(path: str) -> dict:
    src = Source(path)
    moov = find_moov(src.read_at, src.size)
    assert moov is not None
    return sample_tables(moov)


def _packets(path: str) -> tuple[int, list[tuple[int, int]]]:
    """The video stream's id and ``(pts, dts)`` of its packets in decode order."""
    with av.open(path) as container:
        vs = container.streams.video[0]
        return vs.id, [(p.pts, p.dts) for p in container.demux(vs) if p.size]


def _both_tables(path: str) -> tuple[FrameTable | str, FrameTable]:
    src = Source(path)
    with av.open(path) as container:
        vs = container.streams.video[0]
        fmt, declared = container.format.name, int(vs.frames or 0)
        index = index_table(vs, fmt, declared, src)
        rate = vs.average_rate or vs.guessed_rate
        scan = scan_table(
            container,
            vs,
            uri=path,
            format_name=fmt,
            declared_frames=declared,
            fps=float(rate) if rate else 0.0,
            source=src,
            check_cancel=lambda: None,
        )
    return index, scan


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("mp4_index")
    for name in [*MP4_CLIPS, "h264_nobframes.avi", "mjpeg_overstated.avi", "mpeg4_bframes.avi"]:
        write_spec_clip(str(directory), name)
    return str(directory)


@pytest.mark.parametrize("name", MP4_CLIPS)
def test_per_sample_offsets_give_the_pts_pyav_reports(clip_dir: str, name: str) -> None:
    """stts deltas are PyAV's dts steps, and dts + ctts offset (+ FFmpeg's shift for
    negative offsets) is PyAV's pts, packet by packet."""
    path = f"{clip_dir}/{name}"
    stream_id, packets = _packets(path)
    table = _tables(path)[stream_id]
    assert len(table.deltas) == len(table.offsets) == len(packets) == 48
    dts = np.array([d for _, d in packets])
    pts = np.array([p for p, _ in packets])
    np.testing.assert_array_equal(np.diff(dts), table.deltas[:-1])
    shift = max(0, -int(table.offsets.min()))
    np.testing.assert_array_equal(pts - dts, table.offsets + shift)


def test_negative_composition_offsets_are_signed(clip_dir: str) -> None:
    """ctts version 1 (``negative_cts_offsets``): offsets below zero, read as signed."""
    path = f"{clip_dir}/h264_negative_cts.mp4"
    stream_id, _ = _packets(path)
    offsets = _tables(path)[stream_id].offsets
    assert offsets.min() < 0 < offsets.max() and offsets.min() > -(1 << 20)


def test_no_ctts_box_means_pts_equal_dts(tmp_path) -> None:
    path = write_clip(str(tmp_path / "nob.mp4"), options={"preset": "veryfast", "bf": "0"})
    src = Source(path)
    assert b"ctts" not in find_moov(src.read_at, src.size)
    stream_id, packets = _packets(path)
    table = _tables(path)[stream_id]
    assert not table.offsets.any() and len(table.offsets) == 48
    assert all(p == d for p, d in packets)


def test_only_video_tracks(tmp_path) -> None:
    """A file with an audio track: only the video track's table, under its track id."""
    path = str(tmp_path / "av.mp4")
    out = av.open(path, "w")
    video = out.add_stream("libx264", rate=25)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    audio = out.add_stream("aac", rate=8000)
    for i in range(25):
        for packet in video.encode(av.VideoFrame.from_ndarray(frame_pattern(i, 64, 48))):
            out.mux(packet)
    for i in range(10):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
        frame.sample_rate, frame.pts = 8000, i * 1024
        for packet in audio.encode(frame):
            out.mux(packet)
    for stream in (video, audio):
        for packet in stream.encode():
            out.mux(packet)
    out.close()
    with av.open(path) as container:
        ids = {s.type: s.id for s in container.streams}
    tables = _tables(path)
    assert set(tables) == {ids["video"]} and ids["audio"] != ids["video"]
    assert len(tables[ids["video"]].offsets) == 25


@pytest.mark.parametrize(
    "name", [n for n in MP4_CLIPS if "trimmed" not in n] + ["mjpeg_overstated.avi"]
)
def test_index_table_equals_a_full_scan(clip_dir: str, name: str) -> None:
    """What the header alone says (no packet read) is the table a scan of every packet
    builds: positions, sizes, timestamps, keyframes, hence every frame's pts."""
    index, scan = _both_tables(f"{clip_dir}/{name}")
    assert isinstance(index, FrameTable), index
    assert index.from_index and not scan.from_index
    assert index.columns() == scan.columns()
    assert (index.num_frames, index.truncated) == (scan.num_frames, scan.truncated) == (48, False)
    assert index.frame_pts == scan.frame_pts and len(index.frame_pts) == 48
    assert list(index.frame_pts) == sorted(index.frame_pts)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("h264_trimmed_editlist.mp4", "edit list discards samples"),
        ("mpeg4_bframes.avi", "AVI with frame reordering: packet pts are not in the index"),
    ],
)
def test_index_table_says_why_not(clip_dir: str, name: str, reason: str) -> None:
    index, scan = _both_tables(f"{clip_dir}/{name}")
    assert index == reason
    assert scan.decodable > 0


def test_packets_that_differ_from_the_index_make_the_decoder_scan(clip_dir: str) -> None:
    """H.264 in AVI: the index gives dts, the demuxer reports pts one tick later; the
    decoder notices on the first packets it reads and builds its table from a scan."""
    path = f"{clip_dir}/h264_nobframes.avi"
    index, scan = _both_tables(path)
    assert index.dts == scan.dts and index.pts != scan.pts
    decoder = PyAVDecoder(lambda: path, path)
    try:
        assert (decoder.mode, decoder.index_skipped) == ("scan", "packets differ from the index")
        assert decoder.num_frames == 48
    finally:
        decoder.close()


def test_frame_table_is_immutable(clip_dir: str) -> None:
    index, _ = _both_tables(f"{clip_dir}/h264_bframes.mp4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        index.pts = ()
    with pytest.raises(TypeError):
        index.idx_of_pts[0] = 1  # read-only mapping
    assert index.without_last().decodable == 47 and index.decodable == 48
    hidden = index.hiding({0})
    assert hidden.decodable == 47 and index.discard == (False,) * 48


def test_largesize_mdat_file_is_read_exactly_from_its_index(clip_dir: str, tmp_path) -> None:
    """FFmpeg's layout for files over 4 GiB (64-bit mdat size in place of the ``free``
    placeholder): the index is still found and every frame is the right one."""
    original = f"{clip_dir}/h264_bframes.mp4"
    with open(original, "rb") as f:
        data = f.read()
    assert data[36:40] == b"free" and data[44:48] == b"mdat"
    mdat_size = struct.unpack_from(">I", data, 40)[0]
    edited = data[:32] + struct.pack(">I4sQ", 1, b"mdat", mdat_size + 8) + data[48:]
    path = str(tmp_path / "large.mp4")
    with open(path, "wb") as f:
        f.write(edited)
    decoder = PyAVDecoder(lambda: path, path, mode="index")
    try:
        assert decoder.mode == "index" and decoder.index_skipped is None
        ref = decode_all(original)
        for i in (47, 0, 23, 11):
            np.testing.assert_array_equal(decoder.get([i])[i], ref[i])
    finally:
        decoder.close()


def test_a_sample_table_that_does_not_add_up_leaves_the_track_out(clip_dir: str) -> None:
    src = Source(f"{clip_dir}/h264_bframes.mp4")
    moov = bytearray(find_moov(src.read_at, src.size))
    assert len(sample_tables(bytes(moov))) == 1
    stts = moov.find(b"stts")
    bad_count = bytearray(moov)
    struct.pack_into(">I", bad_count, stts + 8, 1 << 20)  # more entries than the box holds
    assert sample_tables(bytes(bad_count)) == {}
    stsz = moov.find(b"stsz")
    bad_samples = bytearray(moov)
    struct.pack_into(">I", bad_samples, stsz + 12, 49)  # one sample more than stts covers
    assert sample_tables(bytes(bad_samples)) == {}
