"""Every backend in the registry, end to end on one tiny student: export + verify, op inventory, lint rules,
run where this host can, int8. A backend that forgets a piece of the interface fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from effconv.artifacts import read_manifest
from effconv.backends import registry
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.legalize.lint import RULE_BACKENDS, rule_table
from effconv.quantize.stage import quantize_artifact
from effconv.recipe import BACKEND_NAMES
from effconv.spec import load_spec

STUDENT = Path(__file__).parent / "data" / "legacy-student" / "hunyuan-tiny-student.yaml"


@pytest.fixture(scope="module", params=registry.names())
def converted(request, tmp_path_factory):
    backend = registry.get(request.param)
    out = tmp_path_factory.mktemp(backend.name)
    manifest = convert(load_spec(STUDENT), backend.name, out)
    return backend, out / manifest.artifact, manifest


def test_registry_names_every_backend_once_with_its_own_suffix():
    assert len(set(registry.names())) == len(registry.names()) == len(set(registry.suffixes()))
    for backend in registry.BACKENDS.values():
        assert registry.for_artifact(Path(f"model{backend.suffix}")) is backend
    with pytest.raises(EffconvError, match="is not an"):
        registry.for_artifact(Path("model.bin"))


def test_every_backend_has_lint_rules_and_a_recipe_name():
    assert set(registry.names()) == set(RULE_BACKENDS) == set(BACKEND_NAMES)
    assert all(rule_table(name)["units"] for name in registry.names())


def test_export_writes_a_verified_artifact_with_its_op_inventory(converted):
    backend, artifact, manifest = converted
    assert artifact.suffix == backend.suffix and artifact.exists()
    assert manifest.backend == backend.name and manifest.verify["passed"]
    assert read_manifest(artifact.with_suffix(".json")).artifact == artifact.name
    ops = backend.ops(artifact)
    assert ops and all(isinstance(count, int) and count > 0 for count in ops.values())
    assert not backend.legalized or not {"CONV_3D", "conv3d"} & set(ops)  # legalized graphs have no 3-D convs
    assert backend.runtime_versions()["torch"]


def test_predict_matches_pytorch_where_this_host_can_run_it(converted):
    backend, artifact, manifest = converted
    from effconv.models.loader import load_model

    model = load_model(load_spec(STUDENT))
    example = model.example_input(0)
    output = backend.predict(artifact, example)
    if output is None:  # Core ML off macOS: the manifest says so and checks what Linux can
        assert manifest.verify["prediction"].startswith("not run")
        return
    reference = model.module(example).detach().numpy()
    assert float(np.abs(output - reference).max()) <= backend.default_atol


def test_quantize_writes_a_smaller_artifact_with_a_report(converted, tmp_path):
    backend, artifact, _ = converted
    manifest = quantize_artifact(artifact, tmp_path, calib=["random"], samples=2, weights_only=True,
                                 max_psnr_drop=None, min_psnr_vs_float=None)
    quantized = tmp_path / manifest.artifact
    assert quantized.suffix == backend.suffix and quantized.exists() and manifest.backend == backend.name
    report = manifest.quantize
    assert report["size_bytes"]["ratio"] > 1.0 and report["quality"]["psnr_vs_float_db"] > 20.0
    assert backend.ops(quantized)
