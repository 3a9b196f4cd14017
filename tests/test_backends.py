"""Every backend in the registry, end to end on one small student: export + verify, op inventory, lint rules,
run where this host can, int8. A backend that forgets a piece of the interface fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from effconv.backends import registry
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.legalize.lint import RULE_BACKENDS, rule_table
from effconv.models.loader import load_model
from effconv.profile.run import run as profile
from effconv.quantize.stage import quantize_artifact
from effconv.recipe import BACKEND_NAMES
from effconv.spec import load_spec, spec_from_dict

from conftest import FAMILY_SPECS


# Lowering a program to ExecuTorch's XNNPACK delegate takes ~45 s on 2 cores, so its int8 run, which lowers a
# second program, is a slow test; ONNX and Core ML int8 have their own modules (test_quantize_onnx.py,
# test_quantize_coreml.py), so here only TFLite's runs by default.
EXPORT_CASES = registry.names()
INT8_CASES = [name if name == "tflite" else pytest.param(name, marks=pytest.mark.slow) for name in registry.names()]
# The wide student is converted once per session for the quantize modules that share it (Core ML, TFLite); the
# other backends convert the smaller saved student (ExecuTorch: 45 s instead of 70 s; ONNX: 5 s instead of 25 s).
WIDE_STUDENT_BACKENDS = {"coreml", "tflite"}
LEGACY_STUDENT = Path(__file__).parent / "data" / "legacy-student" / "hunyuan-tiny-student.yaml"


@pytest.fixture(scope="module")
def converted(request, wide_student, tmp_path_factory):
    backend = registry.get(request.param)
    if backend.name in WIDE_STUDENT_BACKENDS:
        return backend, *wide_student(backend.name)
    out = tmp_path_factory.mktemp(backend.name)
    manifest = convert(load_spec(LEGACY_STUDENT), backend.name, out)
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


@pytest.mark.parametrize("converted", EXPORT_CASES, indirect=True)
def test_export_writes_a_verified_artifact_with_its_op_inventory(converted):
    backend, artifact, manifest = converted
    assert artifact.suffix == backend.suffix and artifact.exists()
    assert manifest.backend == backend.name and manifest.verify["passed"]
    ops = backend.ops(artifact)
    assert ops and all(isinstance(count, int) and count > 0 for count in ops.values())
    assert not backend.legalized or not any("conv3d" in op.lower() or "conv_3d" in op.lower() for op in ops)
    assert backend.runtime_versions()["torch"] == torch.__version__
    if backend.name == "executorch":  # RMSNorm's channel mean included: one XNNPACK call, nothing on the portable kernels
        assert manifest.model_extra["export"]["portable_ops"] == {} and manifest.model_extra["export"]["delegated_calls"] == 1


@pytest.mark.parametrize("converted", EXPORT_CASES, indirect=True)
def test_predict_matches_pytorch_where_this_host_can_run_it(converted):
    backend, artifact, manifest = converted
    model = load_model(spec_from_dict(manifest.spec, artifact.parent, source="manifest"))
    example = model.example_input(0)
    output = backend.predict(artifact, example)
    if output is None:  # Core ML off macOS: the manifest says so and checks what Linux can
        assert manifest.verify["prediction"].startswith("not run")
        return
    with torch.no_grad():
        reference = model.module(example).numpy()
    assert float(np.abs(output - reference).max()) <= backend.default_atol


@pytest.mark.parametrize("converted", EXPORT_CASES, indirect=True)
def test_profile_costs_the_artifact_and_measures_it_in_its_own_runtime(converted, tmp_path):
    backend, artifact, manifest = converted
    if backend.load(artifact, 1) is None:  # Core ML off macOS: estimated, and --measure says why not
        with pytest.raises(EffconvError, match="cannot run"):
            profile(artifact, "host-cpu", do_measure=True, threads=1, repeats=2)
        result = profile(artifact, "iphone16pro")
        assert result.estimate.dtype == "fp16" and result.estimate.total_ms > 0
        return
    result = profile(artifact, "host-cpu", do_measure=True, threads=1, repeats=2)
    assert result.measured["runtime"] == backend.runtime and result.measured["threads"] == 1
    assert result.measured["median_ms"] > 0 and result.estimate.dtype == "fp32"
    assert result.estimate.frames == manifest.outputs[0].shape[2]
    assert (backend.name == "onnx") == ("measured as shipped" not in result.source.how)
    on_phone = profile(artifact, "pixel9").estimate  # ExecuTorch: the XNNPACK CPU delegate only
    assert (set(on_phone.by("unit")) == {"cpu"}) == (backend.name == "executorch")
    if backend.name == "executorch":  # costed in the form it was lowered in: Conv2d over frames, nothing left to rewrite
        assert not any(op.node.kind.endswith("Conv3d") for op in on_phone.ops)
        assert not any("without a rewrite" in note for note in on_phone.notes)


@pytest.mark.parametrize("converted", INT8_CASES, indirect=True)
def test_static_int8_writes_a_smaller_artifact_close_to_float(converted, tmp_path):
    backend, artifact, _ = converted
    manifest = quantize_artifact(artifact, tmp_path, calib=["random"], samples=3, select_by_speed=False,
                                 max_psnr_drop=None)
    quantized = tmp_path / manifest.artifact
    assert quantized.suffix == backend.suffix and quantized.exists() and manifest.backend == backend.name
    report = manifest.quantize
    smallest_ratio = 1.9 if backend.name in WIDE_STUDENT_BACKENDS else 1.5  # the small saved student's file is ~40% program
    assert report["size_bytes"]["ratio"] >= smallest_ratio and report["gate"]["psnr_vs_float_db"] >= 30.0
    assert backend.ops(quantized)
    dtypes = profile(quantized, "pixel9").estimate.dtypes  # ExecuTorch leaves some element-wise ops float
    assert dtypes["fp16" if backend.name == "coreml" else "int8"]["flop_share"] >= 0.9
    with pytest.raises(EffconvError, match="as it ships"):  # a re-export at a new size would be float, not this file
        profile(quantized, "host-cpu", frames=manifest.outputs[0].shape[2], do_measure=True, threads=1)


@pytest.mark.slow
@pytest.mark.parametrize("spec", FAMILY_SPECS, ids=lambda path: path.stem)
def test_every_family_runs_in_executorch_and_agrees_with_onnx(spec, tmp_path):
    """Each tiny diffusers teacher: the .pte runs in executorch.runtime within 1e-4 of PyTorch, and its output
    matches the ONNX export's on the same input. Each lowers into XNNPACK subgraphs: CogVideoX, HunyuanVideo and
    Wan did so only once identity clones were dropped before partitioning (drop_identity_clones); 35-140 s
    a family on 2 busy cores, both exports included."""
    loaded = load_spec(spec)
    outputs = {}
    for name in ("executorch", "onnx"):
        manifest = convert(loaded, name, tmp_path / name)
        assert manifest.verify["passed"] and manifest.verify["max_abs_err"] <= 1e-4
        example = load_model(loaded).example_input(0)
        outputs[name] = registry.get(name).predict(tmp_path / name / manifest.artifact, example)
    assert float(np.abs(outputs["executorch"] - outputs["onnx"]).max()) <= 1e-4


def test_executorch_refuses_a_conv3d_no_kernel_can_run_before_writing(tmp_path):
    """XNNPACK has no 3-D convolution and the portable kernel takes 3-D/4-D inputs: the program would lower
    and then fail at run time, so effconv stops before writing and names the rewrite."""
    backend = registry.get("executorch")
    artifact = tmp_path / "conv3d.pte"
    with pytest.raises(EffconvError, match="5-D convolution") as refused:
        backend.export(torch.nn.Conv3d(4, 4, 3, padding=1).eval(), torch.randn(1, 4, 3, 8, 8), artifact, "x", "y")
    assert "conv3d-as-conv2d" in refused.value.fix and not artifact.exists()


class _ConvReadTwice(torch.nn.Module):
    """A conv whose output is read twice outside XNNPACK (cumsum has no XNNPACK kernel), once through an eval-mode
    dropout, which the edge program keeps as a clone (as group_norm's contiguous input and a reshaped expand are)."""

    def __init__(self):
        super().__init__()
        self.conv, self.dropout = torch.nn.Conv2d(2, 2, 1), torch.nn.Dropout(0.1)

    def forward(self, x):
        h = self.conv(x)
        return torch.cumsum(h, 1) + torch.cumsum(self.dropout(h), 2)


def test_executorch_lowers_a_partition_that_returns_a_value_and_its_clone(tmp_path):
    """The partition {conv, clone} returns h and clone(h); XNNPACK drops the clone, then refuses the partition for
    returning h twice ("pass through arguments"). effconv drops identity clones before partitioning, so it lowers
    (the conv in XNNPACK) and matches PyTorch."""
    backend = registry.get("executorch")
    module, example, artifact = _ConvReadTwice().eval(), torch.randn(1, 2, 4, 4), tmp_path / "read-twice.pte"
    info = backend.export(module, example, artifact, "x", "y")
    assert info["delegated_calls"] >= 1 and "aten::convolution.out" not in info["portable_ops"]
    with torch.no_grad():
        expected = module(example).numpy()
    assert float(np.abs(backend.predict(artifact, example) - expected).max()) <= 1e-5


class _ReturnsClones(torch.nn.Module):
    def forward(self, x):
        h = x * 2
        return x.clone(), h, h.clone(), (h + 1).clone(), torch.nn.functional.dropout(h - 1, 0.1, training=False)


def test_executorch_drops_identity_clones_unless_an_output_would_alias_an_input(tmp_path):
    """In the edge program, x.clone() (a returned copy of an input) stays; h.clone() (h is returned too),
    (h + 1).clone() and the eval-mode dropout's clone go. The lowered program returns the same five values."""
    from effconv.backends.executorch.export import drop_identity_clones, load_all
    from effconv.quiet import quiet_imports

    example = torch.randn(1, 2, 3, 4)
    with quiet_imports(), torch.no_grad():  # to_edge warns of a torch deprecation inside executorch
        from executorch.exir import to_edge

        graph_module = to_edge(torch.export.export(_ReturnsClones(), (example,))).exported_program().graph_module

    def cloned():
        return [node.args[0].name for node in graph_module.graph.nodes if "clone" in str(node.target)]

    assert len(cloned()) == 4
    assert drop_identity_clones()(graph_module).modified and cloned() == ["x"]
    backend = registry.get("executorch")
    backend.export(_ReturnsClones(), example, tmp_path / "clones.pte", "x", ["a", "b", "c", "d", "e"])
    outputs = load_all(tmp_path / "clones.pte")([example.numpy()])
    for got, expected in zip(outputs, _ReturnsClones()(example), strict=True):
        assert np.array_equal(got, expected.numpy())
