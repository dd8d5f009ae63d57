"""Frame rendering: a scrolling cluttered background with moving signature patches.

Every random draw comes from ``VideoPlan.seed`` in a fixed order, so a plan always
renders to the same frames.
"""

from __future__ import annotations

import numpy as np

from frameexit.synthetic.planning import VideoPlan
from frameexit.synthetic.signatures import class_signatures, cue_patch, signature_patch

__all__ = ["render_video"]

_SIGNATURE_SIZE = (0.42, 0.55)  # fraction of min(width, height)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (2H, 2W, 3) uint8 toroidal canvas: smooth low-saturation gray plus clutter."""
    ch, cw = 2 * height, 2 * width
    grid = 5
    coarse = rng.uniform(70, 170, size=(grid, grid, 1)) * rng.uniform(0.92, 1.08, size=3)
    yy = np.arange(ch) * grid / ch
    xx = np.arange(cw) * grid / cw
    y0, x0 = np.floor(yy).astype(int), np.floor(xx).astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    y1, x1 = (y0 + 1) % grid, (x0 + 1) % grid
    base = (
        coarse[y0][:, x0] * (1 - fy) * (1 - fx)
        + coarse[y0][:, x1] * (1 - fy) * fx
        + coarse[y1][:, x0] * fy * (1 - fx)
        + coarse[y1][:, x1] * fy * fx
    )
    scale = min(height, width) / 64.0
    count = int(rng.integers(25, 45) * (ch * cw) / (128 * 128) / max(scale, 1.0))
    f32 = np.float32
    cy = rng.uniform(0, ch, count).astype(f32)[:, None, None]
    cx = rng.uniform(0, cw, count).astype(f32)[:, None, None]
    hy = (rng.uniform(1.5, 8.0, count) * scale).astype(f32)[:, None, None]
    hx = (rng.uniform(1.5, 8.0, count) * scale).astype(f32)[:, None, None]
    ellipse = rng.random(count)[:, None, None] < 0.5
    gray = rng.uniform(30, 220, count)[:, None]
    colours = np.clip(gray + rng.uniform(-12, 12, size=(count, 3)), 0, 255)
    ys = np.arange(ch)[None, :, None].astype(np.float32)
    xs = np.arange(cw)[None, None, :].astype(np.float32)
    dy = np.abs(ys - cy)
    dy = np.minimum(dy, ch - dy)  # wrap around: the canvas tiles seamlessly
    dx = np.abs(xs - cx)
    dx = np.minimum(dx, cw - dx)
    in_rect = (dy <= hy) & (dx <= hx)
    in_ellipse = (dy / hy) ** 2 + (dx / hx) ** 2 <= 1.0
    masks = np.where(ellipse, in_ellipse, in_rect)  # [count, ch, cw]
    covered = masks.any(axis=0)
    top = count - 1 - np.argmax(masks[::-1], axis=0)  # painter's order: last drawn wins
    canvas = np.where(covered[..., None], colours[top], base)
    canvas += rng.normal(0, 3.0, size=canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _bounce(start: float, velocity: float, steps: np.ndarray, span: int) -> np.ndarray:
    """Positions of a point moving at ``velocity`` px/frame, reflecting inside [0, span]."""
    if span <= 0:
        return np.zeros(len(steps), dtype=np.int64)
    period = 2 * span
    position = np.mod(start + velocity * steps, period)
    position = np.where(position > span, period - position, position)
    return np.rint(position).astype(np.int64)


def _occlude(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep only 25–45 % of the patch: cut it along a random line through it."""
    size = alpha.shape[0]
    pix = (np.arange(size) + 0.5) / size - 0.5
    py, px = np.meshgrid(pix, pix, indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    projection = px * np.cos(angle) + py * np.sin(angle)
    keep = rng.uniform(0.25, 0.45)
    inside = alpha > 0.5
    threshold = np.quantile(projection[inside], 1.0 - keep) if inside.any() else 0.0
    return alpha * (projection >= threshold)


def render_video(plan: VideoPlan, num_classes: int) -> np.ndarray:
    """Draw the frames of ``plan``: uint8 ``[num_frames, height, width, 3]`` (RGB)."""
    rng = np.random.default_rng(list(plan.seed))
    h, w, n = plan.height, plan.width, plan.num_frames
    scale = min(h, w) / 64.0
    canvas = _background(rng, h, w)
    ch, cw = canvas.shape[:2]
    t = np.arange(n)
    velocity = rng.uniform(-1.5, 1.5, size=2) * scale
    origin = rng.uniform(0, [ch, cw])
    rows = (np.rint(origin[0] + velocity[0] * t)[:, None].astype(np.int64) + np.arange(h)) % ch
    cols = (np.rint(origin[1] + velocity[1] * t)[:, None].astype(np.int64) + np.arange(w)) % cw
    frames = canvas[rows[:, :, None], cols[:, None, :]].astype(np.float32)  # [n, h, w, 3]

    # single-cue ids draw the same signatures as class_signatures(num_single): prefix-stable
    signatures = class_signatures(num_classes)
    for seg in plan.segments:
        size = int(round(min(h, w) * rng.uniform(*_SIGNATURE_SIZE)))
        size = max(4, min(size, h, w))
        if seg.cue:  # one sub-signature of a complementary class
            rgb, alpha = cue_patch(seg.cue, size)
        else:
            sig = signatures[seg.label_id]
            rgb, alpha = signature_patch(sig.shape, sig.rgb, sig.texture, size)
        if seg.kind == "occluded":
            alpha = _occlude(alpha, rng)
        elif seg.kind == "gray":
            luma = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
            rgb = np.repeat((0.5 * luma + 60.0)[..., None], 3, axis=-1)
        steps = np.arange(seg.length)
        ys = _bounce(rng.uniform(0, h - size), rng.uniform(-1.2, 1.2) * scale, steps, h - size)
        xs = _bounce(rng.uniform(0, w - size), rng.uniform(-1.2, 1.2) * scale, steps, w - size)
        index = np.arange(seg.start, seg.end)[:, None, None]
        ry = ys[:, None, None] + np.arange(size)[None, :, None]
        rx = xs[:, None, None] + np.arange(size)[None, None, :]
        region = frames[index, ry, rx]  # [L, size, size, 3]
        a = alpha[None, :, :, None]
        frames[index, ry, rx] = region * (1.0 - a) + rgb[None] * a
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
