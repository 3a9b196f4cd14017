"""ONNX export of every family verifies against PyTorch, and the manifest tells the truth."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from effconv.artifacts import manifest_path, read_manifest
from effconv.convert.layout import RULE, STUDENT_DEFAULT, SWITCH_MIN_ROUNDS, SWITCH_SPEEDUP, decide
from effconv.convert.stage import convert
from effconv.models.loader import load_model
from effconv.profile.graph.targets import resolve
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


LEGACY_STUDENT = Path(__file__).parent / "data" / "legacy-student" / "hunyuan-tiny-student.yaml"


@pytest.mark.parametrize(("conv2d", "conv3d", "chosen"), [
    ([100, 101, 99], [91, 92, 90], "conv2d"),  # conv3d 1.10x faster in every round: the demo student's spread
    ([126, 125, 127], [100, 100, 100], "conv2d"),  # 1.26x, the largest conv3d advantage measured: default kept
    ([150, 150, 150, 150], [100, 100, 151, 100], "conv2d"),  # 1.5x by median, but conv2d won one round
    ([150, 150], [100, 100], "conv2d"),  # two rounds are too few to switch on
    ([130, 130, 130], [100, 100, 100], "conv3d"),  # exactly 1.3x, every round, three rounds: switched
    ([129.9, 129.9, 129.9], [100, 100, 100], "conv2d"),  # just under the margin
    ([120, 118, 119, 121, 122], [60, 61, 59, 62, 60], "conv3d"),  # 2x: switched
    ([60, 61, 59], [120, 118, 119], "conv2d"),  # the default faster
])
def test_layout_rule_keeps_conv2d_unless_conv3d_wins_every_round_by_the_margin(conv2d, conv3d, chosen):
    """The rule that replaced "ship whichever timed faster", whose choice flipped between runs on the demo student
    (the two layouts 5-10% apart), so the same inputs gave different artifacts."""
    layout, why = decide({"conv3d": conv3d, "conv2d": conv2d})
    assert layout == chosen
    assert why.endswith("switched from the default" if chosen == "conv3d" else "the default kept")
    assert f"faster in {sum(c3 < c2 for c2, c3 in zip(conv2d, conv3d))} of {len(conv2d)} rounds" in why


def test_student_cli_shows_each_step_and_the_layout_with_its_timings(cli, tmp_path):
    """Where stderr is a log, each finished step is a line with its duration; the table names the layout chosen,
    the medians behind it and the rule, and the manifest keeps every round."""
    code, printed, err = cli("convert", LEGACY_STUDENT, "--to", "onnx", "--out", tmp_path)
    assert code == 0, err
    steps = [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in err.splitlines() if ": " in line]
    assert steps == ["loading the model", "running PyTorch for the reference output",
                     "conv3d layout: exporting with torch.onnx (dynamo, opset 18)",
                     "conv2d layout: rewriting Conv3d as Conv2d, checked lossless",
                     "conv2d layout: exporting with torch.onnx (dynamo, opset 18)",
                     "timing the conv3d and conv2d layouts in onnxruntime",
                     "verifying in onnxruntime (CPU execution provider)"]
    assert all(line.startswith("[") and line.endswith(" s)") for line in err.splitlines())
    layout = read_manifest(tmp_path / "hunyuan-tiny-student.json").model_extra["layout"]
    rounds = layout["rounds_ms"]
    assert set(rounds) == {"conv3d", "conv2d"} and len(rounds["conv3d"]) == len(rounds["conv2d"]) >= 1
    assert layout["chosen"] == decide(rounds)[0] and layout["default"] == STUDENT_DEFAULT and layout["rule"] == RULE
    assert layout["measured_ms"]["conv2d"] == pytest.approx(float(np.median(rounds["conv2d"])), abs=1e-3)
    table = " ".join(printed.replace("│", " ").split())
    medians = f"median conv3d {layout['measured_ms']['conv3d']:.1f} ms, conv2d {layout['measured_ms']['conv2d']:.1f} ms"
    assert f"layout {layout['chosen']} (auto: both layouts timed in onnxruntime on this host ({medians};" in table
    assert f"(rule: {RULE}; --layout forces one))" in table
    assert "verified yes: ran in onnxruntime (CPU execution provider)" in table


def test_convert_help_states_the_layout_rule_the_code_applies(cli):
    code, printed, _ = cli("convert", "--help")
    assert code == 0
    assert f">= {SWITCH_SPEEDUP:g}x faster by median and in each of >= {SWITCH_MIN_ROUNDS}" in " ".join(printed.replace("│", " ").split())
