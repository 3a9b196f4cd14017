"""A teacher whose name holds dots (`wan2.1-tiny`, as real releases are named) goes through every command: each
finds the student's spec and its teacher by the whole name (`wan2.1-tiny-student.yaml`), never a name cut at the
first dot (`wan2.yaml`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from effconv.artifacts import Manifest, read_manifest, spec_beside
from effconv.models.loader import load_model
from effconv.models.teacher_fit import teacher_spec_of
from effconv.quantize.calibration import teacher_model
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec

from conftest import SPECS

VIDEO = Path(__file__).resolve().parents[1] / "effconv" / "assets" / "video" / "bigbuckbunny.mp4"
TEACHER_NAME = "wan2.1-tiny"
STUDENT_NAME = f"{TEACHER_NAME}-student"


def dotted_teacher(directory: Path) -> Path:
    """examples/specs/wan21-tiny.yaml renamed `wan2.1-tiny`."""
    text = (SPECS / "wan21-tiny.yaml").read_text().replace("name: wan21-tiny", f"name: {TEACHER_NAME}")
    path = directory / f"{TEACHER_NAME}.yaml"
    path.write_text(text)
    return path


def test_spec_beside_keeps_every_dot_of_the_directory_name(tmp_path):
    assert spec_beside(tmp_path / STUDENT_NAME) == tmp_path / f"{STUDENT_NAME}.yaml"
    assert spec_beside(tmp_path / "v1.0" / "a.b.c") == tmp_path / "v1.0" / "a.b.c.yaml"


def test_a_dotted_students_teacher_is_found_for_calibration_and_decode(tmp_path):
    """The fast check: a rewritten student's manifest leads quantize's calibration and decode to its teacher."""
    teacher = dotted_teacher(tmp_path)
    manifest = rewrite(load_spec(teacher), "tiny", tmp_path / "out")
    assert (tmp_path / "out" / f"{STUDENT_NAME}.yaml").is_file() and (tmp_path / "out" / STUDENT_NAME).is_dir()
    student = load_spec(tmp_path / "out" / f"{STUDENT_NAME}.yaml")
    # as `convert` writes it for the student: its spec and the latent compression it decodes
    student_manifest = Manifest(**manifest.model_dump(), compression=load_model(student).compression.as_dict())
    student_manifest = student_manifest.model_copy(update={"spec": student.resolved()})
    assert teacher_model(student_manifest).spec.spec.name == TEACHER_NAME
    assert teacher_spec_of(student_manifest.model_spec(), None)[0].spec.name == TEACHER_NAME


@pytest.mark.slow
def test_a_dotted_teacher_goes_through_every_command(cli, tmp_path):
    """rewrite -> distill (2 steps) -> convert -> quantize (video calibration) -> convert --stream 1 -> decode --video
    -> lint -> profile, each exit 0, every file named after the whole dotted name."""
    teacher = dotted_teacher(tmp_path)
    steps = [
        ("rewrite", teacher, "--recipe", "tiny", "--out", tmp_path / "rewrite"),
        ("distill", teacher, "--recipe", "tiny", "--data", VIDEO, "--out", tmp_path / "distill", "--steps", "2", "--workers", "0"),
        ("convert", tmp_path / "distill" / f"{STUDENT_NAME}.yaml", "--to", "onnx", "--layout", "conv3d", "--out", tmp_path / "onnx"),
        ("quantize", tmp_path / "onnx" / f"{STUDENT_NAME}.onnx", "--calib", VIDEO, "--samples", "2", "--weights-only",
         "--max-psnr-drop", "99", "--min-psnr-vs-float", "0", "--out", tmp_path / "int8"),
        ("convert", tmp_path / "distill" / f"{STUDENT_NAME}.yaml", "--to", "onnx", "--stream", "1", "--layout", "conv3d",
         "--out", tmp_path / "stream"),
        ("decode", tmp_path / "stream" / f"{STUDENT_NAME}.onnx", "--video", VIDEO, "--frames", "9", "--out", tmp_path / "decoded.mp4", "--json"),
        ("lint", tmp_path / "onnx" / f"{STUDENT_NAME}.onnx", "--backend", "onnx"),
        ("profile", tmp_path / "onnx" / f"{STUDENT_NAME}.onnx", "--device", "iphone16pro"),
    ]
    outputs = {}
    for args in steps:
        code, out, err = cli(*args)
        assert code == 0, f"{args[0]}: {err}"
        outputs[args[0]] = out
    assert (tmp_path / "rewrite" / f"{STUDENT_NAME}.yaml").is_file() and (tmp_path / "distill" / STUDENT_NAME).is_dir()
    assert read_manifest(tmp_path / "onnx" / f"{STUDENT_NAME}.json").name == STUDENT_NAME
    calibration = next((tmp_path / "int8").glob("*.json"))
    assert json.loads(calibration.read_text())["quantize"]["calibration"]["source"] != "random"
    assert json.loads(outputs["decode"])["video_frames"] == 9 and (tmp_path / "decoded.mp4").is_file()
