"""Lossless replacements for ops that mobile backends lack, written only with ops they have.

Each function computes exactly what the op it replaces computes (same values up to float
rounding) while keeping every tensor at rank <= 5, using nearest upsampling with integer factors,
and (for TFLite) only 2D convolutions. `effconv.legalize.rewrites` puts them into exported graphs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from effconv.models.turbo_vaed.layers.pixel_shuffle import DecoupledPixelShuffle3d


def permute_low_rank(x: torch.Tensor, shape: list[int], perm: list[int]) -> torch.Tensor:
    """Permute a tensor whose logical shape is `shape` (any rank) by `perm`, touching only rank-4 views.

    Each step moves one dimension forward past a block of its neighbours: view the data as
    (before, block, moved, after) and swap the middle two. Selection order needs at most
    rank-1 such swaps; swaps with a size-1 side move no data and are skipped.
    """
    dims = list(shape)
    order = list(range(len(shape)))
    for position, wanted in enumerate(perm):
        source = order.index(wanted)
        if source == position:
            continue
        before, block = math.prod(dims[:position]), math.prod(dims[position:source])
        moved, after = dims[source], math.prod(dims[source + 1 :])
        if block > 1 and moved > 1:
            x = x.reshape(before, block, moved, after).transpose(1, 2)
        dims = dims[:position] + [dims[source]] + dims[position:source] + dims[source + 1 :]
        order = order[:position] + [order[source]] + order[position:source] + order[source + 1 :]
    return x


def layout_chain(x: torch.Tensor, steps: list, out_shape: list[int]) -> torch.Tensor:
    """Replay a chain of reshapes and permutes (some of rank > 5) with tensors of rank <= 4."""
    shape = list(x.shape)
    for kind, value in steps:
        if kind == "reshape":
            shape = list(value)
        else:
            x = permute_low_rank(x, shape, list(value))
            shape = [shape[axis] for axis in value]
    return x.reshape(out_shape)


def depth_to_space_3d(x: torch.Tensor, s_t: int, s_h: int, s_w: int) -> torch.Tensor:
    """LTX/Mochi's 8-D channel-to-(T, H, W) shuffle, as the rank-5 decoupled shuffle (no frame drop)."""
    return DecoupledPixelShuffle3d(s_t, s_h, s_w, causal=False)(x)


def upsample_nearest(x: torch.Tensor, factors: list[int]) -> torch.Tensor:
    """Nearest upsampling by integer factors (also equal to nearest-exact for integer factors).

    Time (5-D input) is repeated by a rank-5 broadcast; height and width use 2D nearest resize,
    which Core ML (upsample_nearest_neighbor) and TFLite (RESIZE_NEAREST_NEIGHBOR) have.
    """
    if x.dim() == 5:
        batch, channels, frames, height, width = x.shape
        s_t, s_h, s_w = factors
        if s_t > 1:
            x = x.reshape(batch * channels, frames, 1, height * width)
            x = x.expand(batch * channels, frames, s_t, height * width)
            frames *= s_t
            x = x.reshape(batch, channels, frames, height, width)
        if s_h > 1 or s_w > 1:
            x = x.reshape(batch, channels * frames, height, width)
            x = F.interpolate(x, scale_factor=(float(s_h), float(s_w)), mode="nearest")
            x = x.reshape(batch, channels, frames, height * s_h, width * s_w)
        return x
    return F.interpolate(x, scale_factor=tuple(float(f) for f in factors), mode="nearest")


