"""Every legalizing rewrite replaces what it should and leaves the output unchanged (fp32, <= 1e-4)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effconv.legalize.ops import conv3d_as_conv2d, permute_low_rank
from effconv.legalize.rewrites import EQUIVALENCE_ATOL, MAX_RANK, REWRITES, _rank, legalize, resolve, rewrites_for


class WanTimeInterleave(nn.Module):
    """Wan's time upsampler: split channels in two, interleave them along time (a rank-6 stack)."""

    def forward(self, x):
        b, c2, t, h, w = x.shape
        x = x.reshape(b, 2, c2 // 2, t, h, w)
        x = torch.stack((x[:, 0], x[:, 1]), 3)
        return x.reshape(b, c2 // 2, t * 2, h, w)


class LTXDepthToSpace(nn.Module):
    """LTX's upsampler: channels -> (T, H, W) with an 8-D permute, as in diffusers."""

    def __init__(self, s_t=2, s_h=2, s_w=2):
        super().__init__()
        self.s = (s_t, s_h, s_w)

    def forward(self, x):
        b, c, t, h, w = x.shape
        s_t, s_h, s_w = self.s
        x = x.reshape(b, c // (s_t * s_h * s_w), s_t, s_h, s_w, t, h, w)
        return x.permute(0, 1, 5, 2, 6, 3, 7, 4).flatten(6, 7).flatten(4, 5).flatten(2, 3)


class Unpatchify(nn.Module):
    """Wan 2.2's unpatchify: a rank-7 view + permute that is not a depth-to-space shuffle."""

    def forward(self, x):
        b, c, t, h, w = x.shape
        x = x.view(b, c // 4, 2, 2, t, h, w).permute(0, 1, 4, 5, 3, 6, 2).contiguous()
        return x.view(b, c // 4, t, h * 2, w * 2)


class Nearest(nn.Module):
    def __init__(self, factors, mode):
        super().__init__()
        self.factors, self.mode = factors, mode

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.factors, mode=self.mode) + 1


class RMSNormPow(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-6)


class RMSNormSquare(nn.Module):
    """The students' RMSNorm: a mean over channels that keeps the dim."""

    def forward(self, x):
        return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + 1e-8)


class CausalRepeatPad(nn.Module):
    """A causal pad of `pad` copies of the first frame (0 copies for a 1-frame kernel)."""

    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return torch.cat([x[:, :, :1].repeat(1, 1, self.pad, 1, 1), x], dim=2) * 2


class ReplicatePad(nn.Module):
    """HunyuanVideo's causal conv padding: replicate H and W on both sides, time on the left only."""

    def forward(self, x):
        return F.pad(x, (1, 1, 2, 0, 2, 0), mode="replicate") + 1


class ChunkedNorm(nn.Module):
    """Mochi's chunked GroupNorm: split the batch into chunks (one chunk here), normalize, concatenate."""

    def forward(self, x):
        return torch.cat([F.group_norm(chunk, 1) for chunk in x.split(8, dim=0)], dim=0)


class Alias(nn.Module):
    def forward(self, x):
        return torch.ops.aten.alias(x) * 3


class RepeatInterleave(nn.Module):
    def forward(self, x):
        return x.repeat_interleave(2, dim=1) + 1


def conv3d(**kwargs):
    torch.manual_seed(1)
    return nn.Conv3d(**kwargs)


# rewrite name -> [(module, channels of its 5-D input), ...]
CASES = {
    "stack-as-permute": [(WanTimeInterleave(), 4)],
    "shuffle-decoupled": [(LTXDepthToSpace(), 16), (LTXDepthToSpace(1, 2, 2), 8), (LTXDepthToSpace(2, 1, 1), 4)],
    "legalize-rank5": [(Unpatchify(), 12)],
    "upsample-nearest": [(Nearest((2.0, 2.0, 2.0), "nearest"), 3), (Nearest((1.0, 2.0, 2.0), "nearest"), 3),
                         (Nearest((2.0, 2.0, 2.0), "nearest-exact"), 2)],
    "groupnorm-rank3": [(nn.GroupNorm(4, 8), 8), (nn.GroupNorm(2, 6, affine=False), 6)],
    "repeat-interleave-rank3": [(RepeatInterleave(), 3)],
    "pow-as-mul": [(RMSNormPow(), 5)],
    "channel-mean-as-conv": [(RMSNormSquare(), 5), (RMSNormSquare(), 1)],
    "replicate-pad-as-concat": [(ReplicatePad(), 3)],
    "drop-empty-concat": [(CausalRepeatPad(0), 3)],
    "alias-as-identity": [(Alias(), 3)],
    "single-split-as-identity": [(ChunkedNorm(), 3)],
    "conv3d-as-conv2d": [
        (conv3d(in_channels=3, out_channels=5, kernel_size=3), 3),
        (conv3d(in_channels=4, out_channels=6, kernel_size=(3, 3, 1), stride=(2, 1, 2), padding=(1, 1, 0)), 4),
        (conv3d(in_channels=3, out_channels=2, kernel_size=(2, 1, 3), dilation=(2, 1, 1), padding=(2, 0, 1)), 3),
        (conv3d(in_channels=3, out_channels=4, kernel_size=1), 3),
        (conv3d(in_channels=3, out_channels=4, kernel_size=(1, 3, 3), padding=(0, 1, 1)), 3),
    ],
    "dwconv3d-as-conv2d-taps": [
        (conv3d(in_channels=6, out_channels=6, kernel_size=5, padding=2, groups=6), 6),
        (conv3d(in_channels=4, out_channels=8, kernel_size=3, padding=(1, 0, 1), groups=2), 4),
        (conv3d(in_channels=4, out_channels=8, kernel_size=1, groups=2), 4),
    ],
}
# (frames, height, width): one frame, odd sizes, many frames
SHAPES = [(1, 5, 7), (3, 9, 11), (8, 6, 4)]


def _input(channels, frames, height, width, module):
    if isinstance(module, nn.Conv3d):
        needed = module.dilation[0] * (module.kernel_size[0] - 1) + 1 - 2 * module.padding[0]
        frames = max(frames, needed)
    return torch.randn(2 if frames > 1 else 1, channels, frames, height, width)


def test_every_rewrite_has_equivalence_cases():
    assert set(CASES) == set(REWRITES)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rewrite_matches_original_on_random_inputs(name, shape):
    for module, channels in CASES[name]:
        example = _input(channels, *shape, module.eval())
        legal = legalize(module, example, resolve([name]))
        assert legal.counts[name] >= 1, f"{name} did not apply to {module}"
        assert legal.max_abs_err <= EQUIVALENCE_ATOL
        fresh = _input(channels, *shape, module)  # a second random input through the same rewritten graph
        with torch.no_grad():
            assert torch.allclose(legal.module(fresh), module(fresh), atol=EQUIVALENCE_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["stack-as-permute", "shuffle-decoupled", "legalize-rank5"])
def test_rank_rewrites_leave_no_tensor_above_rank_5(name):
    module, channels = CASES[name][0]
    legal = legalize(module, _input(channels, 3, 5, 7, module), rewrites_for("coreml"))
    assert legal.max_abs_err <= EQUIVALENCE_ATOL
    assert max(_rank(node) for node in legal.module.graph.nodes) <= MAX_RANK


def test_nearest_exact_2d_becomes_nearest_with_same_values():
    module = Nearest((2.0, 2.0), "nearest-exact")
    for shape in [(1, 3, 5, 7), (4, 2, 8, 3)]:
        example = torch.randn(shape)
        legal = legalize(module, example, resolve(["upsample-nearest"]))
        assert legal.counts["upsample-nearest"] == 1
        assert legal.max_abs_err == 0.0


def test_conv3d_rewrites_leave_no_conv3d():
    module, channels = CASES["dwconv3d-as-conv2d-taps"][0]
    legal = legalize(module, _input(channels, 4, 7, 5, module), rewrites_for("tflite"))
    targets = {str(node.target) for node in legal.module.graph.nodes}
    assert "aten.conv3d.default" not in targets
    assert legal.max_abs_err <= EQUIVALENCE_ATOL


@pytest.mark.parametrize("perm", [p for i, p in enumerate(itertools.permutations(range(6))) if i % 37 == 0])
def test_permute_low_rank_equals_torch_permute(perm):
    shape = [2, 3, 1, 4, 5, 2]
    x = torch.randn(shape)
    moved = permute_low_rank(x, shape, list(perm))
    assert torch.equal(moved.reshape(-1), x.permute(perm).reshape(-1))


def test_unknown_rewrite_name_is_a_one_line_error():
    from effconv.errors import EffconvError

    with pytest.raises(EffconvError, match="unknown rewrite"):
        resolve(["no-such-rewrite"])


@pytest.mark.parametrize("groups", [1, 3])
def test_conv3d_as_conv2d_equals_torch_conv3d(groups):
    x = torch.randn(2, 6, 7, 9, 5)
    weight, bias = torch.randn(6, 6 // groups, 3, 3, 2), torch.randn(6)
    kwargs = dict(stride=(2, 1, 2), padding=(1, 1, 0), dilation=(1, 2, 1), groups=groups)
    expected = F.conv3d(x, weight, bias, **kwargs)
    assert torch.allclose(conv3d_as_conv2d(x, weight, bias, **kwargs), expected, atol=EQUIVALENCE_ATOL, rtol=0)


def test_pointwise_conv3d_becomes_one_conv2d_on_a_view_without_copies():
    """Most of a separable student's convolutions are 1x1x1: they must not pay for transposes or concatenations."""
    module, channels = CASES["conv3d-as-conv2d"][3]
    example = _input(channels, 4, 6, 5, module)
    legal = legalize(module, example, resolve(["conv3d-as-conv2d"]))
    ops = {str(node.target) for node in torch.export.export(legal.module, (example,)).graph.nodes if node.op == "call_function"}
    assert ops & {"aten.conv2d.default", "aten.convolution.default"}
    assert not ops & {"aten.transpose.int", "aten.permute.default", "aten.cat.default", "aten.clone.default"}
