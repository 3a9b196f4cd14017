"""Students in the format the Turbo-VAED authors release them: `AutoencoderKLTurboVAED` checkpoints.

The authors' class (github.com/hustvl/Turbo-VAED, `autoencoder_kl_turbo_vaed.py` in their fork of diffusers) is a
decoder-only VAE; its `save_pretrained` writes a config.json and the decoder's weights under `decoder.`, next to two
unused latent statistics and the distillation's feature-projection heads. Its decoder is the network
`TurboVAEDDecoder` computes, so effconv builds a `TurboVAEDDecoder` from the config (`decoder_config`) and maps the
weights onto it (`decoder_state_dict`), strictly: every tensor the decoder needs must be in the file, and every
decoder tensor in the file must be used.

What differs is bookkeeping: their config lists blocks from the output end (reversed here), their upsampler conv
orders its output channels (c, h, w, t) where effconv's shuffle reads (c, t, h, w) (permuted here), and their
output-patching convs are Conv2d (a (1, 3, 3) Conv3d here).
"""

from __future__ import annotations

import re

import torch

from effconv.errors import EffconvError
from effconv.models.keys import listed_key_differences

RELEASED_CLASS = "AutoencoderKLTurboVAED"
DECODER_PREFIX = "decoder."
# Outside the decoder: latent statistics decode() never reads, and the heads that project student features onto
# the teacher's during distillation.
UNUSED_PREFIXES = ("latents_mean", "latents_std", "aligned_feature_projection_heads.")

# The authors' __init__ defaults: what from_pretrained takes for a key their config.json leaves out.
DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "decoder_block_out_channels": [128, 256, 512, 512],
    "layers_per_block": [4, 3, 3, 3, 4],
    "decoder_layers_per_block": [4, 3, 3, 3, 4],
    "spatio_temporal_scaling": [True, True, True, False],
    "decoder_spatio_temporal_scaling": [True, True, True, False],
    "decoder_inject_noise": [False, False, False, False, False],
    "upsample_residual": [False, False, False, False],
    "upsample_factor": [1, 1, 1, 1],
    "timestep_conditioning": False,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "scaling_factor": 1.0,
    "decoder_causal": False,
    "spatial_compression_ratio": None,
    "temporal_compression_ratio": None,
    "decoder_is_dw_conv": [False, False, False, False, False],
    "decoder_dw_kernel_size": 3,
    "decoder_spatio_only": [False, False, False, False],
    "is_video_dc_ae": False,
    "aligned_feature_projection_mode": None,
    "aligned_feature_projection_dim": None,
    "aligned_blks_indices": None,
}
PER_UP_BLOCK = ("decoder_block_out_channels", "decoder_spatio_temporal_scaling", "decoder_spatio_only",
                "upsample_factor")
PER_BLOCK = ("decoder_layers_per_block", "decoder_is_dw_conv", "decoder_inject_noise")
RELEASED_PATCHES = (1, 2, 4)  # their decoder has output stages for 2 and 4 only


def _refuse(what: str, fix: str) -> EffconvError:
    return EffconvError(f"this {RELEASED_CLASS} config {what}", fix)


def full_config(config: dict) -> dict:
    """The config with the authors' defaults for missing keys; unknown keys refused (`_`-prefixed ones are
    diffusers' bookkeeping)."""
    unknown = sorted(key for key in config if key not in DEFAULTS and not key.startswith("_"))
    if unknown:
        raise _refuse(f"has key(s) {', '.join(unknown)}, which the authors' class does not take.",
                      f"remove them; it takes: {', '.join(DEFAULTS)}.")
    return {**DEFAULTS, **{key: value for key, value in config.items() if not key.startswith("_")}}


def _check_supported(config: dict) -> None:
    ups = len(config["decoder_block_out_channels"])
    for key in PER_UP_BLOCK + PER_BLOCK:
        wanted = ups + (key in PER_BLOCK)
        if not isinstance(config[key], (list, tuple)) or len(config[key]) != wanted:
            raise _refuse(f"has {key} {config[key]!r}: it needs {wanted} entries (decoder_block_out_channels has {ups}).",
                          "fix config.json (the authors' model cannot be built from it either).")
    if config["timestep_conditioning"] or any(config["decoder_inject_noise"]):
        raise _refuse("conditions on a timestep or injects noise, which no released student does and effconv does not "
                      "build.", "use a checkpoint with timestep_conditioning false and decoder_inject_noise all false.")
    if any(factor != 1 for factor in config["upsample_factor"]):
        raise _refuse(f"has upsample_factor {config['upsample_factor']}, which no released student uses and effconv does "
                      "not build.", "use a checkpoint with upsample_factor all 1.")
    if config["patch_size"] not in RELEASED_PATCHES or config["patch_size_t"] != 1:
        raise _refuse(f"patchifies with patch_size {config['patch_size']}, patch_size_t {config['patch_size_t']}; the "
                      f"authors' decoder unpatchifies patch_size {', '.join(map(str, RELEASED_PATCHES))} with "
                      "patch_size_t 1 only.", "use a checkpoint with one of those.")
    if config["decoder_causal"] and any(config["decoder_is_dw_conv"]):
        raise _refuse("is decoder_causal with depthwise-separable blocks: the authors' separable convs pad time "
                      "symmetrically even then, so the decoder is neither causal (it cannot stream) nor symmetric.",
                      "use a decoder_causal: false checkpoint (every released config is one).")


