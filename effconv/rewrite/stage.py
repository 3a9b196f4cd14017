"""The rewrite stage: teacher spec + recipe -> student decoder directory, a spec for it, a manifest.

Output in --out: NAME-student/ (save_pretrained: config.json + safetensors), NAME-student.yaml (a
spec `effconv convert` accepts), NAME-student.json (manifest with the teacher-vs-student comparison).
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import yaml
from torch import nn

from effconv.artifacts import Manifest, TensorInfo, spec_beside, staged_output, write_manifest
from effconv.errors import EffconvError, VerificationFailed
from effconv.models.loader import load_model
from effconv.recipe import StudentRecipe, load_recipe
from effconv.models.turbo_vaed.compare import compare
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder, build_student
from effconv.models.turbo_vaed.teacher_init import init_from_teacher
from effconv.spec import LoadedSpec, spec_from_dict

INIT_MODES = get_args(StudentRecipe.model_fields["init"].annotation)
STUDENT_SUFFIX = "-student"


def student_spec(teacher: LoadedSpec, name: str) -> dict:
    """The student's spec as YAML-ready data; paths are relative to the spec file."""
    data = {
        "name": name,
        "model": {"diffusers": TurboVAEDDecoder.__name__, "pretrained": name},
        "part": "decoder",
        "input": teacher.spec.input.model_dump(),
    }
    spec_from_dict(data, Path("."), source="student spec")
    return data


def write_student(directory: Path, student: nn.Module, spec_data: dict, header: str) -> None:
    """The student directory (save_pretrained) and its spec, both named after the spec's name."""
    name = spec_data["name"]
    student.save_pretrained(directory / name, safe_serialization=True)
    spec_beside(directory / name).write_text(f"# {header}\n" + yaml.safe_dump(spec_data, sort_keys=False), encoding="utf-8")


def _check_init(init: str) -> None:
    if init not in INIT_MODES:
        raise EffconvError(f"unknown --init '{init}'.", f"use one of: {', '.join(INIT_MODES)}.")


def rewrite(loaded: LoadedSpec, recipe_ref: str | Path, out_dir: Path, init: str | None = None,
            allow_import: bool = False) -> Manifest:
    recipe, source = load_recipe(recipe_ref)
    student_recipe = recipe.require_student(source)
    init = init or student_recipe.init
    _check_init(init)
    name = f"{loaded.spec.name}{STUDENT_SUFFIX}"
    spec_data = student_spec(loaded, name)
    teacher = load_model(loaded, allow_import=allow_import)
    student = build_student(teacher, student_recipe)
    init_report = init_from_teacher(student, teacher.model) if init == "from-teacher" else {}
    comparison = compare(teacher, student)
    shapes = comparison["output_shape"]
    with staged_output(out_dir) as stage:
        write_student(stage, student, spec_data, f"Student of {loaded.spec.name}, written by `effconv rewrite` (recipe {source}).")
        manifest = Manifest(
            name=name,
            backend="pytorch",
            artifact=name,
            spec=spec_data,
            inputs=[TensorInfo(name="latent", shape=comparison["input_shape"], dtype="float32")],
            outputs=[TensorInfo(name="video", shape=shapes["student"], dtype="float32")],
            params=comparison["params"]["student"],
            verify={"passed": shapes["equal"], "output_shape_equal": shapes["equal"]},
            teacher=loaded.resolved(),
            recipe={"source": source, "student": student_recipe.model_dump(mode="json")},
            student_config=dict(student.config),
            init={"mode": init, "tensors": init_report},
            comparison=comparison,
        )
        write_manifest(manifest, stage)
    if not shapes["equal"]:
        raise VerificationFailed(
            f"the student's output {shapes['student']} differs from the teacher's {shapes['teacher']}.",
            "report this as a bug in effconv's student builder.",
            manifest=manifest,
        )
    return manifest
