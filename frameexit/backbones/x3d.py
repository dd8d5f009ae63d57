"""X3D-S (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", 2020).

Written here rather than imported from PyTorchVideo (last release 2022, pins old deps). The
module tree and parameter names follow PyTorchVideo's ``create_x3d`` exactly (``blocks.0.conv
.conv_t``, ``blocks.1.res_blocks.0.branch2.conv_a`` …), so the released Kinetics-400
``X3D_S.pyth`` state_dict (its ``model_state``) loads by name; its classifier
(``blocks.5.proj``) is optional here. Data flow for a clip ``[B, 3, T, H, W]`` (X3D-S: T = 13,
H = W = 160)::

    blocks.0  stem: conv_t 1×3×3/2 (spatial) ─ conv_xy 5×1×1 depthwise (temporal) ─ BN ─ ReLU  24
    blocks.1  3 × res block (stride 2 in the first), inner 54, SE on blocks 0, 2, …           24
    blocks.2  5 × res block, inner 108                                                       48
    blocks.3  11 × res block, inner 216                                                      96
    blocks.4  7 × res block, inner 432                                                      192
    blocks.5  head: pre_conv 1×1×1 → 432 ─ BN ─ ReLU ─ global avg pool ─ post_conv → 2048 ─ ReLU
              (─ proj: Linear(2048, classes) when num_classes > 0)

    res block: x ─ conv_a 1×1×1 ─ BN ─ ReLU ─ conv_b 3×3×3 depthwise ─ BN ─ [SE] ─ Swish
                 ─ conv_c 1×1×1 ─ BN ─(+ shortcut: x, or branch1_conv 1×1×1 [+ BN])─ ReLU

(The names are PyTorchVideo's: its stem calls the spatial conv ``conv_t`` and the temporal
one ``conv_xy``.) Stage depths are ⌈2.2·[1, 2, 5, 3]⌉, widths 2.0 × [12, 24, 48, 96], bottleneck
factor 2.25, SE ratio 1/16 on every other block. One deliberate difference: the head pools
globally (adaptive) where PyTorchVideo uses a fixed AvgPool3d((13, 5, 5)); at the native
13×160×160 the two are identical, and adaptive pooling keeps other clip sizes meaningful.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

X3D_MEAN: tuple[float, float, float] = (0.45, 0.45, 0.45)
X3D_STD: tuple[float, float, float] = (0.225, 0.225, 0.225)


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """Channel count ``width·multiplier`` rounded to a multiple of ``divisor`` (X3D's rule)."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


class SqueezeExcitation(nn.Module):
    """Channel SE (fvcore layout): x · σ(conv(ReLU(conv(mean_{T,H,W} x))))."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(channels, reduced, 1),
            nn.ReLU(),
            nn.Conv3d(reduced, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.block(x.mean(dim=(2, 3, 4), keepdim=True))


class _StemConv(nn.Module):
    """Spatial 1×3×3/2 conv (``conv_t``) then depthwise temporal 5×1×1 conv (``conv_xy``)."""

    def __init__(self, dim_out: int) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(3, dim_out, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False)
        self.conv_xy = nn.Conv3d(
            dim_out, dim_out, (5, 1, 1), 1, (2, 0, 0), groups=dim_out, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_xy(self.conv_t(x))


class Stem(nn.Module):
    """X3D stem: (2+1)D conv ─ BN ─ ReLU, spatial stride 2."""

    def __init__(self, dim_out: int) -> None:
        super().__init__()
        self.conv = _StemConv(dim_out)
        self.norm = nn.BatchNorm3d(dim_out)
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.norm(self.conv(x)))


class Bottleneck(nn.Module):
    """conv_a 1×1×1 ─ BN ─ ReLU ─ conv_b k×k×k depthwise ─ BN [─ SE] ─ Swish ─ conv_c ─ BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(
            dim_inner, dim_inner, 3, (1, stride, stride), 1, groups=dim_inner, bias=False
        )
        self.norm_b = nn.Sequential(
            nn.BatchNorm3d(dim_inner),
            SqueezeExcitation(dim_inner, round_width(dim_inner, 0.0625)) if se else nn.Identity(),
        )
        self.act_b = nn.SiLU()  # Swish
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """Residual block; the shortcut is a strided 1×1×1 conv when the shape changes.

    As in PyTorchVideo, the shortcut has a BatchNorm only when the width changes (so the
    first block of stage 1, 24 → 24 with stride 2, has ``branch1_conv`` but no norm).
    """

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se: bool) -> None:
        super().__init__()
        self.branch1_conv = (
            nn.Conv3d(dim_in, dim_out, 1, (1, stride, stride), bias=False)
            if dim_in != dim_out or stride > 1
            else None
        )
        self.branch1_norm = nn.BatchNorm3d(dim_out) if dim_in != dim_out else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, stride, se)
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(x)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
        return self.activation(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """``depth`` residual blocks; the first one strides, SE on blocks 0, 2, 4, …"""

    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ResBlock(
                dim_in if i == 0 else dim_out, dim_inner, dim_out, 2 if i == 0 else 1, i % 2 == 0
            )
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class ProjectedPool(nn.Module):
    """pre_conv ─ BN ─ ReLU ─ global average pool ─ post_conv ─ ReLU (X3D's head, no BN after)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int) -> None:
        super().__init__()
        self.pre_conv = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.pre_norm = nn.BatchNorm3d(dim_inner)
        self.pre_act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.post_conv = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.post_act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.pre_act(self.pre_norm(self.pre_conv(x))))
        return self.post_act(self.post_conv(x))


class Head(nn.Module):
    """Projected pooling to ``dim_out`` features, then the optional classifier ``proj``."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, num_classes: int) -> None:
        super().__init__()
        self.pool = ProjectedPool(dim_in, dim_inner, dim_out)
        self.dropout = nn.Dropout(0.5) if num_classes else None
        self.proj = nn.Linear(dim_out, num_classes) if num_classes else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x).flatten(1)
        if self.proj is not None and self.dropout is not None:
            x = self.proj(self.dropout(x))
        return x


