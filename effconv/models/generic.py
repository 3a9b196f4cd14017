"""Adapter for user modules from a `factory` that are not one of the supported diffusers classes.

Such a module is the part itself. It must say how it compresses video, the way diffusers VAEs do:
attributes `latent_channels`, `spatial_compression_ratio` and `temporal_compression_ratio`.
"""

from __future__ import annotations

from torch import nn

from effconv.errors import EffconvError
from effconv.models.base import Compression, FamilyAdapter, expand_blocks

REQUIRED = ("latent_channels", "spatial_compression_ratio", "temporal_compression_ratio")


class GenericAdapter(FamilyAdapter):
    class_name = "factory"
    family = "custom"
    known_backends = {"onnx": "not established: run `effconv convert` to find out"}

    def compression(self, module: nn.Module) -> Compression:
        missing = [name for name in REQUIRED if getattr(module, name, None) is None]
        if missing:
            raise EffconvError(
                f"the factory's module {type(module).__name__} lacks {', '.join(missing)}.",
                "set these attributes on it (as diffusers VAEs do) so effconv can derive the latent shape.",
            )
        return Compression(
            latent_channels=int(module.latent_channels),
            temporal=int(module.temporal_compression_ratio),
            spatial=int(module.spatial_compression_ratio),
            causal=bool(getattr(module, "causal", True)),
        )

    def prepare(self, module: nn.Module) -> nn.Module:
        return module.eval()

    def part_module(self, module: nn.Module, part: str) -> nn.Module:
        return module

    def part_blocks(self, module: nn.Module, part: str) -> dict[str, nn.Module]:
        return expand_blocks(module, type(module).__name__)
