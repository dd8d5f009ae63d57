"""The paper's Fig. 7 for one video: its T policy frames in step order, those the model
processed (steps 1..exit step) framed in green, the rest dimmed, and the answer written
above the strip::

    ┌──────────────────────────────────────────────────────────────┐
    │ label (score) · exit at step 3 of 6 · 3 frames · 1.2 GFLOPs   │  header
    │ ┏━━━━┓ ┏━━━━┓ ┏━━━━┓ ┌────┐ ┌────┐ ┌────┐                    │
    │ ┃ t1 ┃ ┃ t2 ┃ ┃ t3 ┃ │dim │ │dim │ │dim │                    │  tiles
    │ ┗━━━━┛ ┗━━━━┛ ┗━━━━┛ └────┘ └────┘ └────┘                    │
    │  #12    #3     #21    #7     #17    #0                       │  frame indices
    └──────────────────────────────────────────────────────────────┘

:func:`tile_boxes` says where each tile's pixels are (tests and anyone cropping them).
Drawn with Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TILE = 128  # pixels of a tile's frame (a square)
BORDER = 4  # the frame drawn around a tile
GAP = 8  # between tiles and around the strip
HEADER = 30  # the text line above the tiles
FOOTER = 18  # the frame indices below them
PROCESSED = (30, 190, 60)  # green frame: a step the model ran
SKIPPED = (110, 110, 110)  # grey frame: a step after the exit
BACKGROUND = (255, 255, 255)
DIM = 0.3  # brightness kept by a skipped step's frame


def tile_boxes(num_steps: int, tile: int = TILE) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of every tile's frame pixels (inside its border),
    in step order."""
    boxes = []
    for t in range(num_steps):
        left = GAP + t * (tile + 2 * BORDER + GAP) + BORDER
        top = HEADER + BORDER
        boxes.append((left, top, left + tile, top + tile))
    return boxes


def strip_size(num_steps: int, tile: int = TILE) -> tuple[int, int]:
    """``(width, height)`` of the strip of ``num_steps`` tiles."""
    width = GAP + num_steps * (tile + 2 * BORDER + GAP)
    return width, HEADER + tile + 2 * BORDER + FOOTER


def _square(frame: np.ndarray, tile: int):
    """The centred square of an ``[H, W, 3]`` uint8 frame, resized to ``tile``."""
    from PIL import Image

    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(frame[top : top + side, left : left + side, :3])
    return Image.fromarray(square).resize((tile, tile), Image.Resampling.BILINEAR)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def render_strip(
    frames: Sequence[np.ndarray] | np.ndarray,
    exit_step: int,
    title: str,
    *,
    frame_indices: Sequence[int] | None = None,
    tile: int = TILE,
):
    """A ``PIL.Image`` of Fig. 7: ``frames`` (uint8 ``[H, W, 3]``, one per step in step
    order), steps ``1..exit_step`` framed as processed, the others dimmed; ``title`` (the
    label, the exit step, ...) above; each step's file frame index below."""
    from PIL import Image, ImageDraw

    steps = len(frames)
    if not 0 <= exit_step <= steps:
        raise ValueError(f"exit_step {exit_step} is not in 0..{steps}")
    image = Image.new("RGB", strip_size(steps, tile), BACKGROUND)
    draw = ImageDraw.Draw(image)
    small = _font(12)
    for t, (frame, box) in enumerate(zip(frames, tile_boxes(steps, tile), strict=True)):
        picture = _square(np.asarray(frame), tile)
        processed = t < exit_step
        if not processed:
            dimmed = np.asarray(picture, dtype=np.float32) * DIM + 255 * (1 - DIM) * 0.15
            picture = Image.fromarray(dimmed.clip(0, 255).astype(np.uint8))
        image.paste(picture, box[:2])
        left, top, right, bottom = box
        draw.rectangle(
            (left - BORDER, top - BORDER, right + BORDER - 1, bottom + BORDER - 1),
            outline=PROCESSED if processed else SKIPPED,
            width=BORDER,
        )
        draw.text((left + 3, top + 2), f"t{t + 1}", fill=(255, 255, 255), font=small)
        if frame_indices is not None:
            draw.text((left, bottom + BORDER + 2), f"#{frame_indices[t]}", fill=(0, 0, 0),
                      font=small)  # fmt: skip
    draw.text((GAP, 7), title, fill=(0, 0, 0), font=_font(15))
    return image


def write_strip(
    path: str,
    frames: Sequence[np.ndarray] | np.ndarray,
    exit_step: int,
    title: str,
    *,
    frame_indices: Sequence[int] | None = None,
    tile: int = TILE,
) -> str:
    """:func:`render_strip` saved as a PNG at the local ``path``; returns ``path``."""
    image = render_strip(frames, exit_step, title, frame_indices=frame_indices, tile=tile)
    image.save(path, format="PNG")
    return path
