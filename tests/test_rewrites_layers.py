"""Student layers: causal padding, separable convs, RMSNorm, ResBlocks, shuffle upsampler, separable fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effconv.models.turbo_vaed.layers.blocks import RMSNorm3d, ResBlock3d
from effconv.models.turbo_vaed.layers.separable import CausalConv3d, SeparableConv3d
from effconv.models.turbo_vaed.teacher_init import fit_separable
from effconv.models.turbo_vaed.layers.upsample import ShuffleUpsampler3d


def _video(channels=4, frames=5, height=6, width=7):
    return torch.randn(1, channels, frames, height, width)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_causal_conv_keeps_shape_and_ignores_future_frames(kernel):
    conv = CausalConv3d(4, 6, kernel).eval()
    x = _video()
    y = conv(x)
    x_future = x.clone()
    x_future[:, :, 3:] += 10.0
    assert y.shape == (1, 6, 5, 6, 7)
    assert torch.equal(conv(x_future)[:, :, :3], y[:, :, :3])


def test_causal_conv_pads_time_by_replicating_the_first_frame():
    conv = CausalConv3d(4, 6, 3)
    x = _video()
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)
    expected = F.conv3d(padded, conv.conv.weight, conv.conv.bias, padding=(0, 1, 1))
    torch.testing.assert_close(conv(x), expected)


def test_symmetric_conv_pads_time_with_edge_frames_on_both_sides():
    conv = CausalConv3d(4, 6, 5, padding="symmetric")
    x = _video()
    padded = F.pad(x, (0, 0, 0, 0, 2, 2), mode="replicate")
    expected = F.conv3d(padded, conv.conv.weight, conv.conv.bias, padding=(0, 2, 2))
    torch.testing.assert_close(conv(x), expected)


def test_separable_conv_equals_dense_conv_with_its_rank_one_kernel():
    sep = SeparableConv3d(4, 6, 5)
    depth = sep.depthwise.conv.weight[:, 0]  # (C, 5, 5, 5)
    point = sep.pointwise.weight[:, :, 0, 0, 0]  # (C_out, C)
    dense = CausalConv3d(4, 6, 5)
    with torch.no_grad():
        dense.conv.weight.copy_(point[:, :, None, None, None] * depth[None])
        dense.conv.bias.copy_(sep.pointwise.bias + point @ sep.depthwise.conv.bias)
    x = _video()
    torch.testing.assert_close(sep(x), dense(x), atol=1e-5, rtol=1e-5)


def test_separable_conv_parameter_count():
    sep = SeparableConv3d(512, 256, 5)
    assert sum(p.numel() for p in sep.parameters()) == 512 * 125 + 512 + 512 * 256 + 256


def test_rmsnorm_gives_unit_rms_over_channels_without_parameters():
    norm = RMSNorm3d()
    y = norm(_video(channels=8) * 5 + 1)
    rms = (y * y).mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-5, rtol=0)
    assert not list(norm.parameters())


def test_resblock_is_identity_plus_shortcut_when_its_branch_is_zero():
    block = ResBlock3d(8, 4, separable=False)
    with torch.no_grad():
        block.conv2.conv.weight.zero_()
        block.conv2.conv.bias.zero_()
    x = _video(channels=8)
    torch.testing.assert_close(block(x), block.shortcut(x))
    assert ResBlock3d(8, 8).shortcut is None


def test_resblock_first_activation_is_relu_when_asked():
    x = _video(channels=4)
    relu_block = ResBlock3d(4, 4, separable=True, first_relu=True)
    silu_block = ResBlock3d(4, 4, separable=True)
    silu_block.load_state_dict(relu_block.state_dict())
    assert not torch.allclose(relu_block(x), silu_block(x))


@pytest.mark.parametrize(
    ("rule", "frames", "expected"),
    [("causal", 3, 5), ("causal", 1, 1), ("full", 3, 6), ("causal-if-odd", 3, 5), ("causal-if-odd", 2, 4)],
)
def test_shuffle_upsampler_frame_counts(rule, frames, expected):
    up = ShuffleUpsampler3d(4, 2, 2, 2, frame_rule=rule)
    y = up(_video(frames=frames))
    assert y.shape == (1, 4, expected, 12, 14)


def test_shuffle_upsampler_factor_three_in_time_and_one_in_space():
    y = ShuffleUpsampler3d(4, 3, 1, 1)(_video(frames=3))
    assert y.shape == (1, 4, 7, 6, 7)


@torch.no_grad()
def test_separable_fit_is_exact_for_a_separable_dense_kernel():
    point, depth = torch.randn(6, 4), torch.randn(4, 3, 3, 3)
    weight = point[:, :, None, None, None] * depth[None]
    bias = torch.randn(6)
    dense = CausalConv3d(4, 6, 3)
    dense.conv.weight.copy_(weight)
    dense.conv.bias.copy_(bias)
    sep = SeparableConv3d(4, 6, 5)
    error = fit_separable(weight, bias, sep)
    x = _video()
    assert error < 1e-5
    torch.testing.assert_close(sep(x), dense(x), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_separable_fit_of_a_random_kernel_reports_a_large_error():
    weight = torch.randn(6, 4, 3, 3, 3)
    assert 0.5 < fit_separable(weight, None, SeparableConv3d(4, 6, 5)) < 1.0
