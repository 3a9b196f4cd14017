"""The student's upsamplers, no interpolation op, every tensor rank <= 5.

In the up blocks a 3x3x3 conv widens C to C*s_t*s_h*s_w, then a decoupled pixel shuffle moves those channels
into (T, H, W). After the up blocks, output patching (for teachers whose latents are patchified, like LTX-Video
and Wan 2.2 5B) makes the last 2x steps of the resolution with a per-frame 3x3 conv and a 2x2 depth-to-space that
narrows C to C/4, so every block before it runs at 1/p of the output resolution: the sub-pixel convolution of
Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel CNN" (CVPR 2016), and
the `patch_size` output stages of the released Turbo-VAED students.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effconv.models.base import FRAME_RULES, FrameRule
from effconv.models.turbo_vaed.layers.blocks import RMSNorm3d
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


PATCH_STAGE_FACTOR = 2  # each output-patching stage doubles H and W, as in the released students


def patch_stages(output_patch: int) -> int:
    """How many 2x depth-to-space stages make an output patch of `output_patch` (a power of two)."""
    stages = output_patch.bit_length() - 1
    if output_patch < 1 or PATCH_STAGE_FACTOR**stages != output_patch:
        raise ValueError(f"output_patch must be a power of two, got {output_patch}")
    return stages


class PatchUpsampler(nn.Module):
    """(B, C, T, H, W) -> (B, C/4, T, 2H, 2W): RMSNorm, SiLU, a per-frame 3x3 conv (kernel (1, 3, 3), so nothing
    to stream), then a 2x2 depth-to-space."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm3d()
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))
        self.shuffle = DecoupledPixelShuffle3d(1, PATCH_STAGE_FACTOR, PATCH_STAGE_FACTOR, causal=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(F.silu(self.norm(x))))
