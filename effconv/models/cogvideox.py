"""CogVideoX (`AutoencoderKLCogVideoX`): causal 3D convs with a frame-batched conv cache."""

from torch import nn

from effconv.models.base import Compression, FamilyAdapter, FrameRule


class CogVideoXAdapter(FamilyAdapter):
    class_name = "AutoencoderKLCogVideoX"
    family = "cogvideox"
    # CogVideoXMidBlock3D and CogVideoXUpBlock3D return (hidden_states, new_conv_cache): diffusers
    # models/autoencoders/autoencoder_kl_cogvideox.py.
    taps_return_conv_cache = True

    def compression(self, vae: nn.Module) -> Compression:
        config = vae.config
        # Every down block but the last halves H and W (CogVideoXDownBlock3D add_downsample).
        return Compression(
            latent_channels=int(config.latent_channels),
            temporal=int(config.temporal_compression_ratio),
            spatial=2 ** (len(config.block_out_channels) - 1),
        )

    def frame_rule(self, vae: nn.Module) -> FrameRule:
        # CogVideoXUpsample3D keeps the first frame apart only when the frame count is odd; an
        # even latent length T decodes to 4T frames, not 1 + 4(T-1).
        return "causal-if-odd"
