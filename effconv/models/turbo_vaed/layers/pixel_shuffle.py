"""Decoupled 3D pixel shuffle: depth-to-space over (T, H, W) with every tensor rank <= 5.

Channel layout (as in LTX-Video's upsampler; the released Turbo-VAED students order time last, and
`effconv.models.turbo_vaed.released` reorders their weights to this): input channel index
`c * (s_t*s_h*s_w) + i_t * (s_h*s_w) + i_h * s_w + i_w` moves to output position
`(c, t*s_t + i_t, h*s_h + i_h, w*s_w + i_w)`. The one-step reshape that does this needs rank 8,
which Core ML (rank <= 5) rejects; here the temporal factor is shuffled first with T kept apart,
then T is folded into the batch and the spatial factors use 2D pixel_shuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DecoupledPixelShuffle3d(nn.Module):
    """(B, C*s_t*s_h*s_w, T, H, W) -> (B, C, T*s_t - (s_t-1 if causal), H*s_h, W*s_w)."""

    def __init__(self, s_t: int, s_h: int, s_w: int, causal: bool = True):
        super().__init__()
        if min(s_t, s_h, s_w) < 1:
            raise ValueError(f"shuffle factors must be >= 1, got {(s_t, s_h, s_w)}")
        self.s_t, self.s_h, self.s_w = s_t, s_h, s_w
        self.causal = causal

    @property
    def factor(self) -> int:
        return self.s_t * self.s_h * self.s_w

    def extra_repr(self) -> str:
        return f"s_t={self.s_t}, s_h={self.s_h}, s_w={self.s_w}, causal={self.causal}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        out_channels = channels // self.factor
        spatial = self.s_h * self.s_w
        # temporal: (B*C, s_t, s_h*s_w, T, H*W) -> (B*C, s_h*s_w, T, s_t, H*W) -> (B*C, s_h*s_w, T*s_t, H, W)
        x = x.reshape(batch * out_channels, self.s_t, spatial, frames, height * width)
        x = x.permute(0, 2, 3, 1, 4)
        frames = frames * self.s_t
        x = x.reshape(batch * out_channels, spatial, frames, height, width)
        # spatial: fold T into the batch, then depth-to-space on (H, W)
        x = x.transpose(1, 2).reshape(batch * out_channels * frames, spatial, height, width)
        if self.s_h == self.s_w:
            x = F.pixel_shuffle(x, self.s_h)
        else:
            x = x.reshape(-1, self.s_h, self.s_w, height, width).permute(0, 3, 1, 4, 2)
        x = x.reshape(batch, out_channels, frames, height * self.s_h, width * self.s_w)
        if self.causal and self.s_t > 1:
            x = x[:, :, self.s_t - 1 :]
        return x
