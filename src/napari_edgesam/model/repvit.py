"""RepViT-M1 image encoder with EdgeSAM's fuse neck.

Key names follow the released EdgeSAM checkpoints (``features.*``, ``fuse_stage2``,
``fuse_stage3.op_list.0``, ``neck.*``), which are stored *unfolded*: every convolution is a
bias-free conv (``.c``) followed by BatchNorm (``.bn``). :meth:`RepViTEncoder.fuse` folds
BatchNorm into the convolutions and the three RepVGG depthwise branches into one kernel,
for inference only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class Conv2dBN(nn.Sequential):
    """Bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """Return one ``Conv2d`` with bias that computes the same as conv + BN in eval mode."""
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            groups=conv.groups, bias=True,
        ).to(conv.weight.device)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


class RepVGGDW(nn.Module):
    """Depthwise ``3x3 + 1x1 + identity`` (keys ``conv`` and ``conv1``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2dBN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = Conv2dBN(channels, channels, 1, 1, 0, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """Fold the three branches into a single depthwise 3x3 convolution."""
        conv3 = self.conv.fuse()
        conv1 = self.conv1.fuse()
        weight = conv3.weight + F.pad(conv1.weight, [1, 1, 1, 1])
        weight[:, 0, 1, 1] += 1.0  # the identity branch
        conv3.weight.copy_(weight)
        conv3.bias.add_(conv1.bias)
        return conv3


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate: mean-pool, ``fc1``, ReLU, ``fc2``, sigmoid."""

    def __init__(self, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = make_divisible(channels * ratio, 8)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = self.fc2(F.relu(self.fc1(gate)))
        return x * torch.sigmoid(gate)


class Residual(nn.Module):
    """``x + m(x)``."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


def _channel_mlp(channels: int, expansion: int) -> Residual:
    return Residual(
        nn.Sequential(
            Conv2dBN(channels, channels * expansion),
            nn.GELU(),
            Conv2dBN(channels * expansion, channels),
        )
    )


class RepViTBlock(nn.Module):
    """One RepViT block: ``token_mixer`` (spatial) then residual ``channel_mixer``.

    Stride 1: ``token_mixer = [RepVGGDW, SE | Identity]``.
    Stride 2 (downsampling): ``token_mixer = [dw Conv2dBN s2, SE | Identity, Conv2dBN 1x1]``.
    """

    def __init__(self, cin: int, cout: int, stride: int, use_se: bool, expansion: int = 2) -> None:
        super().__init__()
        se: nn.Module = SqueezeExcite(cin) if use_se else nn.Identity()
        if stride == 1:
            if cin != cout:
                raise ValueError(f"stride-1 RepViT block needs cin == cout, got {cin} -> {cout}")
            self.token_mixer = nn.Sequential(RepVGGDW(cin), se)
        elif stride == 2:
            self.token_mixer = nn.Sequential(
                Conv2dBN(cin, cin, 3, 2, 1, groups=cin), se, Conv2dBN(cin, cout, 1, 1, 0)
            )
        else:
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.channel_mixer = _channel_mlp(cout, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


@dataclass(frozen=True)
class RepViTConfig:
    """Architecture of a RepViT encoder.

    ``blocks`` lists ``(out_channels, stride, use_se)`` for ``features.1..N``; ``stem_channels``
    the two stem convolutions; ``stage2_index``/``stage3_index`` the feature indices whose outputs
    feed the fuse neck (strides 16 and 32); ``stage1_index`` the stride-8 tap.
    """

    stem_channels: tuple[int, int]
    blocks: tuple[tuple[int, int, bool], ...]
    stage1_index: int
    stage2_index: int
    stage3_index: int
    embed_dim: int = 256
    upsample_mode: str = "bicubic"


def _m1_blocks() -> tuple[tuple[int, int, bool], ...]:
    blocks: list[tuple[int, int, bool]] = []
    blocks += [(48, 1, True), (48, 1, False), (48, 1, False)]  # features 1-3
    blocks += [(96, 2, False)]  # 4
    blocks += [(96, 1, True), (96, 1, False), (96, 1, False)]  # 5-7
    blocks += [(192, 2, False)]  # 8
    blocks += [(192, 1, i % 2 == 0) for i in range(15)]  # 9-23: SE on 9, 11, ..., 21
    blocks[-1] = (192, 1, False)  # features.23 has no SE
    blocks += [(384, 2, False)]  # 24
    blocks += [(384, 1, True), (384, 1, False)]  # 25-26
    return tuple(blocks)


REPVIT_M1 = RepViTConfig(
    stem_channels=(24, 48),
    blocks=_m1_blocks(),
    stage1_index=7,
    stage2_index=23,
    stage3_index=26,
)


class _UpsampledConv(nn.Module):
    """``op_list = [1x1 conv, x2 upsample]`` (only the conv has weights)."""

    def __init__(self, cin: int, cout: int, mode: str) -> None:
        super().__init__()
        self.op_list = nn.ModuleList([nn.Conv2d(cin, cout, 1, bias=False)])
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.op_list[0](x)
        return F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False)


class RepViTEncoder(nn.Module):
    """RepViT backbone + EdgeSAM fuse neck.

    Input: ``B x 3 x 1024 x 1024`` normalised, padded images.
    Output of :meth:`forward`: ``B x 256 x 64 x 64`` image embeddings.
    """

    def __init__(self, config: RepViTConfig = REPVIT_M1) -> None:
        super().__init__()
        self.config = config
        c0, c1 = config.stem_channels
        layers: list[nn.Module] = [
            nn.Sequential(Conv2dBN(3, c0, 3, 2, 1), nn.GELU(), Conv2dBN(c0, c1, 3, 2, 1))
        ]
        cin = c1
        for cout, stride, use_se in config.blocks:
            layers.append(RepViTBlock(cin, cout, stride, use_se))
            cin = cout
        self.features = nn.ModuleList(layers)
        c2 = config.blocks[config.stage2_index - 1][0]
        c3 = config.blocks[config.stage3_index - 1][0]
        dim = config.embed_dim
        self.fuse_stage2 = nn.Conv2d(c2, dim, 1, bias=False)
        self.fuse_stage3 = _UpsampledConv(c3, dim, config.upsample_mode)
        self.neck = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False),
            LayerNorm2d(dim),
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            LayerNorm2d(dim),
        )

    @property
    def upsample_mode(self) -> str:
        return self.fuse_stage3.mode

    @upsample_mode.setter
    def upsample_mode(self, mode: str) -> None:
        if mode not in ("bicubic", "bilinear"):
            raise ValueError(f"upsample_mode must be 'bicubic' or 'bilinear', got {mode!r}")
        self.fuse_stage3.mode = mode

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone taps: ``stage1`` (stride 8), ``stage2`` (16) and ``stage3`` (32)."""
        cfg = self.config
        taps = {cfg.stage1_index: "stage1", cfg.stage2_index: "stage2", cfg.stage3_index: "stage3"}
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                out[taps[i]] = x
            if i == cfg.stage3_index:
                break
        return out

    def neck_forward(self, stage2: torch.Tensor, stage3: torch.Tensor) -> torch.Tensor:
        """Fuse the stride-16 and stride-32 features into ``B x 256 x H/16 x W/16``."""
        return self.neck(self.fuse_stage3(stage3) + self.fuse_stage2(stage2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        return self.neck_forward(feats["stage2"], feats["stage3"])

    @torch.no_grad()
    def fuse(self) -> RepViTEncoder:
        """Fold BatchNorm and RepVGG branches in place (inference only); returns ``self``."""
        _fuse_children(self)
        return self


def _fuse_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (Conv2dBN, RepVGGDW)):
            setattr(module, name, child.fuse())
        else:
            _fuse_children(child)
