"""`effconv quantize --teacher` and `decode --teacher` refuse a teacher the student was not distilled from in one line,
as `eval` does: by its latents (channels, compression) and, where the student records its teacher, by family; a
wrong-family teacher is not blamed for the student's clip size."""

from __future__ import annotations

import pytest

from conftest import SPECS
from effconv.video.clips import BUNDLED_CLIP

TEACHER = SPECS / "hunyuan-tiny.yaml"


@pytest.fixture(scope="module")
def student_onnx(tmp_path_factory):
    """The hunyuan-tiny student (`rewrite --recipe tiny`) exported whole-clip and streaming to ONNX."""
    from effconv.convert.stage import convert
    from effconv.rewrite.stage import rewrite
    from effconv.spec import load_spec

    out = tmp_path_factory.mktemp("student")
    name = rewrite(load_spec(TEACHER), "tiny", out).name
    student = load_spec(out / f"{name}.yaml")
    convert(student, "onnx", out / "whole")
    convert(student, "onnx", out / "stream", stream=1)
    return out / "whole" / f"{name}.onnx", next((out / "stream").glob("*.onnx"))


def _refusal(cli, *args) -> str:
    code, out, err = cli(*args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("other", ["mochi-tiny", "demo-teacher", "wan21-tiny"])
def test_quantize_refuses_a_teacher_the_student_was_not_distilled_from(cli, student_onnx, tmp_path, other):
    line = _refusal(cli, "quantize", student_onnx[0], "--calib", BUNDLED_CLIP, "--teacher", SPECS / f"{other}.yaml",
                    "--out", tmp_path / "q")
    assert "does not match student 'hunyuan-tiny-student' (distilled from 'hunyuan-tiny'" in line
    assert "input.frames" not in line
    assert not (tmp_path / "q").exists()


def test_decode_refuses_a_teacher_of_another_family_with_the_same_latents(cli, student_onnx, tmp_path):
    line = _refusal(cli, "decode", student_onnx[1], "--video", BUNDLED_CLIP, "--teacher", SPECS / "wan21-tiny.yaml",
                    "--out", tmp_path / "out.npy")
    assert "does not match student" in line and "AutoencoderKLWan" in line
    assert not (tmp_path / "out.npy").exists()


def test_calibration_refuses_a_student_without_weights_to_find_its_teacher_from(student_onnx):
    """regression: a student spec with no saved weights crashed calibration (`None.with_suffix`, exit 3)."""
    from effconv.artifacts import read_manifest
    from effconv.errors import EffconvError
    from effconv.quantize.calibration import teacher_model

    manifest = read_manifest(student_onnx[0].with_suffix(".json"))
    model = {key: value for key, value in manifest.spec["model"].items() if key != "pretrained"}
    unsaved = manifest.model_copy(update={"spec": manifest.spec | {"model": model}})
    with pytest.raises(EffconvError, match="no saved weights to find its teacher from"):
        teacher_model(unsaved)