class X3D(nn.Module):
    """X3D network: clip ``[B, 3, T, H, W]`` → ``[B, 2048]`` features (or ``[B, classes]`` logits).

    Defaults build X3D-S/XS (they share the network; they differ in clip length and size).
    """

    num_features = 2048

    def __init__(
        self,
        *,
        num_classes: int = 0,
        width_factor: float = 2.0,
        depth_factor: float = 2.2,
        bottleneck_factor: float = 2.25,
        stem_dim: int = 12,
    ) -> None:
        super().__init__()
        dim_in = round_width(stem_dim, width_factor)
        blocks: list[nn.Module] = [Stem(dim_in)]
        stage_dim = stem_dim
        dim_inner = dim_in
        for i, depth in enumerate((1, 2, 5, 3)):
            if i:
                stage_dim = round_width(stage_dim, 2.0)
            dim_out = round_width(stage_dim, width_factor)
            dim_inner = int(bottleneck_factor * dim_out)
            blocks.append(ResStage(math.ceil(depth_factor * depth), dim_in, dim_inner, dim_out))
            dim_in = dim_out
        blocks.append(Head(dim_in, dim_inner, self.num_features, num_classes))
        self.blocks = nn.ModuleList(blocks)
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs; the last BN of every residual branch starts at zero (PySlowFast
        ``ZERO_INIT_FINAL_BN``), so a randomly initialised X3D starts close to identity blocks."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.norm_c.weight)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Clip ``[B, 3, T, H, W]`` → ``[B, 2048]`` (or logits when built with classes)."""
        if x.dim() != 5:
            raise ValueError(f"X3D expects a clip [B, 3, T, H, W], got {list(x.shape)}")
        for block in self.blocks:
            x = block(x)
        return x


def x3d_s(num_classes: int = 0) -> X3D:
    """X3D-S (13×160×160 clips; 1.96 GFLOPs, 3.76M parameters with the 400-class head)."""
    return X3D(num_classes=num_classes)
