"""Class signatures: the shape × colour × texture patch that identifies each class.

Signatures depend on the number of classes only (never on a seed), so corpora made with
different seeds share their classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np

__all__ = ["COLOURS", "SHAPES", "TEXTURES", "Signature", "class_signatures", "signature_patch"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 215, 40),
    "magenta": (215, 50, 215),
    "cyan": (40, 210, 225),
    "orange": (245, 135, 25),
}
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker")


@dataclass(frozen=True)
class Signature:
    """The look of one class: ``shape`` filled with ``colour`` in ``texture``."""

    name: str
    shape: str
    colour: str
    texture: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as 8-bit RGB."""
        return COLOURS[self.colour]


@lru_cache(maxsize=16)
def class_signatures(num_classes: int) -> tuple[Signature, ...]:
    """The signatures of classes ``0..num_classes-1`` (independent of any seed).

    Chosen greedily so each new class differs from every earlier one in as many of the
    three attributes as possible (ties: the least-used attribute values first). Names
    are ``NN_colour_shape_texture``, zero-padded so sorting names keeps class order.
    """
    combos = np.array(list(product(range(len(SHAPES)), range(len(COLOURS)), range(len(TEXTURES)))))
    if not 1 <= num_classes <= len(combos):
        raise ValueError(f"num_classes must be in 1..{len(combos)}, got {num_classes}")
    distance = np.full(len(combos), 3)  # to the nearest chosen class, in attributes
    usage = np.zeros(len(combos), dtype=np.int64)  # how often its values are already used
    taken = np.zeros(len(combos), dtype=bool)
    chosen: list[tuple[int, int, int]] = []
    for _ in range(num_classes):
        score = np.where(taken, -(10**9), distance * 10**6 - usage)
        best = combos[int(np.argmax(score))]  # first best in product order
        chosen.append((int(best[0]), int(best[1]), int(best[2])))
        taken |= (combos == best).all(axis=1)
        distance = np.minimum(distance, (combos != best).sum(axis=1))
        usage += (combos == best).sum(axis=1)
    width = len(str(num_classes - 1))
    colour_names = list(COLOURS)
    return tuple(
        Signature(
            name=f"{k:0{width}d}_{colour_names[c]}_{SHAPES[s]}_{TEXTURES[t]}",
            shape=SHAPES[s],
            colour=colour_names[c],
            texture=TEXTURES[t],
        )
        for k, (s, c, t) in enumerate(chosen)
    )


@lru_cache(maxsize=512)
def signature_patch(
    shape: str, rgb: tuple[int, int, int], texture: str, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb float32 [s, s, 3], alpha float32 [s, s])`` with anti-aliased edges.

    Cached (one class at one size is drawn many times), so callers must not change the
    returned arrays in place.
    """
    sub = 2 * size  # 2× supersampling for the shape edge
    coords = (np.arange(sub, dtype=np.float32) + 0.5) / sub * 2.0 - 1.0
    v, u = np.meshgrid(coords, coords, indexing="ij")  # v: down, u: right, in [-1, 1]
    r = np.sqrt(u * u + v * v)
    if shape == "circle":
        inside = r <= 0.92
    elif shape == "square":
        inside = (np.abs(u) <= 0.78) & (np.abs(v) <= 0.78)
    elif shape == "triangle":
        inside = (v <= 0.8) & (v >= -0.9 + 2 * np.abs(u) * 1.0) & (np.abs(u) <= 0.95)
    elif shape == "diamond":
        inside = np.abs(u) + np.abs(v) <= 0.98
    elif shape == "cross":
        inside = ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (
            np.maximum(np.abs(u), np.abs(v)) <= 0.92
        )
    elif shape == "ring":
        inside = (r <= 0.95) & (r >= 0.5)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    alpha = inside.astype(np.float32).reshape(size, 2, size, 2).mean(axis=(1, 3))
    pix = (np.arange(size, dtype=np.float32) + 0.5) / size
    py, px = np.meshgrid(pix, pix, indexing="ij")
    if texture == "solid":
        light = np.ones((size, size), np.float32)
    elif texture == "stripes":  # diagonal stripes, ~4.5 periods across the patch
        light = np.where(((px + py) * 4.5) % 1.0 < 0.5, 1.0, 0.35).astype(np.float32)
    elif texture == "checker":  # 5 × 5 cells
        light = np.where((np.floor(px * 5) + np.floor(py * 5)) % 2 == 0, 1.0, 0.35)
        light = light.astype(np.float32)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    colour = np.asarray(rgb, np.float32)
    return light[..., None] * colour, alpha
