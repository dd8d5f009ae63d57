"""frames_to_tensor: geometry, normalisation, the shared crop/flip of one call, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frameexit.transforms import frames_to_tensor, resize_size

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def random_frames(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, S, S] normalised → 0..255 pixel values."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x * std + mean) * 255


def test_resize_size_is_the_256_over_224_convention() -> None:
    assert resize_size(224) == 256
    assert resize_size(112) == 128
    assert resize_size(160) == 183


@pytest.mark.parametrize("hw", [(90, 160), (160, 90), (64, 64), (480, 640)])
def test_frame_shapes(hw: tuple[int, int]) -> None:
    out = frames_to_tensor(random_frames(5, *hw), image_size=56, mean=MEAN, std=STD)
    assert out.shape == (5, 3, 56, 56) and out.dtype == torch.float32 and out.is_contiguous()


def test_clip_shapes_put_channels_before_time() -> None:
    clips = random_frames(2, 4, 40, 60)
    out = frames_to_tensor(clips, image_size=32, mean=MEAN, std=STD)
    assert out.shape == (2, 3, 4, 32, 32)
    # clip j's frame i is the same as transforming that frame alone (eval is deterministic)
    single = frames_to_tensor(clips[1, 2][None], image_size=32, mean=MEAN, std=STD)
    assert torch.allclose(out[1, :, 2], single[0])


def test_empty_input() -> None:
    assert frames_to_tensor(random_frames(0, 20, 30), image_size=16, mean=MEAN, std=STD).shape == (
        0,
        3,
        16,
        16,
    )


def test_normalisation_of_a_constant_frame() -> None:
    frames = np.empty((2, 50, 70, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 10, 128, 250
    out = frames_to_tensor(frames, image_size=32, mean=MEAN, std=STD)
    for c, value in enumerate((10, 128, 250)):
        expected = (value / 255 - MEAN[c]) / STD[c]
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], expected), atol=1e-5)


def test_eval_is_an_exact_centre_crop_when_no_resize_is_needed() -> None:
    # shorter side already resize_size(112) = 128: only the centre crop remains
    frames = random_frames(3, 128, 200)
    out = frames_to_tensor(frames, image_size=112, mean=MEAN, std=STD)
    top, left = (128 - 112) // 2, (200 - 112) // 2
    expected = torch.from_numpy(frames[:, top : top + 112, left : left + 112]).permute(0, 3, 1, 2)
    assert torch.allclose(unnormalise(out), expected.float(), atol=1e-3)


def test_resize_matches_a_float_antialiased_reference() -> None:
    rng = np.random.default_rng(1)
    smooth = F.interpolate(
        torch.from_numpy(rng.random((1, 3, 12, 16))), size=(240, 320), mode="bilinear"
    )
    frames = (smooth * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = unnormalise(frames_to_tensor(frames, image_size=56, mean=MEAN, std=STD))
    short = resize_size(56)
    ref = F.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float(),
        size=(short, round(320 * short / 240)),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    top, left = (ref.shape[-2] - 56) // 2, (ref.shape[-1] - 56) // 2
    ref = ref[..., top : top + 56, left : left + 56]
    assert (out - ref).abs().max() <= 1.01  # uint8 rounding only


def test_train_crops_are_deterministic_with_a_generator() -> None:
    frames = random_frames(3, 100, 150)

    def run(seed: int) -> torch.Tensor:
        return frames_to_tensor(
            frames,
            image_size=64,
            mean=MEAN,
            std=STD,
            train=True,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(7), run(7))
    assert any(not torch.equal(run(7), run(seed)) for seed in range(8, 14))
    # eval ignores the generator
    a = frames_to_tensor(
        frames, image_size=64, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(1)
    )
    b = frames_to_tensor(frames, image_size=64, mean=MEAN, std=STD)
    assert torch.equal(a, b)


def test_one_crop_and_flip_for_all_frames_of_a_call() -> None:
    # frame i = base + i (no resize: shorter side 128 = resize_size(112)), so with a shared
    # crop and flip, frame i − frame 0 is exactly i grey levels everywhere
    base = random_frames(1, 128, 160)[0].clip(0, 240)
    frames = np.stack([base + i for i in range(6)]).astype(np.uint8)
    for seed in range(6):
        out = unnormalise(
            frames_to_tensor(
                frames,
                image_size=112,
                mean=MEAN,
                std=STD,
                train=True,
                generator=torch.Generator().manual_seed(seed),
            )
        )
        for i in range(6):
            assert torch.allclose(out[i] - out[0], torch.full_like(out[0], float(i)), atol=1e-3)


def test_train_flips_horizontally_about_half_the_time() -> None:
    ramp = np.tile(np.arange(160, dtype=np.uint8)[None, :, None], (128, 1, 3))[None]
    directions = set()
    for seed in range(20):
        out = frames_to_tensor(
            ramp,
            image_size=112,
            mean=MEAN,
            std=STD,
            train=True,
            generator=torch.Generator().manual_seed(seed),
        )
        row = out[0, 0, 0]
        directions.add(bool(row[-1] > row[0]))
    assert directions == {True, False}


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(np.zeros((1, 8, 8, 3), np.float32), image_size=4, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match=r"\[n, H, W, 3\]"):
        frames_to_tensor(np.zeros((1, 8, 8, 4), np.uint8), image_size=4, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="3 values"):
        frames_to_tensor(np.zeros((1, 8, 8, 3), np.uint8), image_size=4, mean=(0.5,), std=STD)
