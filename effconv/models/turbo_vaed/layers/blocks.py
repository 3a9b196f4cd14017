"""Normalization and residual blocks of the Turbo-VAED student decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effconv.models.turbo_vaed.layers.separable import CausalConv3d, SeparableConv3d, TemporalPadding
from effconv.models.turbo_vaed.layers.stream import ChunkStream

RMS_EPS = 1e-8
DENSE_KERNEL = 3


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


def make_conv(in_channels: int, out_channels: int, separable: bool, kernel_size: int,
              padding: TemporalPadding) -> nn.Module:
    """A separable conv with the recipe's kernel, or a dense 3x3x3 conv."""
    if separable:
        return SeparableConv3d(in_channels, out_channels, kernel_size, padding=padding)
    return CausalConv3d(in_channels, out_channels, DENSE_KERNEL, padding=padding)


class ResBlock3d(nn.Module):
    """norm -> act -> conv -> norm -> SiLU -> conv, plus a 1x1x1 shortcut when the width changes.

    `first_relu`: the blocks after an upsampler use ReLU as their first activation (paper).
    """

    def __init__(self, in_channels: int, out_channels: int, separable: bool = False, kernel_size: int = 5,
                 padding: TemporalPadding = "causal", first_relu: bool = False):
        super().__init__()
        self.first_relu = first_relu
        self.norm1 = RMSNorm3d()
        self.conv1 = make_conv(in_channels, out_channels, separable, kernel_size, padding)
        self.norm2 = RMSNorm3d()
        self.conv2 = make_conv(out_channels, out_channels, separable, kernel_size, padding)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, stream: ChunkStream | None = None) -> torch.Tensor:
        h = self.norm1(x)
        h = F.relu(h) if self.first_relu else F.silu(h)
        h = self.conv2(F.silu(self.norm2(self.conv1(h, stream))), stream)
        return h + (self.shortcut(x) if self.shortcut is not None else x)
