"""frameexit.video.containers and errors.classify_failure on real clip bytes and on
byte-level edits of them (cut, size 0, 64-bit sizes, corrupt sizes, no moov, RIFF sizes)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from frameexit.errors import VideoDecodeError
from frameexit.inference import as_decode_error
from frameexit.testing.clips import write_clip, write_spec_clip
from frameexit.video import classify_failure
from frameexit.video.containers import (
    MP4_FORMAT,
    is_not_video,
    mp4_boxes,
    mp4_damage,
    riff_complete,
    riff_declared_size,
    sniff,
    structural_damage,
)
from frameexit.video.mp4_index import find_moov
from frameexit.video.source import Source

_X264 = {"preset": "veryfast", "bf": "2", "g": "12"}


def _reader(data: bytes):
    return lambda offset, n: data[offset : offset + n]


def _top_level(data: bytes) -> list[tuple[bytes, int, int]]:
    """``(kind, start, size)`` of a well-formed file's boxes (32-bit sizes only): the
    expectation, parsed here independently of the code under test."""
    out, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        out.append((kind, at, size))
        at += size
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An MP4 with its index at the end (PyAV's default), one with it first, an AVI."""
    d = tmp_path_factory.mktemp("containers")
    return {
        "end": write_clip(str(d / "end.mp4"), options=_X264),
        "faststart": write_clip(
            str(d / "fs.mp4"), options=_X264, container_options={"movflags": "faststart"}
        ),
        "avi": write_clip(str(d / "v.avi"), codec="mpeg4", bframes=2, gop=12),
    }


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ----------------------------------------------------------------------------- MP4 boxes


@pytest.mark.parametrize(
    "layout,order", [("end", "ftyp free mdat moov"), ("faststart", "ftyp moov free mdat")]
)
def test_box_walk_of_a_real_mp4(clips, layout: str, order: str) -> None:
    data = _bytes(clips[layout])
    boxes = list(mp4_boxes(_reader(data), len(data)))
    assert [b.kind.decode() for b in boxes] == order.split()
    assert [(b.kind, b.start, b.size) for b in boxes] == _top_level(data)
    assert all(b.problem is None and b.payload == b.start + 8 for b in boxes)
    assert boxes[-1].end == len(data)
    assert mp4_damage(_reader(data), len(data)) is None


def test_box_walk_reads_only_the_headers_it_passes(clips) -> None:
    """find_moov on an index-at-the-end file reads each box header and the moov payload,
    never the media data (a ranged source fetches nothing else)."""
    data = _bytes(clips["end"])
    (_, _, _), (_, free_at, _), (_, mdat_at, _), (_, moov_at, moov_size) = _top_level(data)
    calls = []

    def read_at(offset: int, n: int) -> bytes:
        calls.append((offset, n))
        return data[offset : offset + n]

    moov = find_moov(read_at, len(data))
    assert moov == data[moov_at + 8 : moov_at + moov_size]
    assert calls == [
        (0, 16),
        (free_at, 16),
        (mdat_at, 16),
        (moov_at, 16),
        (moov_at + 8, moov_size - 8),
    ]


def test_size_zero_box_runs_to_the_end_of_the_file(clips) -> None:
    data = bytearray(_bytes(clips["end"]))
    kind, moov_at, moov_size = _top_level(bytes(data))[-1]
    assert kind == b"moov"
    struct.pack_into(">I", data, moov_at, 0)
    boxes = list(mp4_boxes(_reader(bytes(data)), len(data)))
    assert (boxes[-1].kind, boxes[-1].start, boxes[-1].end, boxes[-1].problem) == (
        b"moov",
        moov_at,
        len(data),
        None,
    )
    assert find_moov(_reader(bytes(data)), len(data)) == bytes(data[moov_at + 8 :])


def test_64_bit_largesize_box(clips) -> None:
    """FFmpeg's layout for files over 4 GiB: the 8-byte ``free`` placeholder before
    ``mdat`` becomes the 64-bit size, so the media data stays where the index says."""
    data = _bytes(clips["end"])
    ftyp, free, mdat, moov = _top_level(data)
    assert free[0] == b"free" and free[2] == 8
    payload = data[mdat[1] + 8 : mdat[1] + mdat[2]]
    large = struct.pack(">I4sQ", 1, b"mdat", 16 + len(payload))
    edited = data[: free[1]] + large + payload + data[moov[1] :]
    assert len(edited) == len(data)
    boxes = list(mp4_boxes(_reader(edited), len(edited)))
    assert [(b.kind, b.start, b.payload, b.end) for b in boxes[1:]] == [
        (b"mdat", free[1], free[1] + 16, moov[1]),
        (b"moov", moov[1], moov[1] + 8, len(data)),
    ]
    assert boxes[1].payload == mdat[1] + 8  # the media data did not move
    assert find_moov(_reader(edited), len(edited)) == data[moov[1] + 8 :]


