"""The family-adapter interface: what effconv needs to know about one video-VAE family.

Each adapter reads the compression factors from the model itself (its config or the attributes
diffusers sets from it), so a new config of a known family needs no table update.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from effconv.quiet import quiet_imports

PARTS = ("decoder", "encoder", "vae")

# How a decoder's temporal upsampling treats the first frame: "causal" maps the first latent frame
# to one frame (F = 1 + s_t*(T-1)), "full" maps every frame to s_t frames (F = s_t*T), and
# "causal-if-odd" (CogVideoX) is causal only when the frame count entering an upsampler is odd.
FrameRule = Literal["causal", "full", "causal-if-odd"]
FRAME_RULES: tuple[str, ...] = get_args(FrameRule)


@dataclass(frozen=True)
class Compression:
    """How a VAE maps a pixel clip (3, F, H, W) to latents (C, T, H/s, W/s).

    Causal VAEs encode the first frame alone: F = 1 + s_t * (T - 1). Others: F = s_t * T.
    """

    latent_channels: int
    temporal: int
    spatial: int
    causal: bool = True

    @property
    def _offset(self) -> int:
        return 1 if self.causal else 0

    def latent_frames(self, frames: int) -> int:
        return (frames - self._offset) // self.temporal + self._offset

    def pixel_frames(self, latent_frames: int) -> int:
        return self._offset + self.temporal * (latent_frames - self._offset)

    def frames_valid(self, frames: int) -> bool:
        return frames >= max(1, self.temporal * (1 - self._offset)) and (frames - self._offset) % self.temporal == 0

    def nearest_frames(self, frames: int) -> list[int]:
        smallest = self.pixel_frames(1)
        lower = max(smallest, self.pixel_frames(self.latent_frames(frames)))
        return sorted({lower, lower + self.temporal} if lower != frames else {frames})

    def nearest_side(self, side: int) -> list[int]:
        lower = max(self.spatial, side // self.spatial * self.spatial)
        return sorted({lower, lower + self.spatial} if lower != side else {side})

    def as_dict(self) -> dict:
        """For manifests and JSON output."""
        return dataclasses.asdict(self)

    def latent_shape(self, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.latent_channels, self.latent_frames(frames), height // self.spatial, width // self.spatial)


class DecodePart(nn.Module):
    """latent (B, C, T, h, w) -> video (B, 3, F, H, W) through the VAE's own decode path."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


class EncodePart(nn.Module):
    """video -> latent mean (the posterior's mode), so the export is deterministic."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video).latent_dist.mode()


class ReconstructPart(nn.Module):
    """video -> latent mean -> video: the VAE's reconstruction."""

    def __init__(self, encode_part: nn.Module, decode_part: nn.Module):
        super().__init__()
        self.encode_part = encode_part
        self.decode_part = decode_part

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.decode_part(self.encode_part(video))


class FamilyAdapter:
    """Base adapter for a diffusers video-VAE class. Subclasses override what differs."""

    class_name: str = ""
    family: str = ""
    # Backend status as established by effconv's own tests, shown by `effconv inspect`.
    known_backends: dict[str, str] = {"onnx": "exports and verifies (torch.onnx dynamo, opset 18)"}
    # Submodules whose outputs a student's features are aligned to during distillation: the block
    # after conv_in at latent resolution, and the first up block.
    feature_taps: dict[str, str] = {"mid": "decoder.mid_block", "up0": "decoder.up_blocks.0"}
    # Whether those blocks return (hidden_states, new_conv_cache) instead of the hidden state alone.
    taps_return_conv_cache: bool = False

    def tapped_hidden_state(self, output) -> torch.Tensor:
        """The hidden state in what a `feature_taps` block returned (its conv cache, where it has one, left out)."""
        if self.taps_return_conv_cache:
            hidden_states, _new_conv_cache = output
            return hidden_states
        return output

    def compression(self, vae: nn.Module) -> Compression:
        return Compression(
            latent_channels=int(vae.config.latent_channels),
            temporal=int(vae.temporal_compression_ratio),
            spatial=int(vae.spatial_compression_ratio),
        )

    def output_patch(self, vae: nn.Module) -> int:
        """The spatial patch the decoder unpatchifies its output with (a depth-to-space at the end): a student of
        this teacher ends the same way by default."""
        return 1

    decode_part_class: type[nn.Module] = DecodePart

    def model_class(self) -> type[nn.Module]:
        """The class a spec's `model.diffusers` name builds: diffusers' class of that name."""
        with quiet_imports():
            import diffusers
        return getattr(diffusers, self.class_name)

    def frame_rule(self, vae: nn.Module) -> FrameRule:
        return "causal" if self.compression(vae).causal else "full"

    def prepare(self, vae: nn.Module) -> nn.Module:
        """Turn off tiling / frame-wise splitting so one call processes the whole clip."""
        for flag in ("use_tiling", "use_slicing", "use_framewise_encoding", "use_framewise_decoding"):
            if hasattr(vae, flag):
                setattr(vae, flag, False)
        return vae.eval()

    def part_module(self, vae: nn.Module, part: str) -> nn.Module:
        if part == "decoder":
            return self.decode_part_class(vae)
        if part == "encoder":
            return EncodePart(vae)
        return ReconstructPart(EncodePart(vae), self.decode_part_class(vae))

    def part_blocks(self, vae: nn.Module, part: str) -> dict[str, nn.Module]:
        """Top-level blocks of a part, for per-block parameter tables."""
        if part == "decoder":
            return self._decoder_blocks(vae)
        if part == "encoder":
            return expand_blocks(vae.encoder, "encoder") | self._extra_encoder(vae)
        return {"encoder": vae.encoder, **self._extra_encoder(vae), **self._decoder_blocks(vae)}

    def _decoder_blocks(self, vae: nn.Module) -> dict[str, nn.Module]:
        blocks = {}
        if getattr(vae, "post_quant_conv", None) is not None:
            blocks["post_quant_conv"] = vae.post_quant_conv
        return blocks | expand_blocks(vae.decoder, "decoder")

    def _extra_encoder(self, vae: nn.Module) -> dict[str, nn.Module]:
        quant = getattr(vae, "quant_conv", None)
        return {"quant_conv": quant} if quant is not None else {}


def expand_blocks(module: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """Children of a module by name, with ModuleLists (up_blocks, down_blocks) opened one level
    and parameter-free children (activations) left out."""
    blocks = {}
    for name, child in module.named_children():
        if isinstance(child, nn.ModuleList):
            blocks |= {f"{prefix}.{name}.{index}": item for index, item in enumerate(child)}
        else:
            blocks[f"{prefix}.{name}"] = child
    return {name: block for name, block in blocks.items() if any(True for _ in block.parameters())}
