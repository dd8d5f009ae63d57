"""Class signatures: the shape × colour × texture patch that identifies each class, and
the sub-signature *cues* that complementary classes are made of.

A single-cue class is one :class:`Signature`, decisive in any frame that shows it. A
complementary class (:class:`ComplementaryClass`) is a monochrome *shape cue* alone, or a
shape cue plus a *colour cue* (three bars in one colour), each drawn in its own segments;
every cue belongs to several classes (see :func:`complementary_family`). Both depend on
the number of classes only (never on a seed), so corpora made with different seeds share
their classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np

__all__ = [
    "COLOURS",
    "CUE_SHAPES",
    "SHAPES",
    "TEXTURES",
    "ComplementaryClass",
    "Signature",
    "class_signatures",
    "complementary_family",
    "corpus_classes",
    "cue_patch",
    "signature_patch",
]

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
# The shape cues of complementary classes: two silhouettes far apart (drawn monochrome).
CUE_SHAPES: tuple[str, ...] = ("circle", "cross")
_CUE_LEVELS = (235.0, 25.0)  # the shape cue's black-and-white checker (nothing else is)


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


@dataclass(frozen=True)
class ComplementaryClass:
    """A class identified by cues in separate frames: the shape cue ``shape`` (a
    black-and-white checkered silhouette) and, unless ``colour`` is None, the colour cue
    ``colour`` (three bars in that colour). With ``colour`` None the class is the shape
    cue *without* any colour cue, so telling it from its pair classes needs the absence
    of a cue over many frames."""

    name: str
    shape: str
    colour: str | None = None

    @property
    def cues(self) -> tuple[str, ...]:
        """What its evidence segments draw: ``shape:<shape>`` then ``colour:<colour>``."""
        return (f"shape:{self.shape}",) + ((f"colour:{self.colour}",) if self.colour else ())


def complementary_family(num_classes: int, count: int) -> tuple[ComplementaryClass, ...]:
    """The ``count`` complementary classes that close a corpus of ``num_classes``.

    ``count`` must be 0 or even in 4..2 × (len(COLOURS) + 1): with C = count, the two
    shape cues of :data:`CUE_SHAPES` and the first C/2 − 1 colours give, per shape, one
    shape-only class and one pair class per colour. So every shape cue belongs to C/2
    classes and every colour cue to 2: no single cue frame decides the class, and the
    shape-only classes (the class most frames of a pair video look like) are told apart
    only by whether a colour cue appears anywhere. Class ids follow the single-cue ones.
    """
    if count == 0:
        return ()
    limit = 2 * (len(COLOURS) + 1)
    if count % 2 or not 4 <= count <= min(limit, num_classes):
        raise ValueError(
            f"complementary_classes must be 0 or even in 4..{min(limit, num_classes)} "
            f"(and <= num_classes = {num_classes}), got {count}"
        )
    width = len(str(num_classes - 1))
    first = num_classes - count
    colours = list(COLOURS)[: count // 2 - 1]
    members = [(shape, colour) for shape in CUE_SHAPES for colour in (None, *colours)]
    return tuple(
        ComplementaryClass(
            name=f"{first + i:0{width}d}_cue_{shape}" + (f"_{colour}" if colour else ""),
            shape=shape,
            colour=colour,
        )
        for i, (shape, colour) in enumerate(members)
    )


def corpus_classes(
    num_classes: int, complementary: int = 0
) -> tuple[Signature | ComplementaryClass, ...]:
    """Every class of a corpus by id: ``num_classes − complementary`` single-cue
    signatures (those of :func:`class_signatures`, whose choice is prefix-stable), then
    the complementary family. ``complementary=0`` is exactly ``class_signatures``."""
    family = complementary_family(num_classes, complementary)
    return class_signatures(num_classes)[: num_classes - len(family)] + family


@lru_cache(maxsize=256)
def cue_patch(cue: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb float32 [s, s, 3], alpha float32 [s, s])`` of a cue (``shape:<name>`` or
    ``colour:<name>``). Cached like :func:`signature_patch`: do not change the arrays."""
    kind, _, value = cue.partition(":")
    pix = (np.arange(size, dtype=np.float32) + 0.5) / size
    py, px = np.meshgrid(pix, pix, indexing="ij")
    if kind == "shape":
        _, alpha = signature_patch(value, (255, 255, 255), "solid", size)
        cells = (np.floor(px * 6) + np.floor(py * 6)) % 2 == 0  # 6 × 6 cells
        level = np.where(cells, *_CUE_LEVELS).astype(np.float32)
        return np.repeat(level[..., None], 3, axis=-1), alpha
    if kind == "colour":
        sub = 2 * size  # 2× supersampling, as for signature edges
        coords = (np.arange(sub, dtype=np.float32) + 0.5) / sub
        v, u = np.meshgrid(coords, coords, indexing="ij")
        bars = ((v % (1 / 3)) >= 0.06) & ((v % (1 / 3)) <= 0.27) & (np.abs(u - 0.5) <= 0.45)
        alpha = bars.astype(np.float32).reshape(size, 2, size, 2).mean(axis=(1, 3))
        rgb = np.broadcast_to(np.asarray(COLOURS[value], np.float32), (size, size, 3))
        return np.ascontiguousarray(rgb), alpha
    raise ValueError(f"unknown cue {cue!r} (expected shape:<name> or colour:<name>)")
