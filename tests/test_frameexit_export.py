"""Export of the all-steps forward (``FrameExit.export_module``): ``torch.export`` and
``torch.jit.trace`` give programs whose outputs are the model's own forward."""

from __future__ import annotations

import pytest
import torch

from frameexit.config import load_config
from frameexit.model import build_model

T, S = 4, 32


def _model(pooling: str, variant: str):
    cfg = load_config(
        None,
        [
            "model.backbone=tiny",
            "model.feature_dim=32",
            "model.num_classes=5",
            f"model.num_steps={T}",
            f"model.image_size={S}",
            f"model.pooling={pooling}",
            f"model.variant={variant}",
        ],
    )
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


def _reference(model, frames):
    with torch.no_grad():
        out = model(frames)
    return out.logits, out.gate_probs


@pytest.mark.parametrize(
    ("pooling", "variant"),
    [("lstm", "paper"), ("attention", "paper"), ("max", "official")],
)
def test_torch_export_equals_the_forward_for_any_batch(pooling, variant):
    model = _model(pooling, variant)
    frames = torch.randn(3, T, 3, S, S)
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(
        model.export_module(), (frames,), dynamic_shapes={"frames": {0: batch}}
    )
    for n in (3, 5):  # another batch size than the one exported with
        x = torch.randn(n, T, 3, S, S)
        logits, probs = program.module()(x)
        want_logits, want_probs = _reference(model, x)
        assert logits.shape == (n, T, 5) and probs.shape == (n, T)
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(probs, want_probs, rtol=1e-5, atol=1e-5)


def test_torch_jit_trace_equals_the_forward_and_survives_a_save(tmp_path):
    model = _model("max", "paper")
    frames = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        traced = torch.jit.trace(model.export_module(), (frames,))
    traced.save(str(tmp_path / "frameexit.pt"))
    loaded = torch.jit.load(str(tmp_path / "frameexit.pt"))
    x = torch.randn(2, T, 3, S, S)
    logits, probs = loaded(x)
    want_logits, want_probs = _reference(model, x)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, want_probs, rtol=1e-5, atol=1e-5)


def test_the_export_module_shares_the_models_weights():
    model = _model("max", "paper")
    module = model.export_module()
    with torch.no_grad():
        model.classifiers[0].bias.add_(10.0)  # a change to the model reaches the module
    x = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        logits, _ = module(x)
    torch.testing.assert_close(logits, _reference(model, x)[0])
