import pytest
import torch

from effconv.models.turbo_vaed.layers.pixel_shuffle import DecoupledPixelShuffle3d


def reference_shuffle(x, s_t, s_h, s_w):
    """The one-step rank-8 rearrangement (what LTX-Video's upsampler does)."""
    b, c, t, h, w = x.shape
    c_out = c // (s_t * s_h * s_w)
    x = x.reshape(b, c_out, s_t, s_h, s_w, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c_out, t * s_t, h * s_h, w * s_w)


def reference_unshuffle(y, s_t, s_h, s_w):
    b, c, t, h, w = y.shape
    y = y.reshape(b, c, t // s_t, s_t, h // s_h, s_h, w // s_w, s_w).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return y.reshape(b, c * s_t * s_h * s_w, t // s_t, h // s_h, w // s_w)


FACTORS = [(2, 2, 2), (1, 2, 2), (2, 1, 1), (3, 2, 3), (1, 1, 2)]
SHAPES = [(1, 2, 1, 3, 5), (2, 3, 4, 7, 5), (1, 1, 5, 1, 1)]  # (B, C_out, T, H, W): odd sizes, 1 and many frames


@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("shape", SHAPES)
def test_decoupled_shuffle_equals_reference_rearrangement_exactly(factors, shape):
    s_t, s_h, s_w = factors
    b, c, t, h, w = shape
    x = torch.randn(b, c * s_t * s_h * s_w, t, h, w)
    out = DecoupledPixelShuffle3d(s_t, s_h, s_w, causal=False)(x)
    assert torch.equal(out, reference_shuffle(x, s_t, s_h, s_w))


@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("shape", SHAPES)
def test_decoupled_shuffle_inverts_pixel_unshuffle(factors, shape):
    s_t, s_h, s_w = factors
    b, c, t, h, w = shape
    video = torch.randn(b, c, t * s_t, h * s_h, w * s_w)
    restored = DecoupledPixelShuffle3d(s_t, s_h, s_w, causal=False)(reference_unshuffle(video, s_t, s_h, s_w))
    assert torch.equal(restored, video)


@pytest.mark.parametrize("frames", [1, 4])
def test_causal_shuffle_drops_leading_frames(frames):
    x = torch.randn(1, 8 * 3, frames, 3, 3)
    full = DecoupledPixelShuffle3d(2, 2, 2, causal=False)(x)
    causal = DecoupledPixelShuffle3d(2, 2, 2, causal=True)(x)
    assert causal.shape[2] == 2 * frames - 1
    assert torch.equal(causal, full[:, :, 1:])


def test_every_intermediate_tensor_has_rank_at_most_five():
    ranks = []

    class Recorder(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if isinstance(result, torch.Tensor):
                ranks.append(result.dim())
            return result

    with Recorder():
        DecoupledPixelShuffle3d(2, 2, 3)(torch.randn(1, 12 * 2, 3, 5, 4))
    assert ranks and max(ranks) <= 5
