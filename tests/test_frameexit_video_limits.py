"""Bounded decoding (issue 20, items 5 and 6): declared sizes refused before FFmpeg
indexes them, frames kept at the model's input size, an actor memory estimate from what
is held, and timeouts that stop the work."""

from __future__ import annotations

import functools
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from frameexit.config import load_config
from frameexit.errors import ConfigError, VideoDecodeError
from frameexit.inference import (
    VideoRequest,
    label_videos,
    labeling_memory_bytes,
    model_input_frame,
)
from frameexit.model import build_model
from frameexit.testing.clips import decode_all, write_clip
from frameexit.transforms import frames_to_tensor, resize_size
from frameexit.video import DecodeOptions, open_video
from frameexit.video.errors import Cancelled, classify_failure
from frameexit.video.limits import session_bytes
from frameexit.video.source import Source

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def _box(data: bytearray, kind: bytes) -> int:
    return data.find(kind) - 4


def _sample_bomb(path: Path, samples: int = 20_000_000) -> Path:
    """A real one-frame clip whose ``stsz``/``stts``/``stsc`` declare ``samples`` samples
    (1.5 KB; FFmpeg allocates its index per declared sample)."""
    write_clip(str(path), num_frames=1, width=16, height=16)
    data = bytearray(path.read_bytes())
    stsz = _box(data, b"stsz")
    entry = struct.unpack_from(">I", data, stsz + 20)[0]
    struct.pack_into(">II", data, stsz + 12, entry, samples)  # constant size, count
    struct.pack_into(">I", data, _box(data, b"stts") + 16, samples)
    struct.pack_into(">I", data, _box(data, b"stsc") + 20, samples)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def square_4k(tmp_path_factory) -> str:
    """A 4096x4096 H.264 clip at the lowest bitrate (tens of KB), one GOP."""
    path = str(tmp_path_factory.mktemp("big") / "4096.mp4")
    out = av.open(path, "w")
    stream = out.add_stream("libx264", rate=25)
    stream.width = stream.height = 4096
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "51", "preset": "ultrafast"}
    image = np.zeros((4096, 4096, 3), np.uint8)
    for i in range(4):
        image[:64] = 40 * i
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


# ----------------------------------------------------------------------------- limits


