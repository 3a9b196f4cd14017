"""Core ML W8A16 on a converted student: coremltools writes per-channel int8 weights that make the fp16
package >= 1.9x smaller; the torch simulation used for quality is bit-identical to the int8 codes and
scales in the saved program (and the check notices when it is not); bad inputs are one-line errors.

PSNR bound (fake-quantized torch vs float torch, held-out latents): measured 48.0 dB on this random-init
student and 48.7 dB on the demo-size student with video latents; the bound sits 6 dB below, and under
80 dB so that unquantized weights fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from effconv.artifacts import Manifest, TensorInfo
from effconv.backends.coreml.export import _coremltools
from effconv.errors import EffconvError
from effconv.backends.coreml import quantize as coreml
from effconv.quantize.calibration import random_latents


@pytest.fixture(scope="module")
def student(wide_student):
    return wide_student("coreml")


@pytest.fixture(scope="module")
def quantized(student, tmp_path_factory):
    artifact, manifest = student
    calib, held_out = random_latents(tuple(manifest.inputs[0].shape), 4).split(2)
    out = tmp_path_factory.mktemp("w8a16") / "student-w8a16.mlpackage"
    return out, coreml.quantize(artifact, manifest, calib, held_out, out, weights_only=True)


def _op_types(package) -> list[str]:
    spec = _coremltools().utils.load_spec(str(package))
    return [op.type for function in spec.mlProgram.functions.values()
            for block in function.block_specializations.values() for op in block.operations]


def test_w8a16_package_holds_int8_weights_and_is_1_9x_smaller(quantized):
    out, report = quantized
    assert _op_types(out).count(coreml.DEQUANTIZE_OP) == report["weights_quantized"] >= 20
    assert report["size_bytes"]["ratio"] >= 1.9
    assert report["latency_ms"] == {"not_measured": coreml.LATENCY_NOT_MEASURED}
    assert report["float_nodes"]  # the thin high-resolution convs
    assert all(row["op"] == "conv" and row["weights"] <= coreml.WEIGHT_THRESHOLD and row["reason"] == coreml.SMALL_WEIGHT
               for row in report["float_nodes"])


def test_simulated_weights_equal_what_coremltools_wrote(quantized):
    _, report = quantized
    check = report["simulation_check"]
    assert check["passed"] and check["unmatched"] == []
    assert check["weights_compared"] == report["weights_quantized"]
    assert check["max_abs_diff"] <= 1e-6
    assert 42.0 <= report["quality"]["psnr_vs_float_db"] < 80.0


def test_simulation_check_fails_for_other_weights(quantized):
    out, _ = quantized
    written = coreml.written_weights(coreml.read_program(_coremltools(), out))
    key, entry = next(iter(written.items()))
    off_by_one_code = torch.from_numpy(entry["codes"].astype(np.int8)).clone()
    off_by_one_code.view(-1)[0] += 1 if off_by_one_code.view(-1)[0] < 127 else -1
    shape = [-1] + [1] * (entry["codes"].ndim - 1)
    scale = torch.from_numpy(entry["scale"].astype(np.float16)).reshape(shape)
    check = coreml.simulation_check({key: entry}, {key: (off_by_one_code, scale)})
    assert not check["passed"] and check["max_abs_diff"] > 0
    assert coreml.simulation_check({key: entry}, {key: None})["unmatched"] == [key]


def test_fake_quantize_is_symmetric_per_output_channel():
    weight = torch.tensor([[0.5, -1.0, 0.25], [2.0, 1.0, -0.5]])
    codes, scale = coreml.fake_quantize(weight)
    assert codes.dtype == torch.int8
    assert scale.flatten().tolist() == pytest.approx([1.0 / 127, 2.0 / 127], rel=1e-3)
    assert codes.tolist() == [[64, -127, 32], [127, 64, -32]]


SHAPE = [1, 8, 3, 16, 16]


def _manifest(precision: str = "fp16", backend: str = "coreml") -> Manifest:
    return Manifest(name="m", backend=backend, artifact="m.mlpackage", spec={}, params=0, verify={},
                    inputs=[TensorInfo(name="latent", shape=SHAPE, dtype="float32")],
                    outputs=[TensorInfo(name="video", shape=[1, 3, 9, 64, 64], dtype="float32")],
                    export={"precision": precision})


def _sets():
    return random_latents(tuple(SHAPE), 2).split(1)


def test_corrupt_package_is_a_one_line_error(tmp_path):
    broken = tmp_path / "broken.mlpackage"
    broken.mkdir()
    (broken / "Manifest.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(EffconvError, match="cannot read Core ML package") as caught:
        coreml.quantize(broken, _manifest(), *_sets(), tmp_path / "out.mlpackage", weights_only=True)
    assert len(caught.value.one_line().splitlines()) == 1
    assert not (tmp_path / "out.mlpackage").exists()


def test_already_quantized_package_is_refused(quantized, tmp_path):
    out, _ = quantized
    with pytest.raises(EffconvError, match="already holds compressed weights"):
        coreml.quantize(out, _manifest(), *_sets(), tmp_path / "again.mlpackage", weights_only=True)


@pytest.mark.parametrize("manifest, message", [(_manifest(precision="fp32"), "fp16"),
                                               (_manifest(backend="tflite"), "describes a tflite artifact")],
                         ids=["fp32-package", "tflite-manifest"])
def test_fp32_package_and_other_backend_are_refused(manifest, message, tmp_path):
    package = tmp_path / "model.mlpackage"
    package.mkdir()
    with pytest.raises(EffconvError, match=message) as caught:
        coreml.quantize(package, manifest, *_sets(), tmp_path / "out.mlpackage", weights_only=True)
    assert "Fix:" in caught.value.one_line()


@pytest.fixture(scope="module")
def mochi_package(tmp_path_factory):
    """The mochi-tiny teacher as an fp16 .mlpackage: its up-block projections are nn.Linear on 5-D tensors."""
    from effconv.convert.stage import convert
    from effconv.spec import load_spec

    from conftest import SPECS

    out = tmp_path_factory.mktemp("mochi-coreml")
    manifest = convert(load_spec(SPECS / "mochi-tiny.yaml"), "coreml", out)
    return out / manifest.artifact


def test_weights_folded_through_view_ops_are_matched_to_their_parameters(mochi_package, tmp_path):
    """regression: Mochi's projection weights reach the program as consts named after a view op (view_9 ...),
    which matched no parameter, so every Mochi quantize stopped with "report this as an effconv bug"."""
    from effconv.quantize.stage import quantize_artifact

    manifest = quantize_artifact(mochi_package, tmp_path / "int8", calib=["random"], samples=4)
    report = manifest.quantize
    check = report["simulation_check"]
    assert check["passed"] and check["unmatched"] == [] and check["max_abs_diff"] <= coreml.SIMULATION_ATOL
    assert check["weights_compared"] == report["weights_quantized"] == 14
    assert check["folded"] == {"view_9": "vae_decoder_up_blocks_0_proj_weight",
                               "view_22": "vae_decoder_up_blocks_1_proj_weight",
                               "view_35": "vae_decoder_up_blocks_2_proj_weight",
                               "view_48": "vae_decoder_proj_out_weight"}
    assert 45.0 <= report["quality"]["psnr_vs_float_db"] < 80.0  # the projections are int8 in the simulation too


def test_a_missed_bound_points_at_what_a_core_ml_manifest_has(student, tmp_path):
    """regression: the fix named int8_kernels and sensitivity (ONNX-only keys) and --weights-only, which does
    nothing for Core ML."""
    from effconv.errors import VerificationFailed
    from effconv.quantize.stage import quantize_artifact

    artifact, _ = student
    with pytest.raises(VerificationFailed) as failure:
        quantize_artifact(artifact, tmp_path, calib=["random"], samples=2, min_psnr_vs_float=150.0)
    message = failure.value.one_line()
    vs_float = failure.value.manifest.quantize["quality"]["psnr_vs_float_db"]
    assert f"its output is {vs_float:.1f} dB from the float artifact's, below --min-psnr-vs-float 150." in message
    assert (f"Fix: see quantize.quality, quantize.float_nodes, quantize.simulation_check in "
            f"{tmp_path / failure.value.manifest.name}.json; ship the fp16 package") in message
    assert "int8_kernels" not in message and "--weights-only" not in message and "calibrate" not in message
