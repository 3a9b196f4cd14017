"""`effconv quantize` on ONNX: static QDQ per-channel int8 on a student of the shipped demo teacher,
calibrated with teacher latents of the bundled real clip; size, fidelity, gate and bad-input checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from effconv.artifacts import read_manifest
from effconv.convert.stage import convert
from effconv.video.clips import BUNDLED_CLIP
from effconv.backends.onnx.quantize import run_all, int8_kernel_rule, node_kinds
from effconv.quantize.gate import speed_warning
from effconv.quantize.stage import quantize_artifact
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec

from conftest import SPECS


@pytest.fixture(scope="module")
def student_onnx(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("student")
    rewrite(load_spec(SPECS / "demo-teacher.yaml"), "demo", root)
    convert(load_spec(root / "demo-teacher-student.yaml"), "onnx", root / "onnx")
    return root / "onnx" / "demo-teacher-student.onnx"


@pytest.fixture(scope="module")
def teacher_latents(student_onnx):
    """Teacher-encoder latents (and frames) of 4 clips of the bundled video, made once for the module."""
    from effconv.quantize.calibration import from_video, teacher_model

    source = read_manifest(student_onnx.with_suffix(".json"))
    return from_video(teacher_model(source), [BUNDLED_CLIP], 4)


def _weight_bytes(path: Path) -> int:
    """Bytes of the constant tensors with more than 64 elements (the conv weights, not scales or shapes)."""
    model = onnx.load(str(path))
    return sum(len(t.raw_data) for t in model.graph.initializer if np.prod(t.dims) > 64)


def _quantized_ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_all_nodes_int8_is_smaller_and_close_to_float(student_onnx, tmp_path):
    manifest = quantize_artifact(student_onnx, tmp_path, calib=[str(BUNDLED_CLIP)], samples=4, activation="uint8",
                                 select_by_speed=False)
    report = manifest.quantize
    kinds = node_kinds(onnx.load(str(student_onnx)))
    assert report["nodes"] == {"int8": len(kinds), "float": 0, "kinds": report["nodes"]["kinds"]}
    assert _weight_bytes(student_onnx) / _weight_bytes(tmp_path / manifest.artifact) >= 3.9  # fp32 -> int8
    assert report["size_bytes"]["ratio"] >= 1.4  # a tiny student's file is ~30% graph structure
    assert report["quality"]["psnr_vs_float_db"] >= 30.0
    kernels = report["int8_kernels"]
    assert kernels == {**kernels, **int8_kernel_rule()}  # the rule for this host, and what it chose
    assert kernels["kernel_loss_db"] <= 1.0  # the int8 kernels lose nothing to saturation (8-bit weights here: 12 dB)
    assert report["calibration"] == {"source": "video: bigbuckbunny.mp4", "samples": 3, "held_out": 1,
                                     "held_out_source": "video: bigbuckbunny.mp4"}
    assert "QuantizeLinear" in _quantized_ops(tmp_path / manifest.artifact)
    assert report["activation_type"]["chosen"] == "uint8"
    written = json.loads((tmp_path / f"{manifest.name}.json").read_text())
    assert written["quantize"]["size_bytes"] == report["size_bytes"]
    # forced int8 can be slower than float here: the manifest carries the warning exactly when its own timing says so
    assert written["quantize"].get("speed_warning") == speed_warning(report["latency_ms"])


def test_sensitivity_is_skipped_when_int8_already_meets_the_gate(student_onnx, tmp_path):
    manifest = quantize_artifact(student_onnx, tmp_path, calib=[str(BUNDLED_CLIP)], samples=4, activation="uint8",
                                 select_by_speed=False, max_psnr_drop=1.0)
    report = manifest.quantize
    assert report["quality"]["psnr_drop_db"] <= 1.0 and report["gate"]["passed"]
    assert report["sensitivity"] == [] and report["nodes"]["float"] == 0
    assert any("met the gate" in note and "--sensitivity" in note for note in report["notes"])


@pytest.mark.slow  # the per-node sensitivity pass quantizes and runs the student once per node: ~45 s on 2 cores
def test_gate_returns_sensitive_nodes_to_float_or_fails(student_onnx, teacher_latents, tmp_path):
    """Ground truth = float output + mild noise, so int8 rounding shows as a measurable PSNR drop."""
    calib = teacher_latents
    outputs = run_all(student_onnx, calib.feeds, threads=1)
    rng = np.random.default_rng(0)
    frames = np.concatenate([o + rng.normal(0, 0.003, o.shape).astype(np.float32) for o in outputs])
    latents_file = tmp_path / "calib.npz"
    np.savez(latents_file, latents=np.concatenate(calib.latents), frames=frames)

    loose = quantize_artifact(student_onnx, tmp_path / "loose", calib=[str(latents_file)], samples=4, activation="uint8",
                              select_by_speed=False, max_psnr_drop=None)
    drop_all_int8 = loose.quantize["quality"]["psnr_drop_db"]
    assert drop_all_int8 > 0.05
    limit = round(drop_all_int8 / 4, 3)
    from effconv.errors import VerificationFailed

    try:
        tight = quantize_artifact(student_onnx, tmp_path / "tight", calib=[str(latents_file)], samples=4,
                                  activation="uint8", select_by_speed=False, max_psnr_drop=limit)
        assert tight.quantize["quality"]["psnr_drop_db"] <= limit
    except VerificationFailed as failure:
        tight = failure.manifest
        assert tight.quantize["gate"] == {**tight.quantize["gate"], "applied": True, "passed": False}
    returned = [node for node in tight.quantize["float_nodes"] if node["reason"].startswith("most sensitive")]
    assert returned and tight.quantize["nodes"]["float"] == len(returned)
    assert tight.quantize["quality"]["psnr_drop_db"] < drop_all_int8
    table = tight.quantize["sensitivity"]  # every kind, alone in int8, least sensitive (highest PSNR) last
    assert len(table) == len(node_kinds(onnx.load(str(student_onnx))))
    assert [row["psnr_vs_float_db"] for row in table] == sorted(row["psnr_vs_float_db"] for row in table)


@pytest.mark.parametrize("machine, features, saturates", [
    ("x86_64", ["avx2"], True),  # AVX2-only: vpmaddubsw sums pairs into int16
    ("x86_64", ["avx2", "avx512f"], True),  # AVX-512 without VNNI (Skylake-SP)
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], False),
    ("x86_64", ["avx2", "avx_vnni"], False),
    ("aarch64", ["asimddp"], False),
    ("aarch64", [], False),
])
def test_int8_kernel_rule_uses_7_bit_weights_exactly_where_u8s8_saturates(machine, features, saturates):
    rule = int8_kernel_rule(features, machine)
    assert rule["u8s8_saturation"] is saturates and rule["reduce_range"] is saturates
    assert rule["cpu_int8_features"] == features and "onnxruntime.ai" in rule["source"]


def test_min_psnr_vs_float_gate_fails_a_model_far_from_float_even_without_ground_truth(student_onnx, tmp_path):
    """Random latents have no ground truth, so only the fidelity bound can catch a damaged int8 model."""
    from effconv.errors import VerificationFailed

    with pytest.raises(VerificationFailed) as failure:
        quantize_artifact(student_onnx, tmp_path, calib=["random"], samples=2, weights_only=True, min_psnr_vs_float=150.0)
    gate = failure.value.manifest.quantize["gate"]
    assert gate["passed"] is False and gate["failed"] == "psnr_vs_float" and gate["psnr_vs_float_db"] < 150.0
    message = failure.value.one_line()
    assert "--min-psnr-vs-float 150" in message
    # regression: the fix pointed at int8_kernels and sensitivity, which a weight-only report does not have
    assert f"see quantize.quality in {tmp_path / failure.value.manifest.name}.json;" in message
    assert "int8_kernels" not in message and "--weights-only" not in message
    assert (tmp_path / f"{failure.value.manifest.name}.json").exists()  # written, then failed: exit 1 with the evidence


def test_weights_only_stores_int8_and_computes_float(student_onnx, tmp_path):
    manifest = quantize_artifact(student_onnx, tmp_path, calib=["random"], samples=2, weights_only=True)
    report = manifest.quantize
    assert _weight_bytes(student_onnx) / _weight_bytes(tmp_path / manifest.artifact) >= 3.9
    assert report["size_bytes"]["ratio"] >= 3.5
    assert report["quality"]["psnr_vs_float_db"] >= 30.0
    ops = _quantized_ops(tmp_path / manifest.artifact)
    assert "DequantizeLinear" in ops and "QuantizeLinear" not in ops and "Conv" in ops
    # regression: the default --min-psnr-vs-float 30 is checked, yet the gate said "not applied"
    assert report["gate"] == {**report["gate"], "applied": True, "passed": True, "min_psnr_vs_float": 30.0,
                              "max_psnr_drop": 0.3, "drop_not_applied": "no ground-truth frames in the calibration data"}
    assert any("random latents" in note for note in report["notes"])


def test_the_table_says_the_psnr_vs_float_bound_was_applied(student_onnx, tmp_path, cli):
    """regression: the table said "quality gate: not applied" while --min-psnr-vs-float was enforced."""
    code, out, err = cli("quantize", student_onnx, "--calib", "random", "--samples", "2", "--weights-only",
                         "--out", tmp_path)
    assert code == 0, err
    manifest = json.loads(next(tmp_path.glob("*-int8.json")).read_text())
    vs_float = manifest["quantize"]["quality"]["psnr_vs_float_db"]
    verdict = " ".join(out.replace("│", " ").split())  # the table's cells, unwrapped
    assert (f"quality gate passed (PSNR vs float {vs_float:.1f} dB >= 30; drop bound not applied: no ground-truth "
            "frames in the calibration data)") in verdict
    assert "not applied (" not in out


def test_speed_selection_keeps_slower_kinds_in_float(student_onnx, tmp_path):
    manifest = quantize_artifact(student_onnx, tmp_path, calib=["random"], samples=3, activation="uint8")
    report = manifest.quantize
    for row in report["nodes"]["kinds"]:
        assert row["quantized"] == (row["all_int8_ms"] / row["kind_in_float_ms"] < 1.03)
    float_kinds = {row["kind"] for row in report["nodes"]["kinds"] if not row["quantized"]}
    if report["nodes"].get("int8_compute") == 0:  # int8 compute did not pay here: weight-only fallback, all float
        float_kinds = {row["kind"] for row in report["nodes"]["kinds"]}
        assert any(note.startswith("int8 compute is not faster than float") for note in report["notes"])
    assert {node["kind"] for node in report["float_nodes"]} == float_kinds
    assert _weight_bytes(student_onnx) / _weight_bytes(tmp_path / manifest.artifact) >= 3.9  # int8 storage regardless
    assert report["latency_ms"]["threads"] >= 1 and report["latency_ms"]["float"] > 0


@pytest.mark.parametrize("args, message", [
    (["missing.onnx"], "does not exist"),
    (["model.txt"], "is not an .onnx, .mlpackage, .tflite or .pte"),
    (["{onnx}", "--samples", "1"], "--samples 1"),
    (["{onnx}", "--calib", "random", "--calib", "{video}"], "cannot be mixed"),
    (["{onnx}", "--calib", "{bad_latents}"], "has latents of shape"),
    (["{onnx}", "--calib", "{garbage_npy}"], "cannot read latents file"),
    (["{onnx}", "--max-psnr-drop", "-1"], "is negative"),
    (["{onnx}", "--activation", "int4"], "unknown --activation"),
    (["{onnx}", "--device", "nokia3310"], "nokia3310"),
    (["{onnx}", "--search-seconds", "-1"], "--search-seconds -1"),
    (["{orphan}"], "manifest"),
])
def test_bad_input_exits_2_with_one_line(cli, student_onnx, tmp_path, args, message):
    (tmp_path / "model.txt").write_text("x")
    np.save(tmp_path / "bad.npy", np.zeros((2, 8, 3, 4, 4), np.float32))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    orphan = tmp_path / "orphan.onnx"
    orphan.write_bytes(student_onnx.read_bytes())
    values = {"onnx": student_onnx, "video": BUNDLED_CLIP, "bad_latents": tmp_path / "bad.npy",
              "garbage_npy": tmp_path / "garbage.npy", "orphan": orphan}
    argv = [a.format(**values) if "{" in a else (str(tmp_path / a) if a.endswith((".onnx", ".txt")) else a) for a in args]
    out_dir = tmp_path / "out"
    code, _, err = cli("quantize", *argv, "--out", out_dir)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_already_quantized_is_refused(cli, student_onnx, tmp_path):
    quantize_artifact(student_onnx, tmp_path / "q", calib=["random"], samples=2, weights_only=True)
    code, _, err = cli("quantize", tmp_path / "q" / "demo-teacher-student-int8.onnx", "--out", tmp_path / "again")
    assert code == 2 and "already quantized" in err


def test_ranges_collected_with_optimizations_equal_onnxruntimes_own(student_onnx, tmp_path):
    """effconv runs onnxruntime's calibrator with graph optimizations on (3x faster on the paper-size student); the
    ranges must be the ones onnxruntime's own unoptimized calibration session gives."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, load_tensors_data

    from effconv.backends.base import CalibrationSet
    from effconv.backends.onnx.quantize import COMPUTE_OPS, FeedReader, _Workspace, _preprocess

    shape = read_manifest(student_onnx.with_suffix(".json")).inputs[0].shape
    latents = [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in range(2)]
    preprocessed = tmp_path / "pre.onnx"
    _preprocess(student_onnx, preprocessed)
    workspace = _Workspace(tmp_path, student_onnx, preprocessed, CalibrationSet(latents, None, "test"), [], False, threads=2)
    ours = load_tensors_data(workspace.ranges("MinMax")).data
    reference = create_calibrator(preprocessed, list(COMPUTE_OPS), augmented_model_path=str(tmp_path / "aug.onnx"),
                                  calibrate_method=CalibrationMethod.MinMax)
    reference.collect_data(FeedReader(workspace.input_names, [(latent,) for latent in latents]))
    theirs = reference.compute_data().data
    assert ours.keys() == theirs.keys() and len(ours) > 50
    for name, expected in theirs.items():
        low, high = (float(np.asarray(v).ravel()[0]) for v in ours[name].range_value)
        want_low, want_high = (float(np.asarray(v).ravel()[0]) for v in expected.range_value)
        assert low == pytest.approx(want_low, rel=1e-4, abs=1e-6) and high == pytest.approx(want_high, rel=1e-4, abs=1e-6)