def group_norm_rank3(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """GroupNorm computed on a (B, G, rest) view, so a 5-D input never becomes a 6-D tensor."""
    shape = x.shape
    grouped = x.reshape(shape[0], groups, -1)
    centered = grouped - grouped.mean(dim=-1, keepdim=True)
    variance = (centered * centered).mean(dim=-1, keepdim=True)
    x = (centered * torch.rsqrt(variance + eps)).reshape(shape)
    affine_shape = [1, shape[1]] + [1] * (len(shape) - 2)
    if weight is not None:
        x = x * weight.reshape(affine_shape)
    if bias is not None:
        x = x + bias.reshape(affine_shape)
    return x


def repeat_interleave_low_rank(x: torch.Tensor, repeats: int, dim: int) -> torch.Tensor:
    """`x.repeat_interleave(repeats, dim)` through a rank-3 broadcast (the stock lowering adds a dimension)."""
    dim %= x.dim()
    shape = list(x.shape)
    outer, inner = math.prod(shape[: dim + 1]), math.prod(shape[dim + 1 :])
    x = x.reshape(outer, 1, inner).expand(outer, repeats, inner)
    shape[dim] *= repeats
    return x.reshape(shape)


def replicate_pad(x: torch.Tensor, pad: list[int]) -> torch.Tensor:
    """`F.pad(x, pad, mode="replicate")` as concatenations of broadcast edge slices (no gather)."""
    for index in range(0, len(pad), 2):
        dim = x.dim() - 1 - index // 2
        before, after = pad[index], pad[index + 1]
        pieces = []
        if before:
            edge = x.narrow(dim, 0, 1)
            pieces.append(edge.expand(*[before if d == dim else -1 for d in range(x.dim())]))
        pieces.append(x)
        if after:
            edge = x.narrow(dim, x.shape[dim] - 1, 1)
            pieces.append(edge.expand(*[after if d == dim else -1 for d in range(x.dim())]))
        if len(pieces) > 1:
            x = torch.cat(pieces, dim=dim)
    return x


def channel_mean_as_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x.mean(dim=1, keepdim=True)` as a 1x1 Conv2d whose weights are 1/C, over a (B, C, rest, 1) view."""
    shape = x.shape
    y = F.conv2d(x.reshape(shape[0], shape[1], -1, 1), weight)
    return y.reshape(shape[0], 1, *shape[2:])


def square(x: torch.Tensor) -> torch.Tensor:
    return x * x


def _time_taps(x: torch.Tensor, kernel_t: int, stride_t: int, dilation_t: int) -> tuple[list[torch.Tensor], int]:
    """The kernel_t time-shifted frame sequences a temporal kernel sees: each (B, T_out, C, H, W)."""
    frames = x.shape[2]
    out_frames = (frames - dilation_t * (kernel_t - 1) - 1) // stride_t + 1
    by_time = x.transpose(1, 2)
    last = stride_t * (out_frames - 1) + 1
    return [by_time[:, k * dilation_t : k * dilation_t + last : stride_t] for k in range(kernel_t)], out_frames


def conv3d_weight_for_conv2d(weight: torch.Tensor, groups: int):
    """Conv3d weight (O, C/g, kt, kh, kw) in the form the 2D rewrite consumes: for groups == 1 one
    (O, kt*C, kh, kw) weight matching frames stacked tap-major on channels, else one weight per tap."""
    out_channels, channels, kernel_t, kernel_h, kernel_w = weight.shape
    if groups == 1:
        return weight.permute(0, 2, 1, 3, 4).reshape(out_channels, kernel_t * channels, kernel_h, kernel_w)
    return weight.unbind(2)


def _is_pointwise(prepared_weight, kernel_t: int, stride, padding) -> bool:
    spatial = (prepared_weight if isinstance(prepared_weight, torch.Tensor) else prepared_weight[0]).shape[-2:]
    return kernel_t == 1 and tuple(spatial) == (1, 1) and list(stride) == [1, 1, 1] and not any(padding)


def conv3d_frames_as_conv2d(x, prepared_weight, bias, kernel_t: int, stride, padding, dilation, groups: int):
    """Conv3d as 2D convolutions over frames folded into the batch, given `conv3d_weight_for_conv2d`.

    groups == 1: the kernel_t shifted frame sequences are stacked on channels and one Conv2d sums
    over them. Grouped (e.g. depthwise): a sum of one grouped Conv2d per temporal tap, since
    stacking would interleave the groups.
    """
    if padding[0]:
        x = F.pad(x, (0, 0, 0, 0, padding[0], padding[0]))
    batch, channels, frames, height, width = x.shape
    if _is_pointwise(prepared_weight, kernel_t, stride, padding):
        # A 1x1x1 kernel never mixes frames or pixels: one Conv2d over the (B, C, T*H, W) view of the same
        # memory, no transposes or copies (most of a separable student's convolutions are pointwise).
        weight = prepared_weight if groups == 1 else prepared_weight[0]
        y = F.conv2d(x.reshape(batch, channels, frames * height, width), weight, bias, groups=groups)
        return y.reshape(batch, y.shape[1], frames, height, width)
    taps, out_frames = _time_taps(x, kernel_t, stride[0], dilation[0])
    conv = dict(stride=stride[1:], padding=padding[1:], dilation=dilation[1:], groups=groups)
    if groups == 1:
        stacked = (torch.cat(taps, dim=2) if len(taps) > 1 else taps[0]).reshape(
            batch * out_frames, kernel_t * channels, height, width)
        y = F.conv2d(stacked, prepared_weight, bias, **conv)
    else:
        y = None
        for k, tap in enumerate(taps):
            term = F.conv2d(tap.reshape(batch * out_frames, channels, height, width), prepared_weight[k],
                            bias if k == 0 else None, **conv)
            y = term if y is None else y + term
    return y.reshape(batch, out_frames, y.shape[1], y.shape[-2], y.shape[-1]).transpose(1, 2)


def conv3d_as_conv2d(x, weight, bias=None, stride=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1), groups=1):
    """`F.conv3d` computed with 2D convolutions only."""
    stride, padding, dilation = (list(v) * 3 if len(v) == 1 else list(v) for v in (stride, padding, dilation))
    prepared = conv3d_weight_for_conv2d(weight, groups)
    return conv3d_frames_as_conv2d(x, prepared, bias, weight.shape[2], stride, padding, dilation, groups)
