"""The Turbo-VAED student decoder and the builder that derives it from a teacher.

The student keeps the teacher's latent channels and compression (read from the family adapter's
`compression()`), so it decodes the same latents to the same video shape; its widths and block
layout come from a recipe. Layout (paper): conv_in -> mid block -> up blocks -> [output patching] ->
RMSNorm, SiLU, conv_out. An up block first changes width with a ResBlock (1x1x1 shortcut), then upsamples
with a conv + decoupled pixel shuffle at the NEW (smaller) width, then runs its ResBlocks. Output patching
(layers/upsample.py) makes the last 2x steps of H and W after the up blocks, for teachers that patchify.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.limits import check_size
from effconv.quiet import quiet_imports
from effconv.recipe import StudentRecipe
from effconv.models.turbo_vaed.layers.blocks import DENSE_KERNEL, RELEASED_SHORTCUT_NORM_EPS, RMSNorm3d, ResBlock3d
from effconv.models.turbo_vaed.layers.separable import CausalConv3d
from effconv.models.turbo_vaed.layers.stream import ChunkStream
from effconv.models.turbo_vaed.layers.upsample import PatchUpsampler, ShuffleUpsampler3d, patch_stages

with quiet_imports():
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin

MID_TAP = "mid_block"


class TurboUpBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, factors: tuple[int, int, int],
                 separable: bool, kernel_size: int, padding: str, frame_rule: str, shortcut_norm: float | None):
        super().__init__()
        self.conv_in = None
        if in_channels != out_channels:
            self.conv_in = ResBlock3d(in_channels, out_channels, separable, kernel_size, padding,
                                      shortcut_norm=shortcut_norm)
        self.upsampler = None
        upsamples = math.prod(factors) > 1
        if upsamples:
            self.upsampler = ShuffleUpsampler3d(out_channels, *factors, frame_rule=frame_rule, padding=padding)
        self.resnets = nn.ModuleList(
            ResBlock3d(out_channels, out_channels, separable, kernel_size, padding, first_relu=upsamples)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, stream: ChunkStream | None = None) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x, stream)
        if self.upsampler is not None:
            x = self.upsampler(x, stream)
        for block in self.resnets:
            x = block(x, stream)
        return x


class TurboVAEDDecoder(ModelMixin, ConfigMixin):
    """latent (B, latent_channels, T, h, w) -> video (B, out_channels, F, h*S, w*S).

    S_t is the product of the temporal `upsample_factors`, S the product of the spatial ones times `output_patch`;
    F follows the teacher's `frame_rule` (`effconv.models.base.FrameRule`): 1 + S_t*(T-1) for causal teachers,
    S_t*T for "full". `output_patch` (a power of two) ends the decoder with that many 2x depth-to-space stages,
    each narrowing the width 4x, so widths[-1] must be a multiple of output_patch**2. `shortcut_norm`: see
    `ResBlock3d` (None in students saved before effconv had it, which therefore load unchanged).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        out_channels: int = 3,
        widths: tuple[int, ...] = (512, 512, 256, 32, 16),
        layers: tuple[int, ...] = (5, 4, 4, 4, 5),
        separable: tuple[bool, ...] = (True, True, False, False, False),
        upsample_factors: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        kernel_size: int = 5,
        temporal_padding: str = "causal",
        frame_rule: str = "causal",
        output_patch: int = 1,
        shortcut_norm: float | None = None,
    ):
        super().__init__()
        if not (len(widths) == len(layers) == len(separable) == len(upsample_factors) + 1):
            raise ValueError("widths, layers and separable need one entry per block; upsample_factors one per up block")
        stages = patch_stages(output_patch)
        if widths[-1] % output_patch**2:
            raise ValueError(f"output_patch {output_patch} narrows the last width {widths[-1]} {output_patch**2}x: it "
                             f"must be a multiple of {output_patch**2}")
        self.conv_in = CausalConv3d(latent_channels, widths[0], DENSE_KERNEL, padding=temporal_padding)
        self.mid_block = nn.ModuleList(
            ResBlock3d(widths[0], widths[0], separable[0], kernel_size, temporal_padding) for _ in range(layers[0])
        )
        self.up_blocks = nn.ModuleList(
            TurboUpBlock3d(widths[i], widths[i + 1], layers[i + 1], tuple(upsample_factors[i]), separable[i + 1],
                           kernel_size, temporal_padding, frame_rule, shortcut_norm)
            for i in range(len(upsample_factors))
        )
        self.patch_upsamplers = nn.ModuleList(PatchUpsampler(widths[-1] // 4**k) for k in range(stages))
        self.norm_out = RMSNorm3d()
        self.conv_out = CausalConv3d(widths[-1] // output_patch**2, out_channels, DENSE_KERNEL, padding=temporal_padding)

    @property
    def compression(self) -> Compression:
        factors = self.config.upsample_factors
        return Compression(
            latent_channels=int(self.config.latent_channels),
            temporal=math.prod(f[0] for f in factors),
            spatial=math.prod(f[1] for f in factors) * int(self.config.output_patch),
            causal=self.config.frame_rule != "full",
        )

    @property
    def feature_taps(self) -> list[str]:
        """Names of the intermediate features `forward(..., return_features=True)` returns."""
        return [MID_TAP] + [f"up_blocks.{i}" for i in range(len(self.up_blocks))]

    def forward(self, latent: torch.Tensor, return_features: bool = False, stream: ChunkStream | None = None):
        x = self.conv_in(latent, stream)
        for block in self.mid_block:
            x = block(x, stream)
        features = {MID_TAP: x}
        for index, block in enumerate(self.up_blocks):
            x = block(x, stream)
            features[f"up_blocks.{index}"] = x
        for stage in self.patch_upsamplers:
            x = stage(x)
        video = self.conv_out(F.silu(self.norm_out(x)), stream)
        return (video, features) if return_features else video

    def check_streamable(self) -> None:
        """Chunked decoding is exact for causal padding and a frame rule that does not depend on the clip's length."""
        if self.config.temporal_padding != "causal":
            raise EffconvError(f"a student with '{self.config.temporal_padding}' temporal padding cannot stream: each frame "
                               "depends on frames after it, which the next chunk has not decoded yet.",
                               "rewrite the teacher with a recipe whose student has 'temporal_padding: causal' (the default).")
        if self.config.frame_rule == "causal-if-odd":
            raise EffconvError("this student's teacher (CogVideoX) keeps the first frame alone only when the whole clip "
                               "has an odd number of latent frames, which a chunk cannot know.",
                               "decode the whole clip in one call (no --stream).")

    def decode_chunk(self, latent: torch.Tensor, cache: list[torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the latent frames that follow those decoded with `cache` (None: the clip's first chunk); returns
        the chunk's video frames and the cache for the next chunk. Concatenating the frames of consecutive chunks
        gives the whole-clip decode (layers/stream.py says why)."""
        self.check_streamable()
        stream = ChunkStream(latent.new_tensor(1.0 if cache is None else 0.0), cache)
        video = self(latent, stream=stream)
        stream.check_consumed()
        return (video[:, :, stream.leading:] if cache is None else video), stream.updated


def prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


def _spread(factors: list[int], slots: int) -> list[int]:
    """One prime factor per slot, in order; factors left over multiply into the last slot (the
    narrowest block, where a wider shuffle costs least)."""
    out = [1] * slots
    for index, factor in enumerate(factors):
        out[min(index, slots - 1)] *= factor
    return out


def plan_upsampling(compression: Compression, upsample: list[bool], output_patch: int = 1) -> list[tuple[int, int, int]]:
    """(s_t, s_h, s_w) per up block such that their products, times the output patch in space, equal the
    teacher's compression."""
    if compression.spatial % output_patch:
        raise EffconvError(
            f"an output patch of {output_patch} does not divide the teacher's {compression.spatial}x spatial compression.",
            f"set the recipe's student 'output_patch' to a power of two that divides {compression.spatial}, or 1.",
        )
    blocks_spatial = compression.spatial // output_patch
    slots = [i for i, allowed in enumerate(upsample) if allowed]
    temporal, spatial = prime_factors(compression.temporal), prime_factors(blocks_spatial)
    if (temporal or spatial) and not slots:
        raise EffconvError(
            f"the teacher upsamples {compression.temporal}x in time and {compression.spatial}x in space "
            f"({blocks_spatial}x of it in the up blocks), but the recipe lets no up block upsample.",
            "set at least one 'upsample' entry to true in the recipe's student section.",
        )
    plan = [(1, 1, 1)] * len(upsample)
    if not slots:
        return plan
    for slot, s_t, s_hw in zip(slots, _spread(temporal, len(slots)), _spread(spatial, len(slots))):
        plan[slot] = (s_t, s_hw, s_hw)
    return plan


def student_config(compression: Compression, frame_rule: str, recipe: StudentRecipe, teacher_patch: int = 1,
                   out_channels: int = 3) -> dict:
    """The student's config; its output patch is the recipe's, else the teacher's (`FamilyAdapter.output_patch`)."""
    output_patch = recipe.output_patch if recipe.output_patch is not None else teacher_patch
    widths = recipe.scaled_widths()
    if widths[-1] % output_patch**2:
        raise EffconvError(
            f"the student's last width {widths[-1]} is not a multiple of {output_patch**2}: its output patch of "
            f"{output_patch} narrows the width {output_patch**2}x.",
            f"make the recipe's last width a multiple of {output_patch**2}, or set the student's 'output_patch' lower.",
        )
    return {
        "latent_channels": compression.latent_channels,
        "out_channels": out_channels,
        "widths": widths,
        "layers": list(recipe.layers),
        "separable": list(recipe.separable),
        "upsample_factors": [list(f) for f in plan_upsampling(compression, recipe.upsample, output_patch)],
        "kernel_size": recipe.kernel_size,
        "temporal_padding": recipe.temporal_padding,
        "frame_rule": frame_rule,
        "output_patch": output_patch,
        "shortcut_norm": RELEASED_SHORTCUT_NORM_EPS,
    }


def build_student(teacher, recipe: StudentRecipe, seed: int = 0) -> TurboVAEDDecoder:
    """Random-init student decoder for a loaded teacher (`effconv.models.loader.LoadedModel`)."""
    if teacher.part != "decoder":
        raise EffconvError(
            f"a student replaces a decoder, but the spec selects part '{teacher.part}'.",
            "set 'part: decoder' in the teacher spec.",
        )
    config = student_config(teacher.compression, teacher.adapter.frame_rule(teacher.model), recipe,
                            teacher.adapter.output_patch(teacher.model))
    check_size(lambda: TurboVAEDDecoder(**config), "the recipe's student")
    torch.manual_seed(seed)
    return TurboVAEDDecoder(**config).eval()
