"""Mochi (`AutoencoderKLMochi`): 6x temporal / 8x spatial, drops the leading frames after decoding."""

from torch import nn

from effconv.models.base import Compression, FamilyAdapter


class MochiAdapter(FamilyAdapter):
    class_name = "AutoencoderKLMochi"
    family = "mochi"
    feature_taps = {"mid": "decoder.block_in", "up0": "decoder.up_blocks.0"}
    # MochiMidBlock3D (block_in) and MochiUpBlock3D return (hidden_states, new_conv_cache): diffusers
    # models/autoencoders/autoencoder_kl_mochi.py.
    taps_return_conv_cache = True

    def compression(self, vae: nn.Module) -> Compression:
        base = super().compression(vae)
        return Compression(
            latent_channels=base.latent_channels,
            temporal=base.temporal,
            spatial=base.spatial,
            causal=bool(vae.drop_last_temporal_frames),
        )
