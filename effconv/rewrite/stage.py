"""The rewrite stage: teacher spec + recipe -> student decoder directory, a spec for it, a manifest.

Output in --out: NAME-student/ (save_pretrained: config.json + safetensors), NAME-student.yaml (a
spec `effconv convert` accepts), NAME-student.json (manifest with the teacher-vs-student comparison).
`import_student` writes the same three files for a student trained already (its weights, not a new build).
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import yaml
from torch import nn

from effconv.artifacts import Manifest, TensorInfo, spec_beside, staged_output, write_manifest
from effconv.errors import EffconvError, VerificationFailed
from effconv.models.loader import LoadedModel, load_model
from effconv.models.teacher_fit import check_teacher_fits, is_student
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


def _student_manifest(teacher: LoadedModel, student: TurboVAEDDecoder, spec_data: dict, **sections) -> Manifest:
    comparison = compare(teacher, student)
    shapes = comparison["output_shape"]
    return Manifest(
        name=spec_data["name"],
        backend="pytorch",
        artifact=spec_data["name"],
        spec=spec_data,
        inputs=[TensorInfo(name="latent", shape=comparison["input_shape"], dtype="float32")],
        outputs=[TensorInfo(name="video", shape=shapes["student"], dtype="float32")],
        params=comparison["params"]["student"],
        teacher_params=comparison["params"]["teacher"],
        verify={"passed": shapes["equal"], "output_shape_equal": shapes["equal"]},
        teacher=teacher.spec.resolved(),
        student_config=dict(student.config),
        comparison=comparison,
        **sections,
    )


def _check_output_shape(manifest: Manifest) -> None:
    shapes = manifest.model_extra["comparison"]["output_shape"]
    if not shapes["equal"]:
        raise VerificationFailed(
            f"the student's output {shapes['student']} differs from the teacher's {shapes['teacher']}.",
            "report this as a bug in effconv's student builder.",
            manifest=manifest,
        )


def import_student(teacher_spec: LoadedSpec, trained: LoadedSpec, out_dir: Path, allow_import: bool = False) -> Manifest:
    """A student trained already (effconv's `TurboVAEDDecoder` or the authors' `AutoencoderKLTurboVAED`), checked to
    decode `teacher_spec`'s latents and written as `rewrite` writes a student, at the teacher's clip."""
    if not is_student(trained):
        raise EffconvError(f"trained student '{trained.spec.name}' is a {trained.spec.model.diffusers or 'factory model'}, "
                           "not a Turbo-VAED student.", "point trained_student at a spec of a TurboVAEDDecoder or an "
                           "AutoencoderKLTurboVAED (the Turbo-VAED authors' format).")
    teacher = load_model(teacher_spec, allow_import=allow_import)
    student = load_model(trained).model
    check_teacher_fits(teacher, trained.spec.name, student.compression)
    spec_data = student_spec(teacher_spec, f"{teacher_spec.spec.name}{STUDENT_SUFFIX}")
    manifest = _student_manifest(teacher, student, spec_data, imported=trained.resolved())
    with staged_output(out_dir) as stage:
        write_student(stage, student, spec_data, f"Student of {teacher_spec.spec.name}, trained already: "
                      f"{trained.spec.name} ({trained.spec.model.diffusers}), imported by `effconv run`.")
        write_manifest(manifest, stage)
    _check_output_shape(manifest)
    return manifest


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
    manifest = _student_manifest(teacher, student, spec_data, init={"mode": init, "tensors": init_report},
                                 recipe={"source": source, "student": student_recipe.model_dump(mode="json")})
    with staged_output(out_dir) as stage:
        write_student(stage, student, spec_data, f"Student of {loaded.spec.name}, written by `effconv rewrite` (recipe {source}).")
        write_manifest(manifest, stage)
    _check_output_shape(manifest)
    return manifest