_RSS_SCRIPT = """
import resource, sys
from frameexit.video import open_video
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    open_video(sys.argv[1], timeout_s=None)
    print("opened")
except Exception as e:
    print(e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_an_mp4_declaring_20m_samples_is_too_large_before_ffmpeg_indexes_it(tmp_path) -> None:
    bomb = _sample_bomb(tmp_path / "bomb.mp4")
    assert bomb.stat().st_size < 2048
    with pytest.raises(VideoDecodeError) as error:
        open_video(str(bomb))
    assert error.value.kind == "too_large"
    assert "20000000" in str(error.value) and "data.decode.max_frames" in str(error.value)
    # measured in a fresh process: FFmpeg's index for it took ~700 MB
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(bomb)], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert "too_large" in out[0]
    assert int(out[1]) < 100, f"open grew the RSS by {out[1]} MB"


def test_a_4096_square_clip_is_refusable_by_max_pixels(square_4k: str) -> None:
    with open_video(square_4k) as video:  # the default allows up to DCI 8K
        assert (video.info["width"], video.info["height"]) == (4096, 4096)
    with pytest.raises(VideoDecodeError) as error:
        open_video(square_4k, max_pixels=4096 * 2160)
    assert error.value.kind == "too_large"
    assert "4096x4096" in str(error.value) and "data.decode.max_pixels" in str(error.value)


def test_a_duration_over_max_duration_s_is_too_large(tmp_path) -> None:
    clip = write_clip(str(tmp_path / "c.mp4"), num_frames=48, fps=25)  # 1.92 s
    with open_video(clip, max_duration_s=2.0) as video:
        assert video.num_frames == 48
    with pytest.raises(VideoDecodeError) as error:
        open_video(clip, max_duration_s=1.0)
    assert error.value.kind == "too_large" and "max_duration_s" in str(error.value)


@pytest.mark.parametrize("fmt", ["matroska", "avi"])
def test_other_containers_are_checked_from_their_header(tmp_path, fmt: str) -> None:
    clip = write_clip(str(tmp_path / f"c.{fmt}"), num_frames=12, width=64, height=48, format=fmt)
    with pytest.raises(VideoDecodeError) as error:
        open_video(clip, max_pixels=64 * 48 - 1)
    assert error.value.kind == "too_large" and "64x48" in str(error.value)


def test_an_avi_header_declaring_millions_of_frames_is_too_large(tmp_path) -> None:
    clip = write_clip(
        str(tmp_path / "c.avi"), num_frames=12, format="avi", avi_declared_frames=5_000_000
    )
    with pytest.raises(VideoDecodeError) as error:
        open_video(clip)
    assert error.value.kind == "too_large" and "5000000" in str(error.value)


def test_the_limits_are_config_fields_checked_by_name() -> None:
    cfg = load_config(
        None,
        ["data.decode.max_frames=10", "data.decode.max_pixels=100", "data.decode.max_duration_s=2"],
    )
    assert (cfg.data.decode.max_frames, cfg.data.decode.max_pixels) == (10, 100)
    assert cfg.data.decode.max_duration_s == 2.0
    for field, value in [("max_frames", "0"), ("max_pixels", "-1"), ("max_duration_s", "0")]:
        with pytest.raises(ConfigError) as error:
            load_config(None, [f"data.decode.{field}={value}"])
        assert error.value.field == f"data.decode.{field}"
    default = DecodeOptions()
    assert default.max_pixels >= 7680 * 4320 and default.max_frames < 20_000_000


# ----------------------------------------------------------- frames at model resolution


@pytest.mark.parametrize(
    "shape", [(48, 64), (64, 48), (37, 91), (100, 100), (20, 30), (480, 640), (1080, 1920)]
)
@pytest.mark.parametrize("image_size", [32, 224])
def test_model_input_frames_give_the_same_network_input(shape, image_size: int) -> None:
    rng = np.random.default_rng(shape[0] * 7 + image_size)
    frames = rng.integers(0, 256, (3, *shape, 3), dtype=np.uint8)
    small = np.stack([model_input_frame(f, image_size) for f in frames])
    short = resize_size(image_size)
    assert small.shape == (3, short, short, 3)
    want = frames_to_tensor(frames, image_size=image_size, mean=MEAN, std=STD)
    got = frames_to_tensor(small, image_size=image_size, mean=MEAN, std=STD)
    assert torch.equal(want, got)
    clips = frames.reshape(1, 3, *shape, 3)  # a 3-frame clip: resized together there
    assert torch.equal(
        frames_to_tensor(clips, image_size=image_size, mean=MEAN, std=STD),
        frames_to_tensor(
            small.reshape(1, 3, short, short, 3), image_size=image_size, mean=MEAN, std=STD
        ),  # fmt: skip
    )


def test_planned_frames_are_kept_at_the_model_input_size(square_4k: str) -> None:
    with open_video(square_4k) as video:
        video.transform_frames(functools.partial(model_input_frame, image_size=224))
        video.plan([0, 1, 2, 3])
        first = video.get([3])
        kept = video._decoder._kept
        assert sorted(kept) == [0, 1, 2]  # passed on the way to frame 3
        assert {f.shape for f in kept.values()} == {(256, 256, 3)} == {first.shape[1:]}
        assert not video._decoder.holds_sessions and video._decoder._s is None


def test_labels_do_not_change_when_frames_are_reduced_at_decode(tiny_corpus) -> None:
    cfg = load_config(None, ["model.backbone=tiny", "model.num_classes=3", "model.num_steps=4",
                             "model.image_size=32", "model.feature_dim=32"])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    videos = [VideoRequest(v) for v in tiny_corpus.table["video"].tolist()]

    def full_frames(uri: str):  # a reader without transform_frames: frames at full size
        reader = open_video(uri, cfg.data.decode)
        reader.transform_frames = None  # type: ignore[method-assign]
        return reader

    with ThreadPoolExecutor(2) as pool:
        reduced = label_videos(model, videos, cfg, pool=pool, threshold=0.5)
        full = label_videos(model, videos, cfg, pool=pool, threshold=0.5, open_reader=full_frames)
    for a, b in zip(reduced, full, strict=True):
        assert a.exit_step == b.exit_step and torch.equal(a.scores, b.scores)


def test_a_video_over_the_idle_budget_releases_its_decoder_and_stays_exact(tmp_path) -> None:
    clip = write_clip(str(tmp_path / "c.mp4"), num_frames=60, gop=12, bframes=2)
    reference = decode_all(clip)
    order = [59, 0, 30, 15, 45, 7, 22, 37, 52, 31]
    with open_video(clip, idle_decoder_bytes=1) as video:
        video.plan(order)
        decoder = video._decoder
        assert not decoder.holds_sessions
        for i in order:
            assert np.array_equal(video.get([i])[0], reference[i])
            assert decoder._s is None and not decoder._parked
    with open_video(clip) as video:  # a small video keeps its session between reads
        video.get([3])
        assert video._decoder.holds_sessions and video._decoder._s is not None


def test_the_actor_memory_estimate_counts_decode_buffers_and_model_size_frames() -> None:
    options = DecodeOptions(max_pixels=4096 * 4096, idle_decoder_bytes=64 * 2**20)
    base = dict(weights_bytes=10 * 2**20, videos_in_flight=128, decode_threads=8,
                decode=options, image_size=224, clip_length=1, num_steps=10)  # fmt: skip
    total = labeling_memory_bytes(**base)
    pixels = 4096 * 4096
    per_thread = session_bytes(pixels, 1, 1) + 6 * pixels
    per_video = 10 * 256 * 256 * 3 + 64 * 2**20
    inputs = 4 * 128 * 3 * 224 * 224 * 4
    assert total == 512 * 2**20 + 2 * 10 * 2**20 + 128 * per_video + 8 * per_thread + inputs
    # the 4K frames a thread decodes are counted, not the model-input size only
    vga = 640 * 480  # its 3 sessions fit the idle budget: counted as they are
    smaller = labeling_memory_bytes(**{**base, "decode": options.replace(max_pixels=vga)})
    vga_video = 10 * 256 * 256 * 3 + 3 * session_bytes(vga, 1, 1)
    vga_thread = session_bytes(vga, 1, 1) + 6 * vga
    assert total - smaller == 128 * (per_video - vga_video) + 8 * (per_thread - vga_thread)
    assert total > 10 * 2**30  # the old estimate said ~3 GB for this batch
    # frames kept per video do not depend on the source: one more step adds 256² · 3 each
    more = labeling_memory_bytes(**{**base, "num_steps": 11})
    assert more - total == 128 * 256 * 256 * 3


# ----------------------------------------------------------------------------- timeouts


def _free_boxes(path: Path, megabytes: int) -> str:
    path.write_bytes(struct.pack(">I4s", 8, b"free") * (megabytes * 2**20 // 8))
    return str(path)


def _decode_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "frameexit-decode" and t.is_alive()}


def test_a_timeout_stops_the_work_on_a_file_of_8_byte_boxes(tmp_path) -> None:
    path = _free_boxes(tmp_path / "free.mp4", 16)
    before = _decode_threads()
    start = time.monotonic()
    with pytest.raises(VideoDecodeError) as error:
        open_video(path, timeout_s=0.02)  # well before the box walk's own bound
    assert error.value.kind == "timeout"
    timed_out = time.monotonic()
    assert timed_out - start < 1.5
    while _decode_threads() - before and time.monotonic() - timed_out < 1.0:
        time.sleep(0.01)
    assert not _decode_threads() - before, "the decode thread kept running after the timeout"


def test_a_file_of_8_byte_boxes_is_refused_without_a_timeout(tmp_path) -> None:
    path = _free_boxes(tmp_path / "free.mp4", 16)
    start = time.monotonic()
    with pytest.raises(VideoDecodeError) as error:
        open_video(path, timeout_s=None)
    assert error.value.kind == "unreadable" and "boxes" in str(error.value)
    assert time.monotonic() - start < 30  # was minutes: a file opened for each 16 bytes


def test_the_diagnosis_of_many_boxes_reads_one_handle(tmp_path) -> None:
    path = _free_boxes(tmp_path / "free.mp4", 1)  # 131,072 boxes, no moov: FFmpeg fails
    with pytest.raises(VideoDecodeError) as error:
        open_video(path, timeout_s=None)
    assert error.value.kind == "truncated" and "moov" in str(error.value)


def test_a_cancelled_source_stops_reading(tmp_path) -> None:
    clip = write_clip(str(tmp_path / "c.mp4"), num_frames=4)
    cancel = threading.Event()
    source = Source(clip, cancel=cancel)
    assert len(source.read_at(0, 16)) == 16
    cancel.set()
    with pytest.raises(Cancelled):
        source.read_at(0, 16)
    source.close()
    assert classify_failure(clip, Cancelled()).kind == "timeout"
