"""Wan 2.1 / 2.2 (`AutoencoderKLWan`): causal 3D convs, nearest-exact upsampling, 2.2 adds patchify."""

from torch import nn

from effconv.models.base import Compression, FamilyAdapter


class WanAdapter(FamilyAdapter):
    class_name = "AutoencoderKLWan"
    family = "wan"

    def output_patch(self, vae: nn.Module) -> int:
        return int(vae.config.patch_size or 1)

    def compression(self, vae: nn.Module) -> Compression:
        # Derived from the block structure rather than the scale_factor_* config fields, which
        # are free-standing numbers that a reduced config can leave inconsistent.
        config = vae.config
        patch = self.output_patch(vae)
        return Compression(
            latent_channels=int(config.z_dim),
            temporal=2 ** sum(bool(flag) for flag in config.temperal_downsample),
            spatial=2 ** (len(config.dim_mult) - 1) * patch,
        )
