"""Frame sampling policies π: which frame the network looks at in each time step.

The FrameExit policy (Algorithm 1 of the paper) is deterministic, parameter-free and
coarse to fine: middle, first, last, then the midpoints of ever finer intervals, so any
prefix of the visiting order covers the whole video as evenly as it can::

    N = 10 (1-based):  5  1  10 | 3  7 | 2  4  6  8 | 9
                       start     q=2    q=4          q=8

Every policy here maps ``(num_frames, num_steps)`` to exactly ``num_steps`` valid 0-based
frame indices, one per step t = 1..T, for any ``num_frames >= 1``; short videos
(``num_frames < num_steps``) revisit frames (each policy's docstring says how).
Baselines for the paper's ablations: sequential, uniform-K and random; ``official``
reproduces the authors' released evaluation code. A new policy is one decorated function
(its name is then valid in ``model.policy``)::

    @register_policy("reverse")
    def reverse(num_frames: int, num_steps: int) -> list[int]: ...
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

Policy = Callable[[int, int], list[int]]

_REGISTRY: dict[str, Policy] = {}


def register_policy(name: str, *, overwrite: bool = False) -> Callable[[Policy], Policy]:
    """Decorator: make ``f(num_frames, num_steps) -> indices`` usable as ``model.policy``.

    ``f`` must return exactly ``num_steps`` valid 0-based indices for any
    ``num_frames >= 1``. Re-registering a name raises ``ValueError`` unless ``overwrite``.
    """

    def decorator(fn: Policy) -> Policy:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"policy {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_policies() -> list[str]:
    """Registered policy names, in registration order (``coarse_to_fine`` first)."""
    return list(_REGISTRY)


def takes_seed(policy: Policy) -> bool:
    """Whether a policy is random and takes a ``seed`` keyword (e.g. ``random``)."""
    import inspect

    try:
        return "seed" in inspect.signature(policy).parameters
    except (TypeError, ValueError):
        return False


def video_seed(base: int, key: str, epoch: int | None = None) -> int:
    """A stable 63-bit seed for one video (and one epoch): the same on every machine and
    run, different for every (base, key, epoch). Random policies and augmentation draw
    from it, so a run is reproducible from ``train.seed`` and each epoch differs."""
    import hashlib

    text = f"{int(base)}|{key}|{'eval' if epoch is None else int(epoch)}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


# The visiting order hard-coded in the authors' inference code for T = 10 pre-sampled frames.
OFFICIAL_ORDER_T10: tuple[int, ...] = (5, 0, 9, 2, 7, 4, 6, 3, 8, 1)


def _check(num_frames: int, num_steps: int) -> None:
    for name, value in (("num_frames", num_frames), ("num_steps", num_steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _algorithm1(num_frames: int) -> Iterator[int]:
    """Yield Algorithm 1's sequence S (1-based, no repeats, all N frames), lazily.

    ``floor(linspace(1, N, q + 1))[i]`` is computed exactly as ``1 + (i * (N - 1)) // q``
    (the i-th point is 1 + i(N-1)/q), so no float rounding can move a frame.
    """
    n = num_frames
    seen: set[int] = set()
    for frame in ((n + 1) // 2, 1, n):  # middle, first, last (deduplicated for N <= 2)
        if frame not in seen:
            seen.add(frame)
            yield frame
    q = 2
    while len(seen) < n:
        a = 1
        for i in range(1, q + 1):
            b = 1 + (i * (n - 1)) // q
            mid = (a + b) // 2
            if mid not in seen:
                seen.add(mid)
                yield mid
            a = b
        q *= 2


@register_policy("coarse_to_fine")
def coarse_to_fine(num_frames: int, num_steps: int) -> list[int]:
    """FrameExit's policy π (Algorithm 1), 0-based: the first ``num_steps`` entries of S.

    Builds S only as far as needed (stops after ``num_steps`` entries). For N <= 2 the
    start [⌊(N+1)/2⌋, 1, N] is deduplicated (N=1 → [0]; N=2 → [0, 1]). A video shorter
    than T (N < num_steps) first visits all its N frames in Algorithm 1's order, then
    cycles through that same order again until num_steps indices are given; with max
    pooling a revisited frame adds nothing, so the extra steps only give the gates more
    chances to exit.
    """
    _check(num_frames, num_steps)
    order: list[int] = []
    for frame in _algorithm1(num_frames):
        order.append(frame - 1)
        if len(order) == num_steps:
            return order
    return [order[i % len(order)] for i in range(num_steps)]


@register_policy("sequential")
def sequential(num_frames: int, num_steps: int) -> list[int]:
    """Frames 0, 1, 2, … in temporal order (ablation baseline); short videos cycle."""
    _check(num_frames, num_steps)
    return [i % num_frames for i in range(num_steps)]


@register_policy("uniform")
def uniform(num_frames: int, num_steps: int) -> list[int]:
    """Uniform-K: the centres of K = num_steps equal segments, in temporal order.

    Index i is ⌊(2i + 1)·N / (2K)⌋ (exact integers). For N < K segments share frames,
    so frames repeat (in temporal order).
    """
    _check(num_frames, num_steps)
    return [((2 * i + 1) * num_frames) // (2 * num_steps) for i in range(num_steps)]


@register_policy("random")
def random_policy(num_frames: int, num_steps: int, seed: int = 0) -> list[int]:
    """Distinct frames in a random order, reproducible from ``seed`` (ablation baseline).

    Draws min(N, T) frames without replacement; a short video then cycles through its
    drawn order again. Training and evaluation pass a per-video (and, in training,
    per-epoch) seed (:func:`video_seed`), so videos of the same length get different
    orders and every epoch draws anew.
    """
    _check(num_frames, num_steps)
    rng = random.Random(f"frameexit-random-policy:{seed}:{num_frames}")
    order = rng.sample(range(num_frames), min(num_frames, num_steps))
    return [order[i % len(order)] for i in range(num_steps)]


def official_presample(num_frames: int, num_steps: int) -> list[int]:
    """The authors' uniform pre-sampling: ``clip(linspace(0, N, T), 0, N - 1).astype(int)``.

    Computed exactly as ``min(⌊i·N/(T-1)⌋, N-1)`` for i = 0..T-1 (``[0]`` for T = 1). The
    endpoint N is clipped to the last frame; for N < T frames repeat.
    """
    _check(num_frames, num_steps)
    if num_steps == 1:
        return [0]
    return [min((i * num_frames) // (num_steps - 1), num_frames - 1) for i in range(num_steps)]


@register_policy("official")
def official_order(num_frames: int, num_steps: int) -> list[int]:
    """The authors' released policy: T frames pre-sampled uniformly, visited in a fixed order.

    For T = 10 the order is their hard-coded ``[5, 0, 9, 2, 7, 4, 6, 3, 8, 1]`` over the
    pre-sampled slots (:func:`official_presample`). Their code has no order for other T;
    there we visit the T slots in Algorithm 1's order (``coarse_to_fine(T, T)``), the
    paper's rule applied to the pre-sampled frames.
    """
    slots = official_presample(num_frames, num_steps)
    order = OFFICIAL_ORDER_T10 if num_steps == 10 else coarse_to_fine(num_steps, num_steps)
    return [slots[j] for j in order]


def get_policy(name: str) -> Policy:
    """The policy called ``name`` (see :func:`list_policies`) as ``f(num_frames, num_steps)``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; choose one of {', '.join(list_policies())}"
        ) from None
