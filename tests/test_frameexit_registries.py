"""Adding a pooling, a policy or a backbone is one decorated definition.

A user module (written to a temporary folder here) registers one of each; a YAML config
then names them, validates, builds the model, trains a step and runs early exit — with
no other edit anywhere. The registries are restored afterwards.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from frameexit import policy, pooling
from frameexit.backbones import registry
from frameexit.config import load_config
from frameexit.errors import ConfigError
from frameexit.losses import set_stage
from frameexit.model import build_model
from frameexit.sampling import video_input_shape
from frameexit.training import stage1_step

USER_MODULE = textwrap.dedent(
    '''
    import torch
    from torch import nn

    from frameexit.backbones import register_backbone
    from frameexit.policy import register_policy
    from frameexit.pooling import AccumulatedPooling, register_pooling


    @register_pooling("user_min")
    class MinPooling(AccumulatedPooling):
        """z_t = min(z_{t-1}, x_t)."""

        def forward(self, x):
            self._check_sequence(x)
            return torch.cummin(x, dim=1).values

        def _step(self, state, x_t):
            previous = state.tensors.get("min")
            z_t = x_t if previous is None else torch.minimum(previous, x_t)
            return z_t, {"min": z_t}


    @register_policy("user_reverse")
    def reverse(num_frames, num_steps):
        """Last frame first, then backwards (cycling for short videos)."""
        return [(num_frames - 1 - i) % num_frames for i in range(num_steps)]


    @register_backbone("user_net", default_image_size=40)
    def user_net():
        """A 2-layer CNN."""
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
    '''
)

CONFIG = """
model:
  backbone: user_net
  pooling: user_min
  policy: user_reverse
  feature_dim: 16
  num_classes: 3
  num_steps: 4
  gate_hidden: 8
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    for module in (pooling, policy, registry):  # restored after the test
        monkeypatch.setattr(module, "_REGISTRY", dict(module._REGISTRY))
    (tmp_path / "my_frameexit_parts.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_frameexit_parts", None)
    yield importlib.import_module("my_frameexit_parts")
    sys.modules.pop("my_frameexit_parts", None)


def test_one_decorated_definition_each_and_a_yaml_config(user_module, tmp_path):
    config = tmp_path / "user.yaml"
    config.write_text(CONFIG)
    cfg = load_config(str(config))
    assert "user_min" in pooling.list_poolings() and "user_reverse" in policy.list_policies()
    assert cfg.model.image_size == 40 and cfg.model.clip_length == 1  # from the spec
    assert policy.get_policy(cfg.model.policy)(10, 4) == [9, 8, 7, 6]

    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert isinstance(model.pooling, user_module.MinPooling)
    frames = torch.randn(2, *video_input_shape(40, 1, 4))
    set_stage(model, 1)
    loss, _, step_losses = stage1_step(model, frames, torch.tensor([0, 2]), cfg)
    assert step_losses.shape == (4,) and torch.isclose(step_losses.mean(), loss.detach())
    loss.backward()
    assert torch.isfinite(loss)
    result = model.early_exit(lambda t, active: frames[active, t], 2)
    out = model.eval()(frames)
    step = result.exit_step - 1
    torch.testing.assert_close(result.logits, out.logits[torch.arange(2), step])


def test_unknown_names_fail_naming_the_field(user_module):
    with pytest.raises(ConfigError, match="model.pooling"):
        load_config(None, ["model.pooling=no_such_pooling"])
    with pytest.raises(ConfigError, match="model.policy"):
        load_config(None, ["model.policy=no_such_policy"])
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(None, ["model.backbone=no_such_backbone"])


def test_clip_settings_default_from_the_backbone_spec():
    cfg = load_config(None, ["model.backbone=x3d_s"])
    assert (cfg.model.image_size, cfg.model.clip_length) == (160, 13)
    with pytest.raises(ConfigError, match="model.clip_length"):
        load_config(None, ["model.backbone=resnet18", "model.clip_length=13"])