def test_validation_split_sizes():
    from effconv.backends.base import CalibrationSet
    from effconv.backends.onnx.quantize import _validation_split

    def sizes(count: int) -> tuple[int, int, str]:
        latents = [np.full((1, 2), index, np.float32) for index in range(count)]
        fit, validation, report = _validation_split(CalibrationSet(latents, None, "test"))
        assert not {float(x[0, 0]) for x in fit.latents} & {float(x[0, 0]) for x in validation.latents} or count < 3
        return len(fit), len(validation), report["split"]

    assert sizes(2) == (2, 2, "in-sample")
    assert sizes(3) == (2, 1, "last 1 of 3 calibration samples, kept out of the ranges")
    assert sizes(12)[:2] == (8, 4)


def test_zero_search_seconds_decides_every_choice_by_a_stated_rule(student_onnx, tmp_path):
    manifest = quantize_artifact(student_onnx, tmp_path, calib=["random"], samples=8, search_seconds=0)
    report = manifest.quantize
    assert report["activation_type"]["chosen"] == "uint8" and "not measured" in report["activation_type"]["not_timed"]
    assert report["calibration_method"]["chosen"] == "MinMax" and "not measured" in report["calibration_method"]["not_compared"]
    assert all(row["quantized"] and row["by"].startswith("rule") for row in report["nodes"]["kinds"])
    assert report["search"]["seconds"] == 0 and report["search"]["run_seconds"] > 0
    assert report["validation"]["samples"] == 2 and report["quality"]["samples"] == 2  # 8 = 4 ranges + 2 validation + 2 held out
    assert not list(tmp_path.rglob("*.weight-only.onnx"))  # the fallback's candidate never stays behind
    if report["nodes"].get("int8_compute") == 0:  # int8 lost to float and to weight-only: the candidate is recorded
        assert report["rejected_int8"]["latency_ms"]["speedup"] < 1 / 1.03
        assert report["rejected_int8"]["latency_ms"]["speedup"] <= report["latency_ms"]["speedup"]
    else:
        assert any("the gate on the validation split not measured" in note for note in report["notes"])
        if report["latency_ms"]["speedup"] < 1 / 1.03:  # slower than float, yet faster than weight-only
            assert any("the weight-only fallback ran slower still" in note for note in report["notes"])


