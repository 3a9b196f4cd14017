"""Which diffusers classes effconv supports, and the adapter for each."""

from __future__ import annotations

from effconv.errors import EffconvError
from effconv.models.base import FamilyAdapter
from effconv.models.cogvideox import CogVideoXAdapter
from effconv.models.hunyuan import HunyuanVideoAdapter
from effconv.models.ltx import LTXVideoAdapter
from effconv.models.mochi import MochiAdapter
from effconv.models.turbo_vaed.adapter import ReleasedTurboVAEDAdapter, TurboStudentAdapter
from effconv.models.wan import WanAdapter

ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.class_name: adapter
    for adapter in (
        WanAdapter(), HunyuanVideoAdapter(), CogVideoXAdapter(), LTXVideoAdapter(), MochiAdapter(),
        TurboStudentAdapter(), ReleasedTurboVAEDAdapter(),
    )
}


def supported_classes() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(class_name: str) -> FamilyAdapter:
    try:
        return ADAPTERS[class_name]
    except KeyError:
        raise EffconvError(
            f"unknown model class '{class_name}'.",
            f"use one of {', '.join(supported_classes())}, or a 'factory' with --allow-import.",
        ) from None
