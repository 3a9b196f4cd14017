"""LTX-Video (`AutoencoderKLLTXVideo`): patchified latents, 8-D permute upsampler, optional timestep."""

import torch
from torch import nn

from effconv.models.base import DecodePart, FamilyAdapter

# diffusers' LTX pipelines decode at timestep 0.0 unless told otherwise.
DECODE_TIMESTEP = 0.0


class LTXDecodePart(DecodePart):
    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        temb = None
        if self.vae.config.timestep_conditioning:
            temb = torch.full((latent.shape[0],), DECODE_TIMESTEP, dtype=latent.dtype, device=latent.device)
        return self.vae.decode(latent, temb=temb, return_dict=False)[0]


class LTXVideoAdapter(FamilyAdapter):
    class_name = "AutoencoderKLLTXVideo"
    family = "ltx"
    decode_part_class = LTXDecodePart

    def output_patch(self, vae: nn.Module) -> int:
        return int(vae.config.patch_size)
