"""Decoded frames (uint8 HWC arrays) → normalised network input, one batched call per video.

::

    uint8 [n, H, W, 3]  (or clips [n, k, H, W, 3])
      │ resize shorter side to round(S·256/224) ≈ S·1.14   (bilinear, antialiased, on uint8)
      │ crop S×S: centre (eval) | random + horizontal flip (train; one draw per call,
      │ so every frame/clip of a video gets the same crop and flip)
      │ /255, (x − mean)/std
      ▼
    float32 [n, 3, S, S]  (or [n, 3, k, S, S])

All frames of a call are resized together with ``torch.nn.functional.interpolate`` on the
uint8 tensor (its fast antialiased path), and converted to float only after cropping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Shorter-side resize relative to the crop: the ImageNet convention 256 → 224.
RESIZE_RATIO = 256 / 224


def resize_size(image_size: int) -> int:
    """Shorter side after resizing, before an ``image_size`` crop (224 → 256, 112 → 128)."""
    return int(round(image_size * RESIZE_RATIO))


def _channel_stats(values: Sequence[float], what: str) -> Tensor:
    stats = torch.as_tensor(tuple(values), dtype=torch.float32)
    if stats.shape != (3,):
        raise ValueError(f"{what} must have 3 values (RGB), got {tuple(values)}")
    return stats.view(1, 3, 1, 1)


def frames_to_tensor(
    frames: np.ndarray,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = False,
    generator: torch.Generator | None = None,
    view: tuple[int, int] = (0, 1),
) -> Tensor:
    """uint8 frames ``[n, H, W, 3]`` → float ``[n, 3, S, S]``; clips ``[n, k, H, W, 3]`` →
    ``[n, 3, k, S, S]``.

    Eval: resize the shorter side to :func:`resize_size` and crop S×S: the centre, or with
    ``view = (i, V)`` the i-th of V crops spread evenly along the longer side (V = 3: the
    usual left / centre / right protocol). Train: a random S×S crop of the resized frames
    and a horizontal flip with probability 1/2, drawn once per call from ``generator``
    (the global RNG when None) so all n frames share them.
    """
    array = np.asarray(frames)
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {array.dtype}")
    if array.ndim not in (4, 5) or array.shape[-1] != 3:
        raise ValueError(
            f"frames must be [n, H, W, 3] or clips [n, k, H, W, 3], got {list(array.shape)}"
        )
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    lead = array.shape[:-3]
    height, width = array.shape[-3:-1]
    mean_t, std_t = _channel_stats(mean, "mean"), _channel_stats(std, "std")
    size = image_size
    if array.size == 0:
        return torch.zeros(*lead[:1], 3, *lead[1:], size, size)

    x = torch.from_numpy(np.ascontiguousarray(array)).reshape(-1, height, width, 3)
    x = x.permute(0, 3, 1, 2)  # [N, 3, H, W], channels-last memory (fast uint8 resize)
    short = resize_size(size)
    if height <= width:
        new_h, new_w = short, max(short, int(round(width * short / height)))
    else:
        new_h, new_w = max(short, int(round(height * short / width))), short
    if (new_h, new_w) != (height, width):
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )

    flip = False
    if train:
        top = int(torch.randint(0, new_h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, new_w - size + 1, (1,), generator=generator))
        flip = bool(torch.rand((1,), generator=generator) < 0.5)
    else:
        top, left = (new_h - size) // 2, (new_w - size) // 2
        index, views = view
        if views > 1:  # spread the crops along the longer side (centre one = the default)
            span_h, span_w = new_h - size, new_w - size
            if span_w >= span_h:
                left = round(index * span_w / (views - 1))
            else:
                top = round(index * span_h / (views - 1))
    x = x[:, :, top : top + size, left : left + size]
    if flip:
        x = x.flip(-1)
    out = (x.float().div_(255.0) - mean_t).div_(std_t)
    if len(lead) == 2:  # clips: [n·k, 3, S, S] → [n, 3, k, S, S]
        out = out.reshape(lead[0], lead[1], 3, size, size).permute(0, 2, 1, 3, 4)
    return out.contiguous()
