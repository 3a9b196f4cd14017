"""`--init from-teacher`: copy or fit the teacher weights whose shapes line up with the student's.

What lines up (widths permitting): the teacher's latent input conv (with its 1x1x1
post_quant_conv folded in when it has one) -> the student's conv_in, and the first ResBlocks of the
teacher's mid block -> the student's mid ResBlocks. A dense teacher conv feeding a separable
student conv is fitted per input channel c: the separable conv's effective kernel is
P[:, c] (x) D[c], a rank-1 (C_out x k^3) matrix, so the best fit is the leading singular pair of
W[:, c]. The relative fit error is reported. The norms differ (teachers use GroupNorm/RMSNorm with
affine, the student RMSNorm without), so even exact copies only approximate the teacher's blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from effconv.models.turbo_vaed.layers.separable import CausalConv3d, SeparableConv3d

MID_BLOCK_NAMES = ("mid_block", "block_in")


def _conv3d(module: nn.Module | None) -> nn.Conv3d | None:
    if isinstance(module, nn.Conv3d):
        return module
    inner = getattr(module, "conv", None)
    return inner if isinstance(inner, nn.Conv3d) else None


def _teacher_mid_resnets(decoder: nn.Module) -> list[nn.Module]:
    for name in MID_BLOCK_NAMES:
        resnets = getattr(getattr(decoder, name, None), "resnets", None)
        if resnets is not None:
            return list(resnets)
    return []


def _fold_pointwise(conv: nn.Conv3d, pointwise: nn.Conv3d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of conv(pointwise(x)); exact except where conv's zero padding meets the H/W border."""
    mix = pointwise.weight[:, :, 0, 0, 0]
    weight = torch.einsum("ojthw,ji->oithw", conv.weight, mix)
    bias = (conv.bias if conv.bias is not None else 0) + torch.einsum("ojthw,j->o", conv.weight, pointwise.bias)
    return weight, bias


def _embed_kernel(weight: torch.Tensor, size: int, causal: bool) -> torch.Tensor:
    """Place a k^3 kernel into size^3: centred in H/W; in T at the end for causal padding (so the
    newest frame keeps the same tap), centred otherwise."""
    k = weight.shape[-1]
    out = weight.new_zeros(*weight.shape[:2], size, size, size)
    start = (size - k) // 2
    t0 = size - k if causal else start
    out[:, :, t0 : t0 + k, start : start + k, start : start + k] = weight
    return out


def fit_separable(weight: torch.Tensor, bias: torch.Tensor | None, target: SeparableConv3d) -> float:
    """Set `target` to the best separable approximation of a dense conv; return the relative error."""
    depthwise, pointwise = target.depthwise, target.pointwise
    size = depthwise.kernel_size
    dense = _embed_kernel(weight, size, depthwise.padding == "causal")
    c_out, c_in = dense.shape[:2]
    per_channel = dense.permute(1, 0, 2, 3, 4).reshape(c_in, c_out, size**3)
    u, s, vh = torch.linalg.svd(per_channel, full_matrices=False)
    column = u[:, :, 0] * s[:, :1]
    taps = vh[:, 0, :]
    pointwise.weight.copy_(column.T.reshape(c_out, c_in, 1, 1, 1))
    depthwise.conv.weight.copy_(taps.reshape(c_in, 1, size, size, size))
    depthwise.conv.bias.zero_()
    pointwise.bias.copy_(bias if bias is not None else torch.zeros(c_out))
    fitted = torch.einsum("io,ik->iok", column, taps)
    return float((per_channel - fitted).norm() / per_channel.norm().clamp_min(1e-12))


def _load_conv(source: nn.Conv3d, target: nn.Module, weight=None, bias=None) -> str | None:
    weight = source.weight if weight is None else weight
    bias = source.bias if bias is None else bias
    if isinstance(target, CausalConv3d) and target.conv.weight.shape == weight.shape:
        target.conv.weight.copy_(weight)
        if bias is not None:
            target.conv.bias.copy_(bias)
        return "copied"
    if (isinstance(target, SeparableConv3d) and weight.shape[0] == target.pointwise.out_channels
            and weight.shape[1] == target.pointwise.in_channels and weight.shape[2] <= target.depthwise.kernel_size):
        return f"separable fit, relative error {fit_separable(weight, bias, target):.3f}"
    return None


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher_vae: nn.Module) -> dict[str, str]:
    """Initialize what lines up; return {student tensor group: what was done} for the manifest."""
    report = {}
    decoder = teacher_vae.decoder
    conv_in = _conv3d(getattr(decoder, "conv_in", None))
    post_quant = _conv3d(getattr(teacher_vae, "post_quant_conv", None))
    if conv_in is not None:
        weight, bias = conv_in.weight, conv_in.bias
        if post_quant is not None and post_quant.kernel_size == (1, 1, 1):
            weight, bias = _fold_pointwise(conv_in, post_quant)
        done = _load_conv(conv_in, student.conv_in, weight, bias)
        report["conv_in"] = done or f"kept random: teacher {tuple(weight.shape)} != student"
    resnets = _teacher_mid_resnets(decoder)
    for index, block in enumerate(student.mid_block):
        if index >= len(resnets):
            report[f"mid_block.{index}"] = "kept random: teacher mid block has fewer ResBlocks"
            continue
        for name in ("conv1", "conv2"):
            source = _conv3d(getattr(resnets[index], name, None))
            done = _load_conv(source, getattr(block, name)) if source is not None else None
            report[f"mid_block.{index}.{name}"] = done or "kept random: shapes do not line up"
    conv_out = _conv3d(getattr(decoder, "conv_out", None))
    if conv_out is not None:
        report["conv_out"] = _load_conv(conv_out, student.conv_out) or "kept random: widths differ"
    return report
