"""ONNX export of every family verifies against PyTorch, and the manifest tells the truth."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from effconv.artifacts import manifest_path, read_manifest
from effconv.convert.stage import convert
from effconv.models.loader import load_model
from effconv.profile.inputs import resolve
from effconv.spec import load_spec

from backend_cases import small_clip
from conftest import FAMILY_SPECS


# Wan 2.2's tiny spec exports in ~30 s (its per-frame decode loop unrolls); the other five cover the exporter.
@pytest.mark.parametrize("spec_path", [pytest.param(p, marks=pytest.mark.slow) if p.stem == "wan22-tiny" else p
                                       for p in FAMILY_SPECS], ids=lambda p: p.stem)
def test_onnx_output_matches_pytorch_and_manifest_shapes_are_real(spec_path, tmp_path):
    loaded = small_clip(load_spec(spec_path))
    manifest = convert(loaded, "onnx", tmp_path)
    assert manifest.verify["passed"]
    assert manifest.verify["max_abs_err"] < 1e-4
    assert manifest.verify["psnr_db"] > 80
    assert manifest.model_extra["layout"]["chosen"] == "conv3d"  # teachers keep Conv3d unless asked

    model = load_model(loaded)
    latent = model.example_input(seed=7)  # not the seed used by verification
    with torch.no_grad():
        expected = model.module(latent).numpy()
    session = ort.InferenceSession(str(tmp_path / manifest.artifact), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"latent": latent.numpy()})
    assert np.max(np.abs(actual - expected)) < 1e-4

    written = json.loads((tmp_path / f"{loaded.spec.name}.json").read_text())
    assert written["outputs"][0]["shape"] == list(actual.shape)
    assert written["inputs"][0]["shape"] == list(latent.shape)
    assert written["params"] == model.num_params()
    assert written["spec"]["name"] == loaded.spec.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([manifest.artifact, f"{loaded.spec.name}.json"])


def test_non_square_encoder_export(tmp_path):
    loaded = load_spec(next(p for p in FAMILY_SPECS if p.stem == "wan21-tiny"))
    loaded = type(loaded)(spec=loaded.spec.model_copy(update={"part": "encoder"}), base_dir=loaded.base_dir)
    manifest = convert(loaded.with_input(5, 16, 40), "onnx", tmp_path)
    assert manifest.verify["passed"]
    assert manifest.inputs[0].shape == [1, 3, 5, 16, 40]
    assert manifest.outputs[0].shape == [1, 4, 2, 2, 5]


def test_verification_failure_exits_1_and_keeps_the_artifact(cli, tmp_path):
    spec = next(p for p in FAMILY_SPECS if p.stem == "hunyuan-tiny").read_text()
    spec_path = tmp_path / "hunyuan-tiny.yaml"  # a smaller clip: what is tested is the exit code, not the model
    spec_path.write_text(spec.replace("input: {frames: 9, height: 32, width: 48}", "input: {frames: 5, height: 16, width: 16}"))
    assert "frames: 5" in spec_path.read_text()
    code, _, err = cli("convert", spec_path, "--out", tmp_path, "--atol", "1e-12")
    assert code == 1
    assert "does not match PyTorch" in err
    manifest = json.loads((tmp_path / "hunyuan-tiny.json").read_text())
    assert manifest["verify"]["passed"] is False
    assert manifest["verify"]["max_abs_err"] > 1e-12


def test_cli_json_prints_only_the_manifest_and_its_path_keeps_dots_in_spec_names(cli, tmp_path):
    spec = next(p for p in FAMILY_SPECS if p.stem == "ltx-tiny").read_text()
    spec_path = tmp_path / "wan2.1-small.yaml"  # SAFE_NAME allows dots; a fast family keeps the test short
    spec_path.write_text(spec.replace("name: ltx-tiny", "name: wan2.1-small"))
    out = tmp_path / "out"
    code, printed, _ = cli("convert", spec_path, "--to", "onnx", "--out", out, "--json")
    assert code == 0
    printed = json.loads(printed)  # only the manifest on stdout
    assert printed["backend"] == "onnx" and printed["verify"]["max_abs_err"] <= printed["verify"]["atol"]
    manifest = read_manifest(manifest_path(out / "wan2.1-small.onnx"))
    artifact = out / manifest.artifact

    assert artifact.name == "wan2.1-small.onnx"
    assert manifest_path(artifact) == out / "wan2.1-small.json"
    assert manifest_path(out / "wan2.1-small-int8.onnx") == out / "wan2.1-small-int8.json"
    assert manifest_path(out / "wan2.1-small.mlpackage") == out / "wan2.1-small.json"
    assert read_manifest(manifest_path(artifact)).name == "wan2.1-small"
    # profile reads the compression from the manifest; a missed manifest used to drop it silently
    assert manifest.compression
    assert resolve(artifact, tmp_path / "work").compression == manifest.compression
