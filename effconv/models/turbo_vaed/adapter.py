"""effconv's own Turbo-VAED student decoder (`TurboVAEDDecoder`), as written by `effconv rewrite`.

It is a decoder only: the latents come from the teacher's encoder, which the student keeps.
"""

from __future__ import annotations

from torch import nn

from effconv.errors import EffconvError
from effconv.models.base import Compression, FamilyAdapter, FrameRule, expand_blocks
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.models.turbo_vaed.released import RELEASED_CLASS


class TurboStudentAdapter(FamilyAdapter):
    class_name = "TurboVAEDDecoder"
    family = "turbo-vaed-student"
    known_backends = {"onnx": "exports and verifies (torch.onnx dynamo, opset 18)"}

    def model_class(self) -> type[nn.Module]:
        return TurboVAEDDecoder

    def compression(self, vae: nn.Module) -> Compression:
        return vae.compression

    def output_patch(self, vae: nn.Module) -> int:
        return int(vae.config.output_patch)

    def frame_rule(self, vae: nn.Module) -> FrameRule:
        return vae.config.frame_rule

    def prepare(self, vae: nn.Module) -> nn.Module:
        return vae.eval()

    def part_module(self, vae: nn.Module, part: str) -> nn.Module:
        if part != "decoder":
            raise EffconvError(
                f"a TurboVAEDDecoder student is a decoder only; it has no '{part}' part.",
                "set 'part: decoder' (encode with the teacher's spec).",
            )
        return vae

    def part_blocks(self, vae: nn.Module, part: str) -> dict[str, nn.Module]:
        self.part_module(vae, part)
        return expand_blocks(vae, "decoder")


class ReleasedTurboVAEDAdapter(TurboStudentAdapter):
    """A student saved by the Turbo-VAED authors' `AutoencoderKLTurboVAED` (released.py): loaded as the
    `TurboVAEDDecoder` it is, so everything effconv does with its own students works on it."""

    class_name = RELEASED_CLASS
    family = "turbo-vaed-released"
