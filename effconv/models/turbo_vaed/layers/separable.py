"""Causal 3D convolutions: dense and depthwise-separable.

Temporal padding replicates edge frames instead of zero-padding, as the teachers' causal convs do:
`causal` pads k_t-1 copies of the first frame in front (frame t sees only frames <= t, so a
decoder can stream), `symmetric` pads (k_t-1)/2 copies of the first and last frame on each side
(the public Turbo-VAED configs use this, `decoder_causal: false`). H and W are zero-padded.
Padding is a concat of repeated frames, which every export backend supports.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from effconv.models.turbo_vaed.layers.stream import ChunkStream

TemporalPadding = Literal["causal", "symmetric"]


def pad_frames(x: torch.Tensor, kernel_size: int, padding: TemporalPadding, dim: int) -> torch.Tensor:
    """`x` with the edge frames along `dim` replicated as a temporal kernel of `kernel_size` needs them."""
    if kernel_size == 1:
        return x
    # Edge frames copied by concatenating slices, not by repeat: ExecuTorch's XNNPACK delegate takes slice and
    # concatenate but not repeat, and every op left outside the delegate splits the program in two.
    before = (slice(None),) * dim
    first, last = x[(*before, slice(None, 1))], x[(*before, slice(-1, None))]
    if padding == "causal":
        return torch.cat([first] * (kernel_size - 1) + [x], dim=dim)
    half = kernel_size // 2
    return torch.cat([first] * half + [x] + [last] * half, dim=dim)


class CausalConv3d(nn.Module):
    """Conv3d (stride 1, cubic kernel) that keeps T, H and W; frames padded by replication."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, groups: int = 1,
                 padding: TemporalPadding = "causal"):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.padding = padding
        half = kernel_size // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=(0, half, half), groups=groups)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"

    def forward(self, x: torch.Tensor, stream: ChunkStream | None = None) -> torch.Tensor:
        if stream is not None and self.kernel_size > 1:
            return self.conv(stream.pad(x, self.kernel_size - 1))
        return self.conv(pad_frames(x, self.kernel_size, self.padding, dim=2))


class SeparableConv3d(nn.Module):
    """Depthwise `Conv3d(C, C, k, groups=C)` then pointwise `Conv3d(C, C_out, 1)`.

    Costs C*k^3 + C*C_out weights instead of C*C_out*k^3 for a dense conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5,
                 padding: TemporalPadding = "causal"):
        super().__init__()
        self.depthwise = CausalConv3d(in_channels, in_channels, kernel_size, groups=in_channels, padding=padding)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, stream: ChunkStream | None = None) -> torch.Tensor:
        return self.pointwise(self.depthwise(x, stream))
