"""The Turbo-VAED student computed on frames folded into the batch: every tensor between input and output is
(T, C, H, W), time taps are slices of the batch, and every convolution is a Conv2d.

Why: XNNPACK runs convolutions channels-last on 4-D tensors. The per-conv Conv3d-as-Conv2d rewrite keeps the
model's (B, C, T, H, W) tensors between convs, so each conv pays a round trip: 5-D transpose to frames-major,
reshape to 4-D, NCHW -> NHWC, conv, NHWC -> NCHW, reshape and transpose back to 5-D. In ExecuTorch those layout
copies took 89 of 265 ms of the HunyuanVideo `turbo-vaed-mobile` student at 9x128x128 (ETDump). Here the
activations stay 4-D from the first conv to the last, so XNNPACK keeps them channels-last throughout; layout
copies remain only at the input, the output and each upsampler's temporal shuffle.

The same arithmetic as `TurboVAEDDecoder.forward` (whole clip, batch 1), checked by `convert` on the spec's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effconv.legalize.ops import conv3d_weight_for_conv2d
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.models.turbo_vaed.layers.blocks import ResBlock3d
from effconv.models.turbo_vaed.layers.separable import CausalConv3d, SeparableConv3d, pad_frames
from effconv.models.turbo_vaed.layers.upsample import PatchUpsampler, ShuffleUpsampler3d, keeps_first_frame_alone


def _conv2d_like(conv: nn.Conv3d, weight: torch.Tensor, with_bias: bool = True) -> nn.Conv2d:
    """A Conv2d with `conv`'s spatial geometry carrying `weight` (O, C/g, kh, kw)."""
    out = nn.Conv2d(weight.shape[1] * conv.groups, weight.shape[0], tuple(weight.shape[-2:]), padding=conv.padding[1:],
                    groups=conv.groups, bias=with_bias and conv.bias is not None)
    out.weight.data.copy_(weight)
    if out.bias is not None:
        out.bias.data.copy_(conv.bias.detach())
    return out


class FramesConv(nn.Module):
    """A `CausalConv3d` (or a plain 1x1x1 Conv3d) on (T, C, H, W): edge frames replicated by concatenation, one
    Conv2d over the taps stacked on channels (dense) or one grouped Conv2d per tap, summed (depthwise)."""

    def __init__(self, conv: CausalConv3d | nn.Conv3d):
        super().__init__()
        inner = conv.conv if isinstance(conv, CausalConv3d) else conv
        self.kernel_t = inner.weight.shape[2]
        self.padding = conv.padding if isinstance(conv, CausalConv3d) else "causal"
        prepared = conv3d_weight_for_conv2d(inner.weight.detach(), inner.groups)
        taps = [prepared] if inner.groups == 1 else prepared
        self.taps = nn.ModuleList(_conv2d_like(inner, weight, with_bias=k == 0) for k, weight in enumerate(taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[0]
        x = pad_frames(x, self.kernel_t, self.padding, dim=0)
        shifted = [x[k:k + frames] for k in range(self.kernel_t)]
        if len(self.taps) == 1:
            return self.taps[0](torch.cat(shifted, dim=1) if len(shifted) > 1 else shifted[0])
        out = self.taps[0](shifted[0])
        for tap, frames_k in zip(self.taps[1:], shifted[1:]):
            out = out + tap(frames_k)
        return out


def _frames_conv(conv: nn.Module) -> nn.Module:
    if isinstance(conv, SeparableConv3d):
        return nn.Sequential(FramesConv(conv.depthwise), FramesConv(conv.pointwise))
    return FramesConv(conv)


class FramesResBlock(nn.Module):
    def __init__(self, block: ResBlock3d):
        super().__init__()
        self.first_relu = block.first_relu
        self.norm1, self.norm2 = block.norm1, block.norm2  # a channel RMS norm: dim 1 of (T, C, H, W) as of 5-D
        self.conv1, self.conv2 = _frames_conv(block.conv1), _frames_conv(block.conv2)
        self.shortcut_norm = block.shortcut_norm  # a channel LayerNorm: dim 1 as well
        self.shortcut = _frames_conv(block.shortcut) if block.shortcut is not None else None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return x
        return self.shortcut(self.shortcut_norm(x) if self.shortcut_norm is not None else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        h = F.relu(h) if self.first_relu else F.silu(h)
        h = self.conv2(F.silu(self.norm2(self.conv1(h))))
        return h + self.residual(x)


class FramesUpsampler(nn.Module):
    """Conv to C*s_t*s_h*s_w channels, then the decoupled shuffle: channel block i_t becomes frame t*s_t + i_t
    (one 4-D permute), then 2D pixel shuffle; the first s_t-1 frames dropped as the frame rule says."""

    def __init__(self, upsampler: ShuffleUpsampler3d):
        super().__init__()
        self.conv = FramesConv(upsampler.conv)
        self.s_t, self.s_h, self.s_w = upsampler.shuffle.s_t, upsampler.shuffle.s_h, upsampler.shuffle.s_w
        self.frame_rule = upsampler.frame_rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, _, height, width = x.shape
        x = self.conv(x)
        spatial = self.s_h * self.s_w
        channels = x.shape[1] // (self.s_t * spatial)
        x = x.reshape(frames, channels, self.s_t, spatial * height * width).transpose(1, 2)
        x = x.reshape(frames * self.s_t, channels * spatial, height, width)
        if self.s_h == self.s_w:
            x = F.pixel_shuffle(x, self.s_h)
        else:
            x = x.reshape(-1, channels, self.s_h, self.s_w, height, width).permute(0, 1, 4, 2, 5, 3)
            x = x.reshape(-1, channels, height * self.s_h, width * self.s_w)
        if self.s_t > 1 and keeps_first_frame_alone(self.frame_rule, frames):
            x = x[self.s_t - 1:]
        return x


class FramesPatchUpsampler(nn.Module):
    """An output-patching stage on (T, C, H, W): norm, SiLU, the per-frame conv as a Conv2d, 2D pixel shuffle."""

    def __init__(self, stage: PatchUpsampler):
        super().__init__()
        self.norm = stage.norm
        self.conv = FramesConv(stage.conv)
        self.factor = stage.shuffle.s_h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(F.silu(self.norm(x))), self.factor)


class FramesInBatchDecoder(nn.Module):
    """latent (1, C, T, h, w) -> video (1, 3, F, H, W), as the wrapped student decodes it, through 4-D tensors."""

    def __init__(self, decoder: TurboVAEDDecoder):
        super().__init__()
        self.conv_in = FramesConv(decoder.conv_in)
        blocks = list(decoder.mid_block)
        for up in decoder.up_blocks:
            blocks += [up.conv_in] if up.conv_in is not None else []
            blocks += [up.upsampler] if up.upsampler is not None else []
            blocks += list(up.resnets)
        self.blocks = nn.ModuleList(FramesUpsampler(b) if isinstance(b, ShuffleUpsampler3d) else FramesResBlock(b)
                                    for b in blocks)
        self.blocks.extend(FramesPatchUpsampler(stage) for stage in decoder.patch_upsamplers)
        self.norm_out = decoder.norm_out
        self.conv_out = FramesConv(decoder.conv_out)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        # reshapes, not select/unsqueeze: XNNPACK takes views, and an op outside it splits the program
        x = self.conv_in(latent.reshape(latent.shape[1:]).transpose(0, 1))
        for block in self.blocks:
            x = block(x)
        video = self.conv_out(F.silu(self.norm_out(x))).transpose(0, 1)
        return video.reshape(1, *video.shape)
