"""The decode settings of ``data.*``: validation naming the field, and what the labeling
opener and frame source do with them (fetch mode, threshold, the steps' plan)."""

from __future__ import annotations

import collections
import dataclasses
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
        ("data.decode.fetch=chunks", "data.decode.fetch"),
        ("data.decode.range_min_bytes=0", "data.decode.range_min_bytes"),
        ("data.decode.backend=opencv", "data.decode.backend"),
    ],
)
def test_bad_decode_settings_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.field == field


def test_decord_cannot_read_ranges() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.decode.backend=decord", "data.decode.fetch=ranges"])
    assert info.value.field == "data.decode.fetch"


def test_video_decode_error_is_one_class() -> None:
    from frameexit import errors

    assert VideoDecodeError is errors.VideoDecodeError


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("cfg") / "long.mp4")
    return write_clip(path, num_frames=300, width=160, height=120, options={"bf": "3", "g": "40"})


@pytest.mark.parametrize(
    "overrides,fetch", [([], "whole"), (["data.decode.range_min_bytes=1"], "ranges")]
)
def test_the_configs_decode_options_set_the_fetch(long_clip: str, overrides, fetch: str) -> None:
    """A 200 kB object: under the default threshold it is read whole, over a lower one by
    ranges; the frames are the same."""
    from frameexit.video import open_video

    uri = f"memory://fe-cfg-{fetch}/long.mp4"
    fsspec.filesystem("memory").put_file(long_clip, uri)
    ref = decode_all(long_clip)
    with open_video(uri, load_config(None, overrides).data.decode) as video:
        assert video.stats["fetch"] == fetch
        np.testing.assert_array_equal(video.get([150, 299]), ref[[150, 299]])


def test_frame_source_plans_every_videos_steps(long_clip: str) -> None:
    """``BatchFrameSource`` tells each reader its T step indices when it opens it."""
    from frameexit.inference import BatchFrameSource, VideoRequest

    cfg = load_config(None, ["model.backbone=tiny", "model.num_steps=6"])
    with ThreadPoolExecutor(2) as pool:
        source = BatchFrameSource(
            [VideoRequest(long_clip)], cfg, pool=pool
        )
        try:
            source.open()
            video = source.videos[0]
            assert len(video.indices) == 6
            assert video.reader._decoder._plan == collections.Counter(video.indices)
        finally:
            source.close()


@pytest.mark.parametrize(
    "legacy,field,value",
    [
        ("data.decode_backend=pyav", "backend", "pyav"),
        ("data.decode_fetch=whole", "fetch", "whole"),
        ("data.decode_timeout_s=7", "timeout_s", 7.0),
        ("data.decode_range_min_bytes=4096", "range_min_bytes", 4096),
        ("data.max_video_bytes=1000", "max_bytes", 1000),
    ],
)
def test_earlier_flat_decode_names_still_work(legacy: str, field: str, value) -> None:
    """Configs, checkpoints and commands written before ``data.decode`` existed."""
    cfg = load_config(None, [legacy])
    assert getattr(cfg.data.decode, field) == value
    # a recorded config (YAML mapping) in the old names reads the same
    from frameexit.config import config_from_dict

    key = legacy.split("=")[0].split(".")[1]
    recorded = config_from_dict({"data": {key: value}})
    assert getattr(recorded.data.decode, field) == value
    # the old name given with a bad value names the field as it is called now
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.decode_fetch=chunks"])
    assert info.value.field == "data.decode.fetch"


def test_decode_options_check_themselves_once() -> None:
    """``DecodeOptions`` is frozen and checked when made; ``open_video`` and a config use
    the same checks (the config names the field under ``data.``)."""
    from frameexit.video import DecodeOptions, open_video

    options = DecodeOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.backend = "decord"  # type: ignore[misc]
    for bad, name in [
        ({"backend": "opencv"}, "decode.backend"),
        ({"fetch": "chunks"}, "decode.fetch"),
        ({"timeout_s": 0}, "decode.timeout_s"),
        ({"range_min_bytes": 0}, "decode.range_min_bytes"),
        ({"threads": 0}, "decode.threads"),
        ({"backend": "decord", "fetch": "ranges"}, "decode.fetch"),
    ]:
        with pytest.raises(ConfigError) as info:
            DecodeOptions(**bad)
        assert info.value.field == name
        with pytest.raises(ValueError):  # ConfigError is a ValueError
            open_video("never-opened.mp4", **bad)
    assert DecodeOptions(backend="decord").source_fetch == "whole"
    assert DecodeOptions(backend="pyav").source_fetch == "auto"
    cfg = load_config(None, ["data.decode.timeout_s=9"])
    assert cfg.data.decode == DecodeOptions(timeout_s=9.0, max_bytes=8 * 1024**3)
