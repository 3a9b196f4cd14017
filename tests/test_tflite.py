"""TFLite export of real diffusers decoders: runs in the LiteRT Interpreter and matches PyTorch
(PSNR >= 60 dB in fp32), with no CONV_3D, GATHER_ND or POW left for XNNPACK/GPU/int8 to trip on."""

from __future__ import annotations

import pytest
import torch

from backend_cases import WAN_REALISTIC, family_params, spec_path
from effconv.backends.tflite import BACKEND as TFLITE, export as tflite
from effconv.convert.stage import convert
from effconv.backends.verify import psnr_db
from effconv.models.loader import load_model
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


def _rerun_matches_pytorch(loaded, artifact):
    """Independent of the manifest: run the written .tflite on another input and compare with torch."""
    model = load_model(loaded)
    example = model.example_input(7)  # not the seed the manifest was verified with
    with torch.no_grad():
        reference = model.module(example).numpy()
    assert psnr_db(reference, TFLITE.predict(artifact, example)) >= 60.0


@pytest.mark.parametrize("family", family_params(["ltx"]))
def test_decoder_converts_to_tflite_and_matches_pytorch(family, tmp_path):
    loaded = load_spec(spec_path(family))
    manifest = convert(loaded, "tflite", tmp_path)
    _check(manifest, tmp_path / manifest.artifact)
    _rerun_matches_pytorch(loaded, tmp_path / manifest.artifact)


@pytest.mark.slow
def test_realistic_width_wan_decoder_converts(tmp_path):
    loaded = spec_from_dict(WAN_REALISTIC, tmp_path)
    manifest = convert(loaded, "tflite", tmp_path)
    _check(manifest, tmp_path / manifest.artifact)
    _rerun_matches_pytorch(loaded, tmp_path / manifest.artifact)
