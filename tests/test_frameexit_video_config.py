"""The decode settings of ``data.*``: validation naming the field, and what the labeling
opener and frame source do with them (fetch mode, threshold, the steps' plan)."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np
import pytest

from frameexit.config import load_config
from frameexit.errors import ConfigError
from frameexit.testing.clips import decode_all, write_clip
from frameexit.video import VideoDecodeError


@pytest.mark.parametrize(
    "override,field",
    [
        ("data.decode_fetch=chunks", "data.decode_fetch"),
        ("data.decode_range_min_bytes=0", "data.decode_range_min_bytes"),
        ("data.decode_backend=opencv", "data.decode_backend"),
    ],
)
def test_bad_decode_settings_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.field == field


def test_decord_cannot_read_ranges() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.decode_backend=decord", "data.decode_fetch=ranges"])
    assert info.value.field == "data.decode_fetch"


def test_video_decode_error_is_one_class() -> None:
    from frameexit import errors

    assert VideoDecodeError is errors.VideoDecodeError


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("cfg") / "long.mp4")
    return write_clip(path, num_frames=300, width=160, height=120, options={"bf": "3", "g": "40"})


@pytest.mark.parametrize(
    "overrides,fetch", [([], "whole"), (["data.decode_range_min_bytes=1"], "ranges")]
)
def test_reader_opener_uses_the_fetch_settings(long_clip: str, overrides, fetch: str) -> None:
    """A 200 kB object: under the default threshold it is read whole, over a lower one by
    ranges; the frames are the same."""
    from frameexit.inference import reader_opener

    uri = f"memory://fe-cfg-{fetch}/long.mp4"
    fsspec.filesystem("memory").put_file(long_clip, uri)
    ref = decode_all(long_clip)
    with reader_opener(load_config(None, overrides))(uri) as video:
        assert video.stats["fetch"] == fetch
        np.testing.assert_array_equal(video.get([150, 299]), ref[[150, 299]])


def test_frame_source_plans_every_videos_steps(long_clip: str) -> None:
    """``BatchFrameSource`` tells each reader its T step indices when it opens it."""
    from frameexit.inference import BatchFrameSource, VideoRequest, reader_opener

    cfg = load_config(None, ["model.backbone=tiny", "model.num_steps=6"])
    with ThreadPoolExecutor(2) as pool:
        source = BatchFrameSource(
            [VideoRequest(long_clip)], cfg, open_reader=reader_opener(cfg), pool=pool
        )
        try:
            source.open()
            video = source.videos[0]
            assert len(video.indices) == 6
            assert video.reader._decoder._plan == collections.Counter(video.indices)
        finally:
            source.close()
