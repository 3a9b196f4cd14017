"""Students for the quantize backend tests: the demo teacher's student at widths whose weights dominate
the exported file (about 1.9 M parameters), so that size ratios measure the weights and not the graph."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import SPECS
from effconv.artifacts import read_manifest
from effconv.convert.stage import convert
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec

DEMO_TEACHER = SPECS / "demo-teacher.yaml"
WIDE_STUDENT = {
    "name": "wide-test",
    "description": "demo-teacher student wide enough that weights dominate the artifact size",
    "student": {"widths": [192, 192, 64, 16, 8], "layers": [1, 1, 1, 1, 1],
                "separable": [True, True, False, False, False], "upsample": [False, True, True, True],
                "kernel_size": 5, "init": "random"},
}


def student_spec(directory: Path) -> Path:
    recipe = directory / "wide-test.yaml"
    recipe.write_text(yaml.safe_dump(WIDE_STUDENT), encoding="utf-8")
    manifest = rewrite(load_spec(DEMO_TEACHER), recipe, directory / "student")
    return directory / "student" / f"{manifest.name}.yaml"


def converted_student(directory: Path, backend: str):
    """(artifact path, manifest) of the wide student converted to `backend`."""
    manifest = convert(load_spec(student_spec(directory)), backend, directory / backend)
    artifact = directory / backend / manifest.artifact
    return artifact, read_manifest(artifact.with_name(f"{manifest.name}.json"))
