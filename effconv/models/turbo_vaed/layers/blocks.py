"""Normalization and residual blocks of the Turbo-VAED student decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effconv.models.turbo_vaed.layers.separable import CausalConv3d, SeparableConv3d, TemporalPadding
from effconv.models.turbo_vaed.layers.stream import ChunkStream

RMS_EPS = 1e-8
DENSE_KERNEL = 3
RELEASED_SHORTCUT_NORM_EPS = 1e-6  # the released configs' resnet_norm_eps


class RMSNorm3d(nn.Module):
    """RMSNorm over channels of (B, C, T, H, W), no affine. Uses x*x rather than pow, which
    TFLite's int8 path handles badly (measured: see docs/quantize.md)."""

    def __init__(self, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + self.eps)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels (dim 1) of (B, C, T, H, W) or (T, C, H, W), with a per-channel weight and bias:
    what the released students compute by moving channels last for `nn.LayerNorm`, without the two transposes."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        normed = centred * torch.rsqrt((centred * centred).mean(dim=1, keepdim=True) + self.eps)
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        return normed * self.weight.reshape(per_channel) + self.bias.reshape(per_channel)


def make_conv(in_channels: int, out_channels: int, separable: bool, kernel_size: int,
              padding: TemporalPadding) -> nn.Module:
    """A separable conv with the recipe's kernel, or a dense 3x3x3 conv."""
    if separable:
        return SeparableConv3d(in_channels, out_channels, kernel_size, padding=padding)
    return CausalConv3d(in_channels, out_channels, DENSE_KERNEL, padding=padding)


def make_shortcut(in_channels: int, out_channels: int, separable: bool, norm_eps: float | None) -> nn.Module:
    """The 1x1x1 conv that changes a residual's width. With a shortcut norm (the released students) it is of the
    block's own kind: a separable block's is a depthwise 1x1x1 then a pointwise conv, as their checkpoints hold."""
    if norm_eps is not None and separable:
        return SeparableConv3d(in_channels, out_channels, 1)
    return nn.Conv3d(in_channels, out_channels, 1)


class ResBlock3d(nn.Module):
    """norm -> act -> conv -> norm -> SiLU -> conv, plus a 1x1x1 shortcut when the width changes.

    `first_relu`: the blocks after an upsampler use ReLU as their first activation (paper).
    `shortcut_norm`: eps of a LayerNorm over channels in front of the shortcut conv (the released students have
    one); None for none (students written before effconv had it).
    """

    def __init__(self, in_channels: int, out_channels: int, separable: bool = False, kernel_size: int = 5,
                 padding: TemporalPadding = "causal", first_relu: bool = False, shortcut_norm: float | None = None):
        super().__init__()
        self.first_relu = first_relu
        self.norm1 = RMSNorm3d()
        self.conv1 = make_conv(in_channels, out_channels, separable, kernel_size, padding)
        self.norm2 = RMSNorm3d()
        self.conv2 = make_conv(out_channels, out_channels, separable, kernel_size, padding)
        self.shortcut_norm = self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = make_shortcut(in_channels, out_channels, separable, shortcut_norm)
            if shortcut_norm is not None:
                self.shortcut_norm = ChannelLayerNorm(in_channels, shortcut_norm)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """What the block adds its convs' output to (1x1x1 convs only: no temporal taps, nothing to stream)."""
        if self.shortcut is None:
            return x
        return self.shortcut(self.shortcut_norm(x) if self.shortcut_norm is not None else x)

    def forward(self, x: torch.Tensor, stream: ChunkStream | None = None) -> torch.Tensor:
        h = self.norm1(x)
        h = F.relu(h) if self.first_relu else F.silu(h)
        h = self.conv2(F.silu(self.norm2(self.conv1(h, stream))), stream)
        return h + self.residual(x)
