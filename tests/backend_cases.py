"""Which tiny specs the backend tests convert by default and which only under `-m slow`, plus the
larger realistic-width Wan decoder used by the slow tests."""

from __future__ import annotations

import pytest

from conftest import SPECS

# Every rewrite's equivalence is checked on every family at the torch level (test_legalize.py), and
# tests/test_backends.py runs each backend end to end on a student. Conversions of the diffusers teachers cost
# 10-70 s each on 2 cores (Wan 2.1: 40 s to Core ML, 70 s to TFLite), so the default run converts LTX (the
# family with an 8-D permute and `pow`) and every family runs under `-m slow`.
ALL_FAMILIES = ["wan21", "ltx", "cogvideox", "hunyuan", "mochi", "wan22"]


def family_params(default: list[str]) -> list:
    return [pytest.param(f, id=f, marks=() if f in default else pytest.mark.slow) for f in ALL_FAMILIES]

# Wan 2.1's real decoder widths (base_dim 96, dim_mult 1-2-4-4, 16 latent channels) at a small clip.
WAN_REALISTIC = {
    "name": "wan21-width96",
    "model": {
        "diffusers": "AutoencoderKLWan",
        "config": {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                   "temperal_downsample": [False, True, True],
                   "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16},
    },
    "part": "decoder",
    "input": {"frames": 5, "height": 32, "width": 32},
}


def spec_path(family: str):
    return SPECS / f"{family}-tiny.yaml"


def small_clip(loaded):
    """The spec at a smaller clip that still has two latent frames and a non-square 2x3 latent: what these
    conversion tests check does not depend on the size, and export and verification time grow with it."""
    from effconv.models.loader import load_model

    compression = load_model(loaded).compression
    frames = compression.pixel_frames(2)
    return loaded.with_input(frames, 2 * compression.spatial, 3 * compression.spatial)