def decoder_config(config: dict) -> dict:
    """`TurboVAEDDecoder`'s config for the decoder an `AutoencoderKLTurboVAED` config describes."""
    config = full_config(config)
    _check_supported(config)
    widths = list(reversed(config["decoder_block_out_channels"]))
    scaling = list(reversed(config["decoder_spatio_temporal_scaling"]))
    spatial_only = list(reversed(config["decoder_spatio_only"]))
    kernel = int(config["decoder_dw_kernel_size"])
    if kernel < 1 or kernel % 2 == 0:
        raise _refuse(f"has decoder_dw_kernel_size {kernel}; effconv builds odd kernels only.", "use an odd kernel size.")
    return {
        "latent_channels": int(config["latent_channels"]),
        "out_channels": int(config["out_channels"]),
        "widths": [widths[0], *widths],
        "layers": list(reversed(config["decoder_layers_per_block"])),
        "separable": list(reversed(config["decoder_is_dw_conv"])),
        "upsample_factors": [[1, 2, 2] if only else [2, 2, 2] if scales else [1, 1, 1]
                             for scales, only in zip(scaling, spatial_only)],
        "kernel_size": kernel,
        "temporal_padding": "causal" if config["decoder_causal"] else "symmetric",
        "frame_rule": "full" if config["is_video_dc_ae"] else "causal",
        "output_patch": int(config["patch_size"]),
        "shortcut_norm": float(config["resnet_norm_eps"]),
    }


# effconv's key -> the authors' key, applied in order (each pattern sees the previous ones' output).
TO_RELEASED = (
    (r"^mid_block\.(\d+)\.", r"mid_block.resnets.\1."),
    (r"\.upsampler\.", ".upsamplers.0."),
    (r"^patch_upsamplers\.(\d+)\.", lambda m: f"upsampler2d_{int(m[1]) + 1}."),
    (r"\.depthwise\.conv\.", ".depthwise_conv."),
    (r"\.pointwise\.", ".pointwise_conv."),
    (r"\.shortcut_norm\.", ".norm3."),
    (r"\.shortcut\.(depthwise_conv|pointwise_conv)\.", r".conv_shortcut.\1."),
    (r"\.shortcut\.(weight|bias)$", r".conv_shortcut.conv.\1"),
)


def released_key(key: str) -> str:
    """The authors' state_dict key for one of `TurboVAEDDecoder`'s."""
    for pattern, replacement in TO_RELEASED:
        key = re.sub(pattern, replacement, key)
    return DECODER_PREFIX + key


def _upsampler_channel_order(channels: int, factors: tuple[int, int, int]) -> torch.Tensor:
    """For each output channel of effconv's upsampler conv, the authors' channel that holds its weights: theirs
    index (c, h, w, t), effconv's (c, t, h, w)."""
    s_t, s_h, s_w = factors
    return torch.arange(channels).reshape(-1, s_h, s_w, s_t).permute(0, 3, 1, 2).reshape(-1)


def _converted(key: str, tensor: torch.Tensor, expected: torch.Tensor, decoder) -> torch.Tensor:
    if key.startswith("patch_upsamplers.") and key.endswith(".weight"):
        tensor = tensor.unsqueeze(2)  # their Conv2d runs per frame
    match = re.fullmatch(r"up_blocks\.(\d+)\.upsampler\.conv\.conv\.(weight|bias)", key)
    if match and tensor.shape == expected.shape:
        upsampler = decoder.up_blocks[int(match[1])].upsampler
        tensor = tensor[_upsampler_channel_order(tensor.shape[0], (upsampler.s_t, upsampler.shuffle.s_h,
                                                                   upsampler.shuffle.s_w))]
    return tensor


def decoder_state_dict(tensors: dict[str, torch.Tensor], decoder, source: str) -> dict[str, torch.Tensor]:
    """`decoder`'s state_dict from an `AutoencoderKLTurboVAED` checkpoint's tensors; a tensor the decoder needs and
    the file lacks, a decoder tensor it cannot place, or a shape that differs is an EffconvError naming it."""
    expected = decoder.state_dict()
    wanted = {released_key(key): key for key in expected}
    unused = [key for key in tensors if key.startswith(UNUSED_PREFIXES)]
    unexpected = sorted(key for key in tensors if key not in wanted and key not in unused)
    missing = sorted(key for key in wanted if key not in tensors)
    if missing or unexpected:
        raise EffconvError(f"{source} does not hold the weights of the {RELEASED_CLASS} its config describes: "
                           f"{listed_key_differences(missing, unexpected)}.",
                           "check that config.json (or model.config) is the one saved with these weights.")
    state = {}
    for theirs, ours in wanted.items():
        tensor = _converted(ours, tensors[theirs], expected[ours], decoder)
        if tensor.shape != expected[ours].shape:
            raise EffconvError(f"{source}: {theirs} has shape {list(tensors[theirs].shape)}, the decoder its config "
                               f"describes needs {list(expected[ours].shape)}.",
                               "check that config.json (or model.config) is the one saved with these weights.")
        state[ours] = tensor
    return state

