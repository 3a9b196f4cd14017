"""Core ML export of real diffusers decoders: the .mlpackage builds, every tensor has rank <= 5,
the rewrites are lossless, and the manifest says plainly that prediction needs macOS."""

from __future__ import annotations

import platform

import pytest

from backend_cases import WAN_REALISTIC, family_params, spec_path
from effconv.backends.coreml import export as coreml
from effconv.cli.export import _print_manifest
from effconv.convert.stage import convert
from effconv.spec import load_spec, spec_from_dict

LINUX_ONLY = pytest.mark.skipif(platform.system() == "Darwin", reason="checks the Linux (no prediction) path")
SIMULATED = f"fp16 simulation in torch; not run on {platform.system()} (Core ML predicts only on macOS)"


def _check_manifest(manifest, artifact):
    verify = manifest.verify
    assert verify["passed"]
    assert verify["max_rank"] <= coreml.MAX_RANK
    assert verify["output_shape_ok"]
    assert manifest.legalize["equivalence"]["max_abs_err"] <= 1e-4
    summary = coreml.program_summary(artifact)  # read back from the saved file, not the manifest
    assert summary["max_rank"] <= coreml.MAX_RANK
    assert summary["output_shape"] == manifest.outputs[0].shape
    assert manifest.export["minimum_deployment_target"] == "iOS17"


@pytest.mark.parametrize("family", family_params(["ltx"]))
def test_decoder_converts_to_mlpackage_with_rank_at_most_5_and_says_how_it_was_verified(family, tmp_path, capsys):
    manifest = convert(load_spec(spec_path(family)), "coreml", tmp_path)
    artifact = tmp_path / manifest.artifact
    assert artifact.suffix == ".mlpackage" and artifact.is_dir()
    _check_manifest(manifest, artifact)
    assert sum(manifest.legalize["rewrites"].values()) >= 1
    assert manifest.export["precision"] == "fp16"
    simulated = manifest.verify["fp16_simulation"]
    assert simulated["psnr_db"] >= 40.0
    if platform.system() != "Darwin":  # "verified: yes" alone claimed a Core ML run that never happened
        assert manifest.verify["method"] == SIMULATED
        _print_manifest(manifest, False, tmp_path)
        assert f"verified yes: {SIMULATED}" in " ".join(capsys.readouterr().out.replace("│", " ").split())


@LINUX_ONLY
def test_linux_manifest_says_prediction_was_not_run(cli, tmp_path):
    code, out, _ = cli("convert", spec_path("ltx"), "--to", "coreml", "--precision", "fp32", "--out", tmp_path)
    assert code == 0
    assert "not run: Core ML prediction needs macOS" in out
    unrun = f"static checks only (tensor ranks, output shape); not run on {platform.system()} (Core ML predicts only on macOS)"
    assert f"verified yes: {unrun}" in " ".join(out.replace("│", " ").split())
    from effconv.artifacts import read_manifest

    manifest = read_manifest(tmp_path / "ltx-tiny.json")
    assert manifest.verify["prediction"] == coreml.NOT_RUN
    assert manifest.export["precision"] == "fp32"
    assert "fp16_simulation" not in manifest.verify and manifest.verify["method"] == unrun


def test_unknown_precision_is_a_one_line_error(cli, tmp_path):
    code, _, err = cli("convert", spec_path("ltx"), "--to", "coreml", "--precision", "int3", "--out", tmp_path / "o")
    assert code == 2
    assert "unknown precision 'int3'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_realistic_width_wan_decoder_converts(tmp_path):
    manifest = convert(spec_from_dict(WAN_REALISTIC, tmp_path), "coreml", tmp_path)
    _check_manifest(manifest, tmp_path / manifest.artifact)
