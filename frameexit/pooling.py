"""Accumulated feature pooling Ψ: z_1 = Φ(x_1), z_t = Ψ(z_{t-1}, Φ(x_t)).

Two ways to run the same operator:

* ``forward(x [B, T, D]) -> z [B, T, D]`` — all steps at once (training, cached features);
* ``init_state`` / ``step`` / ``select`` — one step at a time, each step costing only the
  new frame (early-exit inference); ``select`` keeps the rows of the videos still running
  when exited ones leave the batch (compaction).

The incremental result equals ``forward`` (tested for every operator). Operators: ``max``
(the paper's default), ``mean`` (the paper's choice for HVU), ``lstm`` and ``attention``
(causal self-attention over the frame features seen so far, with a key/value cache).
A new operator is one decorated class (its name is then valid in ``model.pooling``)::

    @register_pooling("min")
    class MinPooling(AccumulatedPooling):
        def forward(self, x): ...
        def _step(self, state, x_t): ...
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_REGISTRY: dict[str, type[AccumulatedPooling]] = {}


def register_pooling(
    name: str, *, overwrite: bool = False
) -> Callable[[type[AccumulatedPooling]], type[AccumulatedPooling]]:
    """Class decorator: make a pooling operator buildable as ``model.pooling: name``.

    The class must subclass :class:`AccumulatedPooling` and take ``dim`` as its only
    required argument. Re-registering a name raises ``ValueError`` unless ``overwrite``.
    """

    def decorator(cls: type[AccumulatedPooling]) -> type[AccumulatedPooling]:
        if not (isinstance(cls, type) and issubclass(cls, AccumulatedPooling)):
            raise TypeError(f"pooling {name!r}: {cls!r} is not an AccumulatedPooling")
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"pooling {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_poolings() -> list[str]:
    """Registered pooling names, in registration order (``max`` first: the default)."""
    return list(_REGISTRY)


@dataclass
class PoolingState:
    """Running state of one batch: ``t`` steps taken so far and per-video tensors (dim 0 = B).

    Tensors are created on the first ``step`` (so they take the input's dtype and device).
    """

    batch_size: int
    device: torch.device | None = None
    t: int = 0
    tensors: dict[str, Tensor] = field(default_factory=dict)


class AccumulatedPooling(nn.Module, abc.ABC):
    """Base class: the step/select protocol shared by every pooling operator."""

    name: str = ""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"pooling dim must be >= 1, got {dim}")
        self.dim = dim

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """All steps at once: frame features ``x [B, T, D]`` → pooled ``z [B, T, D]``."""

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> PoolingState:
        """An empty state for ``batch_size`` videos (nothing seen yet)."""
        return PoolingState(
            batch_size=batch_size, device=torch.device(device) if device is not None else None
        )

    def step(self, state: PoolingState, x_t: Tensor) -> tuple[Tensor, PoolingState]:
        """Fold the next frame features ``x_t [B, D]`` in; return ``(z_t [B, D], new state)``."""
        if x_t.dim() != 2 or x_t.shape[0] != state.batch_size or x_t.shape[1] != self.dim:
            raise ValueError(
                f"{self.name} pooling step expects [{state.batch_size}, {self.dim}], "
                f"got {list(x_t.shape)}"
            )
        z_t, tensors = self._step(state, x_t)
        return z_t, PoolingState(state.batch_size, x_t.device, state.t + 1, tensors)

    @abc.abstractmethod
    def _step(self, state: PoolingState, x_t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One step: ``(z_t, tensors of the new state)``."""

    def select(self, state: PoolingState, keep: Tensor) -> PoolingState:
        """Keep only the videos at positions ``keep`` (LongTensor into the current batch)."""
        keep = torch.as_tensor(keep, dtype=torch.long).reshape(-1)
        tensors = {
            key: value.index_select(0, keep.to(value.device))
            for key, value in state.tensors.items()
        }
        return PoolingState(int(keep.numel()), state.device, state.t, tensors)

    def _check_sequence(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise ValueError(f"{self.name} pooling expects [B, T, {self.dim}], got {list(x.shape)}")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@register_pooling("max")
class MaxPooling(AccumulatedPooling):
    """z_t = max(z_{t-1}, x_t) elementwise (the paper's default)."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_sequence(x)
        return torch.cummax(x, dim=1).values

    def _step(self, state: PoolingState, x_t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        previous = state.tensors.get("max")
        z_t = x_t if previous is None else torch.maximum(previous, x_t)
        return z_t, {"max": z_t}


@register_pooling("mean")
class MeanPooling(AccumulatedPooling):
    """z_t = (x_1 + … + x_t) / t (the paper's choice for HVU)."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_sequence(x)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        return torch.cumsum(x, dim=1) / steps.view(1, -1, 1)

    def _step(self, state: PoolingState, x_t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        previous = state.tensors.get("sum")
        total = x_t if previous is None else previous + x_t
        return total / (state.t + 1), {"sum": total}


@register_pooling("lstm")
class LSTMPooling(AccumulatedPooling):
    """z_t = h_t of an LSTM cell (hidden size D) run over x_1..x_t."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.cell = nn.LSTMCell(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        self._check_sequence(x)
        state = self.init_state(x.shape[0], x.device)
        outputs = []
        for t in range(x.shape[1]):
            z_t, state = self.step(state, x[:, t])
            outputs.append(z_t)
        return torch.stack(outputs, dim=1)

    def _step(self, state: PoolingState, x_t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        hidden = (state.tensors["h"], state.tensors["c"]) if state.tensors else None
        h, c = self.cell(x_t, hidden)
        return h, {"h": h, "c": c}


@register_pooling("attention")
class AttentionPooling(AccumulatedPooling):
    """Causal multi-head self-attention: z_t = x_t + W_o · Attn(q_t, K_{1..t}, V_{1..t}).

    Step t attends from the new frame to every frame seen so far; keys and values of past
    frames are cached in the state, so a step costs one new key/value, not t.
    """

    def __init__(self, dim: int, num_heads: int | None = None) -> None:
        super().__init__(dim)
        if num_heads is None:
            num_heads = next(h for h in (8, 4, 2, 1) if dim % h == 0)
        if dim % num_heads:
            raise ValueError(f"attention pooling: dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, L, D] → q, k, v each [B, heads, L, head_dim]."""
        b, length, _ = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attn = F.softmax(scores, dim=-1) @ v  # [B, heads, L, head_dim]
        b, _, length, _ = attn.shape
        return self.out(attn.transpose(1, 2).reshape(b, length, self.dim))

    def forward(self, x: Tensor) -> Tensor:
        self._check_sequence(x)
        q, k, v = self._heads(x)
        steps = x.shape[1]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril()
        return x + self._attend(q, k, v, causal)

    def _step(self, state: PoolingState, x_t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = self._heads(x_t.unsqueeze(1))
        if state.tensors:
            k = torch.cat([state.tensors["k"], k], dim=2)
            v = torch.cat([state.tensors["v"], v], dim=2)
        z_t = x_t + self._attend(q, k, v, None).squeeze(1)
        return z_t, {"k": k, "v": v}


def build_pooling(name: str, dim: int) -> AccumulatedPooling:
    """The pooling operator Ψ called ``name`` (see :func:`list_poolings`) over ``dim`` features."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown pooling {name!r}; choose one of {', '.join(list_poolings())}"
        ) from None
    return cls(dim)