def test_slow_int8_compute_is_kept_when_weight_only_is_slower_still():
    from effconv.backends.onnx.quantize import keeps_int8_compute

    # the Hunyuan mobile student's weight-only model ran at 0.53x float in onnxruntime (every weight dequantized per call)
    assert keeps_int8_compute({"speedup": 0.9}, {"speedup": 0.53})
    assert not keeps_int8_compute({"speedup": 0.9}, {"speedup": 0.99})


def test_choices_are_scored_on_the_validation_split(student_onnx, tmp_path):
    manifest = quantize_artifact(student_onnx, tmp_path, calib=["random"], samples=8, activation="uint8",
                                 select_by_speed=False, search_seconds=600)
    report = manifest.quantize
    assert report["validation"] == {"samples": 2, "split": "last 2 of 6 calibration samples, kept out of the ranges"}
    assert report["calibration_method"]["by"] == "validation psnr_vs_float_db"
    assert set(report["calibration_method"]["scores"]) == {"MinMax", "Percentile"}
    assert report["quality"]["samples"] == 2 and report["latency_ms"]["timed_runs"] == 3  # topped up to 3 timed runs


def test_another_device_decides_kinds_from_its_profile(student_onnx, tmp_path):
    from effconv.profile.estimate.int8_kinds import kind_decisions

    decisions = kind_decisions(student_onnx, "pixel9")
    assert set(decisions) == set(node_kinds(onnx.load(str(student_onnx))).values())
    assert all(d["int8"] == (d["float_ms"] / d["int8_ms"] >= 1.03) for d in decisions.values())
    kept_float = sorted(decisions)[0]
    decisions[kept_float] = {**decisions[kept_float], "int8": False, "why": "test: kept float"}
    manifest = quantize_artifact(student_onnx, tmp_path, calib=["random"], samples=4, activation="uint8",
                                 target_device="pixel9", kind_decisions=decisions, search_seconds=0)
    report = manifest.quantize
    assert report["target_device"] == "pixel9"
    assert all(row["by"] == "device profile pixel9" for row in report["nodes"]["kinds"])
    kinds = node_kinds(onnx.load(str(student_onnx)))
    expected_float = {n for n, k in kinds.items() if not decisions[k]["int8"]}
    assert {node["name"] for node in report["float_nodes"]} == expected_float
    assert report["nodes"]["float"] == len(expected_float) > 0


def test_progress_is_logged_when_stderr_is_not_a_terminal(cli, student_onnx, tmp_path):
    code, _, err = cli("quantize", student_onnx, "--calib", "random", "--samples", "4", "--search-seconds", "0",
                       "--out", tmp_path / "out")
    assert code in (0, 1), err
    lines = [line for line in err.splitlines() if "] Quantizing: " in line]
    assert re.fullmatch(r"\[\s*\d+ s\] Quantizing: making calibration latents \(\d+\.\d s\)", lines[0]), lines[0]
    assert any("running float and int8 on the 1 held-out samples" in line for line in lines)
