"""Early-exit labeling's device path (``frameexit.inference``) on CPU: what each part
changes must not change an answer — decoding step t+1 ahead, channels_last, bf16."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from frameexit.config import load_config
from frameexit.errors import ConfigError
from frameexit.inference import (
    DevicePlan,
    VideoRequest,
    device_plan,
    label_videos,
    prepare_model,
)
from frameexit.model import build_model
from frameexit.video import open_video

STEPS = 4


def _cfg(*overrides: str):
    return load_config(None, ["model.backbone=tiny", "model.num_classes=3",
                              f"model.num_steps={STEPS}", "model.image_size=32",
                              "model.feature_dim=32", *overrides])  # fmt: skip


def _model(cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


def _run(model, cfg, videos, plan=None, **kwargs) -> tuple[list[Any], dict[str, int]]:
    stats: dict[str, int] = {}
    with ThreadPoolExecutor(2) as pool:
        out = label_videos(model, [VideoRequest(v) for v in videos], cfg, pool=pool, plan=plan,
                           stats=stats, **kwargs)  # fmt: skip
    return out, stats


def test_the_device_plan_follows_the_device_unless_told() -> None:
    cpu = device_plan(_cfg(), "cpu")
    assert (cpu.autocast_dtype, cpu.channels_last, cpu.pin_memory, cpu.prefetch_next_step) == (
        None, False, False, False,
    )  # fmt: skip
    gpu = device_plan(_cfg(), "cuda")  # a plan only: no GPU is touched
    assert gpu.autocast_dtype is torch.bfloat16 and gpu.channels_last and gpu.pin_memory
    assert gpu.prefetch_next_step
    told = device_plan(
        _cfg("label.precision=fp32", "label.channels_last=false", "label.prefetch_next_step=false"),
        "cuda",
    )
    assert told.autocast_dtype is None and not told.channels_last and not told.prefetch_next_step
    forced = device_plan(_cfg("label.precision=bf16", "label.prefetch_next_step=true"), "cpu")
    assert forced.autocast_dtype is torch.bfloat16 and forced.prefetch_next_step
    assert not forced.pin_memory  # pinned memory needs CUDA


@pytest.mark.parametrize(
    ("override", "field"),
    [("label.precision=fp16", "label.precision"), ("label.channels_last=2", "label.channels_last"),
     ("label.prefetch_next_step=sometimes", "label.prefetch_next_step")],
)  # fmt: skip
def test_bad_device_settings_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        _cfg(override)
    assert error.value.field == field


def test_decoding_the_next_step_ahead_changes_no_answer(tiny_corpus) -> None:
    cfg = _cfg()
    model = _model(cfg)
    videos = tiny_corpus.table["video"].tolist()
    # a threshold that lets some videos exit at every step and keeps others to T
    plain, _ = _run(model, cfg, videos, threshold=0.5)
    ahead, stats = _run(model, cfg, videos, DevicePlan(torch.device("cpu"), prefetch_next_step=True),
                        threshold=0.5)  # fmt: skip
    for a, b in zip(plain, ahead, strict=True):
        assert a.ok and b.ok
        assert (a.exit_step, a.frames_decoded) == (b.exit_step, b.frames_decoded)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    # each video that exited before T was decoded one step ahead for nothing
    assert stats["frames_ahead_unused"] == sum(o.exit_step < STEPS for o in plain)
    assert stats["frames_ahead_unused"] > 0


class _FailsAtSecondRead:
    """A real reader whose second ``get`` fails (a video damaged after its first frame)."""

    def __init__(self, reader: Any) -> None:
        self.reader, self.reads = reader, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)

    def get(self, indices):
        self.reads += 1
        if self.reads >= 2:
            raise ValueError("damaged packet")
        return self.reader.get(indices)

    def close(self) -> None:
        self.reader.close()


def test_a_step_decoded_ahead_fails_only_the_video_that_reaches_it(tiny_corpus) -> None:
    cfg = _cfg()
    model = _model(cfg)
    videos = tiny_corpus.table["video"].tolist()[:3]
    def open_reader(uri: str) -> Any:
        reader = open_video(uri, cfg.data.decode)
        return _FailsAtSecondRead(reader) if uri == videos[0] else reader

    plan = DevicePlan(torch.device("cpu"), prefetch_next_step=True)
    # threshold 0: everything exits at step 1, so the failed step-2 read is never used
    exited, stats = _run(model, cfg, videos, plan, threshold=0.0, open_reader=open_reader)
    assert all(o.ok and o.exit_step == 1 for o in exited)
    assert stats["frames_ahead_unused"] == 3
    # threshold above 1: nothing exits early, so video 0 meets its damaged step
    kept, _ = _run(model, cfg, videos, plan, threshold=1.1, open_reader=open_reader)
    assert not kept[0].ok and kept[0].error.kind == "unreadable"
    assert "damaged packet" in kept[0].error.reason
    assert kept[1].ok and kept[2].ok and kept[1].exit_step == STEPS


def test_channels_last_and_bf16_keep_the_answers(tiny_corpus) -> None:
    cfg = _cfg()
    videos = tiny_corpus.table["video"].tolist()
    reference, _ = _run(_model(cfg), cfg, videos, exit=False)

    plan = DevicePlan(torch.device("cpu"), channels_last=True)
    model = prepare_model(_model(cfg), plan)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    last, _ = _run(model, cfg, videos, plan, exit=False)
    for a, b in zip(reference, last, strict=True):
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)

    plan = device_plan(_cfg("label.precision=bf16"), "cpu")
    half, _ = _run(prepare_model(_model(cfg), plan), cfg, videos, plan, exit=False)
    for a, b in zip(reference, half, strict=True):
        assert b.scores.dtype == torch.float32  # answers leave autocast in full precision
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0.03)
