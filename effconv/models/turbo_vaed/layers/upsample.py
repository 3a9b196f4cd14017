"""The student's upsampler: a 3x3x3 conv widens C to C*s_t*s_h*s_w, then a decoupled pixel shuffle
moves those channels into (T, H, W). No interpolation op, every tensor rank <= 5."""

from __future__ import annotations

import torch
from torch import nn

from effconv.models.base import FRAME_RULES, FrameRule
from effconv.models.turbo_vaed.layers.pixel_shuffle import DecoupledPixelShuffle3d
from effconv.models.turbo_vaed.layers.separable import CausalConv3d, TemporalPadding
from effconv.models.turbo_vaed.layers.stream import ChunkStream


def keeps_first_frame_alone(rule: FrameRule, frames: int) -> bool:
    """Whether a temporal upsampler maps the first frame to one frame (dropping s_t-1 outputs)."""
    return rule == "causal" or (rule == "causal-if-odd" and frames % 2 == 1)


class ShuffleUpsampler3d(nn.Module):
    """(B, C, T, H, W) -> (B, C, T', H*s_h, W*s_w) with T' = 1 + s_t*(T-1) when the first frame is
    kept alone (see `frame_rule`), else s_t*T."""

    def __init__(self, channels: int, s_t: int, s_h: int, s_w: int, frame_rule: FrameRule = "causal",
                 padding: TemporalPadding = "causal"):
        super().__init__()
        if frame_rule not in FRAME_RULES:
            raise ValueError(f"frame_rule must be one of {FRAME_RULES}, got {frame_rule!r}")
        self.s_t = s_t
        self.frame_rule = frame_rule
        self.conv = CausalConv3d(channels, channels * s_t * s_h * s_w, 3, padding=padding)
        self.shuffle = DecoupledPixelShuffle3d(s_t, s_h, s_w, causal=False)

    def forward(self, x: torch.Tensor, stream: ChunkStream | None = None) -> torch.Tensor:
        frames = x.shape[2]
        x = self.shuffle(self.conv(x, stream))
        if stream is not None:  # the frame rule of a streamed clip cannot depend on its length (see stream.py)
            return stream.upsampled(x, self.s_t, drops_first=self.frame_rule == "causal")
        if self.s_t > 1 and keeps_first_frame_alone(self.frame_rule, frames):
            x = x[:, :, self.s_t - 1 :]
        return x
