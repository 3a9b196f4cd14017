"""TFLite export of real diffusers decoders: runs in the LiteRT Interpreter and matches PyTorch
(PSNR >= 60 dB in fp32), with no CONV_3D, GATHER_ND or POW left for XNNPACK/GPU/int8 to trip on."""

from __future__ import annotations

import pytest

from backend_cases import FAMILY_PARAMS, WAN_REALISTIC, spec_path
from effconv.converters import tflite
from effconv.converters.convert import convert
from effconv.converters.verify import psnr_db
from effconv.spec import load_spec, spec_from_dict

DELEGATE_UNFRIENDLY = {"CONV_3D", "GATHER_ND", "POW"}


def _check(manifest, artifact):
    verify = manifest.verify
    assert verify["passed"] and verify["prediction"] == "run"
    assert verify["psnr_db"] >= 60.0
    assert verify["max_abs_err"] <= tflite.DEFAULT_ATOL
    assert manifest.legalize["equivalence"]["max_abs_err"] <= 1e-4
    ops = tflite.op_inventory(artifact)
    assert not DELEGATE_UNFRIENDLY & set(ops), ops
    assert ops.get("CONV_2D", 0) >= 1


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_decoder_converts_to_tflite_and_matches_pytorch(family, tmp_path):
    manifest = convert(load_spec(spec_path(family)), "tflite", tmp_path)
    _check(manifest, tmp_path / manifest.artifact)


def test_tflite_output_recomputed_from_the_file_matches_pytorch(tmp_path):
    """Independent of the manifest: run the written .tflite again and compare with the torch module."""
    import torch

    from effconv.models.loader import load_model

    loaded = load_spec(spec_path("ltx"))
    manifest = convert(loaded, "tflite", tmp_path)
    model = load_model(loaded)
    example = model.example_input(7)  # not the seed the manifest was verified with
    with torch.no_grad():
        reference = model.module(example).numpy()
    assert psnr_db(reference, tflite.predict(tmp_path / manifest.artifact, example)) >= 60.0


@pytest.mark.slow
def test_realistic_width_wan_decoder_converts(tmp_path):
    manifest = convert(spec_from_dict(WAN_REALISTIC, tmp_path), "tflite", tmp_path)
    _check(manifest, tmp_path / manifest.artifact)
