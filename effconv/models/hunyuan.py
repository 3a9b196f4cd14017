"""HunyuanVideo (`AutoencoderKLHunyuanVideo`): causal 3D convs, 4x temporal / 8x spatial by default."""

from effconv.models.base import FamilyAdapter


class HunyuanVideoAdapter(FamilyAdapter):
    class_name = "AutoencoderKLHunyuanVideo"
    family = "hunyuan"
