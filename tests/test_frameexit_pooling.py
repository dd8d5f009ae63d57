"""Accumulated pooling: all-at-once forward equals incremental steps, also after select."""

from __future__ import annotations

import pytest
import torch

from frameexit.pooling import AccumulatedPooling, build_pooling, list_poolings

B, T, D = 5, 6, 16


def _incremental(pool: AccumulatedPooling, x: torch.Tensor) -> torch.Tensor:
    state = pool.init_state(x.shape[0], x.device)
    out = []
    for t in range(x.shape[1]):
        z, state = pool.step(state, x[:, t])
        out.append(z)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("name", list_poolings())
def test_incremental_equals_forward(name: str) -> None:
    torch.manual_seed(0)
    pool = build_pooling(name, D).eval()
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full = pool(x)
        assert full.shape == (B, T, D)
        torch.testing.assert_close(_incremental(pool, x), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list_poolings())
def test_select_compaction_keeps_rows_aligned(name: str) -> None:
    torch.manual_seed(1)
    pool = build_pooling(name, D).eval()
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full = pool(x)
        state = pool.init_state(B, "cpu")
        rows = torch.arange(B)
        for t in range(T):
            z, state = pool.step(state, x[rows, t])
            torch.testing.assert_close(z, full[rows, t], rtol=1e-5, atol=1e-6)
            if t == 1:  # drop videos 0 and 3
                keep = torch.tensor([1, 2, 4])
            elif t == 3:  # then the middle one of those
                keep = torch.tensor([0, 2])
            else:
                continue
            state = pool.select(state, keep)
            rows = rows[keep]
            assert state.batch_size == len(rows)


def test_max_and_mean_values() -> None:
    x = torch.tensor([[[1.0, -1.0], [0.0, 3.0], [2.0, 1.0]]])
    torch.testing.assert_close(
        build_pooling("max", 2)(x), torch.tensor([[[1.0, -1.0], [1.0, 3.0], [2.0, 3.0]]])
    )
    torch.testing.assert_close(
        build_pooling("mean", 2)(x), torch.tensor([[[1.0, -1.0], [0.5, 1.0], [1.0, 1.0]]])
    )


def test_attention_is_causal() -> None:
    torch.manual_seed(2)
    pool = build_pooling("attention", D)
    x = torch.randn(2, T, D)
    y = x.clone()
    y[:, 4:] = torch.randn(2, T - 4, D)  # the future must not change z_1..z_4
    torch.testing.assert_close(pool(x)[:, :4], pool(y)[:, :4])
    assert not torch.allclose(pool(x)[:, 4:], pool(y)[:, 4:])


@pytest.mark.parametrize("name", list_poolings())
def test_gradients_flow(name: str) -> None:
    pool = build_pooling(name, D)
    x = torch.randn(2, 3, D, requires_grad=True)
    pool(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown pooling"):
        build_pooling("median", D)
    pool = build_pooling("max", D)
    state = pool.init_state(3)
    with pytest.raises(ValueError, match="expects"):
        pool.step(state, torch.randn(2, D))
    with pytest.raises(ValueError, match="expects"):
        pool(torch.randn(2, D))