def test_cut_files(clips) -> None:
    data = _bytes(clips["end"])
    _, _, (_, mdat_at, mdat_size), (_, moov_at, _) = _top_level(data)
    cut = data[: mdat_at + 100]
    last = list(mp4_boxes(_reader(cut), len(cut)))[-1]
    assert (last.kind, last.start, last.size, last.problem) == (
        b"mdat",
        mdat_at,
        mdat_size,
        "overrun",
    )
    assert mp4_damage(_reader(cut), len(cut)) == (
        "truncated",
        f"MP4 box 'mdat' at byte {mdat_at} declares {mdat_size} bytes but the file ends at "
        f"{len(cut)}",
    )
    assert find_moov(_reader(cut), len(cut)) is None
    header_cut = data[: moov_at + 4]
    last = list(mp4_boxes(_reader(header_cut), len(header_cut)))[-1]
    assert (last.start, last.problem) == (moov_at, "cut")
    assert mp4_damage(_reader(header_cut), len(header_cut)) == (
        "truncated", f"MP4 box header cut at byte {moov_at}"
    )  # fmt: skip


def test_moov_cut_in_a_faststart_file(clips) -> None:
    data = _bytes(clips["faststart"])
    (_, moov_at, moov_size) = _top_level(data)[1]
    cut = data[: moov_at + moov_size // 2]
    assert find_moov(_reader(cut), len(cut)) is None
    kind, reason = mp4_damage(_reader(cut), len(cut))
    assert kind == "truncated" and f"'moov' at byte {moov_at} declares {moov_size}" in reason


def test_corrupt_box_sizes(clips) -> None:
    data = bytearray(_bytes(clips["end"]))
    _, _, (_, mdat_at, _), (_, moov_at, _) = _top_level(bytes(data))
    small = bytearray(data)
    struct.pack_into(">I", small, moov_at, 4)  # smaller than its own header
    assert mp4_damage(_reader(bytes(small)), len(small)) == (
        "unreadable", f"corrupt MP4 box at byte {moov_at}"
    )  # fmt: skip
    assert find_moov(_reader(bytes(small)), len(small)) is None
    no_large = bytes(data[:moov_at]) + struct.pack(">I4s", 1, b"moov")  # 64-bit size missing
    last = list(mp4_boxes(_reader(no_large), len(no_large)))[-1]
    assert (last.kind, last.start, last.problem) == (b"moov", moov_at, "corrupt")
    assert mp4_damage(_reader(no_large), len(no_large))[0] == "unreadable"


def test_mp4_without_moov(clips) -> None:
    data = bytearray(_bytes(clips["end"]))
    moov_at = _top_level(bytes(data))[-1][1]
    data[moov_at + 4 : moov_at + 8] = b"free"
    assert find_moov(_reader(bytes(data)), len(data)) is None
    assert mp4_damage(_reader(bytes(data)), len(data)) == (
        "truncated", "MP4 without a 'moov' box (recording never finalised)"
    )  # fmt: skip


def test_oversized_moov_is_not_read() -> None:
    """A moov declared over 256 MiB is refused from its header alone."""
    size = 300 * 1024 * 1024
    head = struct.pack(">I4s", 16, b"ftyp") + b"isom" * 2 + struct.pack(">I4s", 257 << 20, b"moov")
    padded, calls = head + bytes(64), []

    def read_at(offset: int, n: int) -> bytes:
        calls.append((offset, n))
        return padded[offset : offset + n]

    assert find_moov(read_at, size) is None
    assert all(n <= 16 for _, n in calls)


# ----------------------------------------------------------------------------- RIFF, sniff


def test_riff_sizes(clips) -> None:
    data = _bytes(clips["avi"])
    assert riff_declared_size(data[:12]) == len(data)
    assert riff_complete(_reader(data), len(data))
    assert structural_damage(_reader(data), len(data), "avi") is None
    wrong = bytearray(data)
    struct.pack_into("<I", wrong, 4, len(data) + 100 - 8)  # the header says 100 bytes more
    assert not riff_complete(_reader(bytes(wrong)), len(wrong))
    assert structural_damage(_reader(bytes(wrong)), len(wrong), "avi") == (
        "truncated", f"AVI declares {len(data) + 100} bytes but the file has {len(data)}"
    )  # fmt: skip
    cut = data[: len(data) // 2]
    assert not riff_complete(_reader(cut), len(cut))
    assert riff_declared_size(b"RIFF\x04") is None and riff_declared_size(data[4:16]) is None


@pytest.mark.parametrize(
    "name,container",
    [
        ("h264_bframes.mp4", "mp4"),
        ("h264_faststart.mp4", "mp4"),
        ("h264.mov", "mp4"),
        ("mpeg4_bframes.avi", "avi"),
        ("h264_12.5fps.mkv", "matroska"),
        ("vp9.webm", "matroska"),
        ("mpeg2_bframes.ts", "mpegts"),
    ],
)
def test_sniff_real_clips(tmp_path, name: str, container: str) -> None:
    data = _bytes(write_spec_clip(str(tmp_path), name))
    assert sniff(_reader(data)) == container
    assert structural_damage(_reader(data), len(data), container) is None


def test_sniff_refuses_what_is_no_video() -> None:
    assert sniff(_reader(np.random.default_rng(0).bytes(4096))) is None
    assert sniff(_reader(b"not a video, line 0\n" * 50)) is None
    assert sniff(_reader(b"RIFF\x24\x00\x00\x00WAVEfmt ")) is None  # RIFF, but audio
    assert sniff(_reader(b"\x47" + b"\0" * 100)) is None  # one sync byte is no stream
    assert sniff(_reader(b"")) is None


def test_is_not_video() -> None:
    assert is_not_video("tty", "ansi") and is_not_video("png_pipe", "png")
    assert is_not_video("matroska,webm", "bintext")
    assert not is_not_video(MP4_FORMAT, "h264") and not is_not_video("avi", "mpeg4")


# ----------------------------------------------------------------------------- classify_failure


def test_classify_fetch_failures() -> None:
    uri = "s3://b/v.mp4"
    typed = VideoDecodeError(uri, "timeout", "slow")
    assert classify_failure(uri, typed, stage="fetch") is typed
    cases = {
        FileNotFoundError("x"): ("missing", "no such file or object"),
        IsADirectoryError("x"): ("missing", "is a directory, not a file"),
        PermissionError("no"): ("access_denied", "access denied (check credentials/permissions): no"),
        ConnectionResetError("Connection reset by peer"): (
            "unavailable", "ConnectionResetError: Connection reset by peer"
        ),
        OSError("503 SlowDown"): ("throttled", "OSError: 503 SlowDown"),
        ValueError("odd"): ("unreadable", "ValueError: odd"),
    }  # fmt: skip
    for exc, (kind, reason) in cases.items():
        err = classify_failure(uri, exc, stage="fetch")
        assert (err.uri, err.kind, err.reason) == (uri, kind, reason), exc


def test_classify_decode_and_other_failures() -> None:
    uri = "v.mp4"
    slow = classify_failure(uri, OSError("503 SlowDown"), stage="decode")
    assert (slow.kind, slow.reason) == ("throttled", "OSError: 503 SlowDown")
    bad = classify_failure(uri, ValueError("bad packet"), stage="decode")
    assert (bad.kind, bad.reason) == ("unreadable", "ValueError while decoding: bad packet")
    # outside storage and decoding, a message that looks like storage is not taken as one
    other = classify_failure(uri, RuntimeError("HTTP 503 from the model server"))
    assert (other.kind, other.reason) == (
        "unreadable",
        "RuntimeError: HTTP 503 from the model server",
    )
    assert as_decode_error(uri, RuntimeError("x")).reason == "RuntimeError: x"
    with pytest.raises(ValueError, match="stage"):
        classify_failure(uri, ValueError(), stage="later")


def test_classify_open_failures_from_the_bytes(clips, tmp_path) -> None:
    exc = ValueError("Invalid data found when processing input")
    data = _bytes(clips["end"])

    def open_failure(name: str, content: bytes) -> VideoDecodeError:
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(content)
        return classify_failure(path, exc, stage="open", source=Source(path))

    cut = open_failure("cut.mp4", data[: len(data) // 2])
    assert cut.kind == "truncated" and "'mdat'" in cut.reason
    whole = open_failure("whole.mp4", data)  # sound framing: the damage is inside
    assert (whole.kind, whole.reason) == ("unreadable", f"damaged MP4: ValueError: {exc}")
    avi = _bytes(clips["avi"])
    assert open_failure("cut.avi", avi[: len(avi) // 2]).kind == "truncated"
    assert open_failure("v.avi", avi).reason == f"damaged AVI: ValueError: {exc}"
    noise = open_failure("noise.mp4", np.random.default_rng(1).bytes(5000))
    assert (noise.kind, noise.reason) == ("not_video", f"not a video container (ValueError: {exc})")
    gone = classify_failure("v.mp4", FileNotFoundError("v.mp4"), stage="open", source=None)
    assert gone.kind == "missing"
    denied = classify_failure("v.mp4", PermissionError("no"), stage="open", source=None)
    assert denied.kind == "access_denied"
