"""Seeded fuzzing of every input effconv reads: mutated specs, recipes, device profiles, manifests,
ONNX files, videos, and eval's teacher and student. Each case must exit 0 (the mutation happened to be valid) or 2 with one line,
change nothing outside --out, and leave --out untouched unless it succeeded.

Seeds are the test ids, so a failing case reruns alone: `pytest tests/test_fuzz.py -k spec-17`.
"""

from __future__ import annotations

import json
import random

import pytest

from effconv.video.clips import BUNDLED_CLIP
from effconv.recipe import packaged_recipes

from conftest import REPO, SPECS
from fuzzing import (  # noqa: F401 - capped_memory, onnx_artifact and sandbox are fixtures
    capped_memory, copy_artifact, copy_student, mutate_bytes, mutate_tree, mutated_yaml, onnx_artifact, sandbox,
    student_spec,
)

SPEC_SOURCES = sorted(SPECS.glob("*.yaml"))
RECIPE_SOURCES = [REPO / "effconv" / "recipes" / f"{name}.yaml" for name in packaged_recipes()]
DEVICE_SOURCES = sorted((REPO / "effconv" / "device_profiles").glob("*.yaml"))
TEACHER = SPECS / "hunyuan-tiny.yaml"
SPEC_CASES, RECIPE_CASES, DEVICE_CASES, MANIFEST_CASES, ONNX_CASES, VIDEO_CASES, EVAL_CASES = 120, 60, 120, 40, 24, 10, 24


def cases(count: int) -> list:
    """Seeds 0..count-1: the first half in the default run, the rest under `-m slow` (the default run has a time budget)."""
    return [case if case < count // 2 else pytest.param(case, marks=pytest.mark.slow) for case in range(count)]


pytestmark = pytest.mark.timeout(120)


# Every other case mutates only below one section, so more mutants get past the schema into the
# code that builds models, students and estimates.
SPEC_FOCUS = [(), ("model", "config")]
RECIPE_FOCUS = [(), ("student",)]
DEVICE_FOCUS = [(), ("units",), (), ("memory",)]


@pytest.mark.parametrize("case", cases(SPEC_CASES), ids=lambda i: f"spec-{i}")
def test_mutated_spec(case, sandbox):
    source = SPEC_SOURCES[case % len(SPEC_SOURCES)]
    text = mutated_yaml(source, f"spec-{case}", SPEC_FOCUS[case % 2]).replace("../../effconv/", f"{REPO}/effconv/")  # weights path from in/
    sandbox.run("inspect", sandbox.write("spec.yaml", text))


@pytest.mark.parametrize("case", cases(RECIPE_CASES), ids=lambda i: f"recipe-{i}")
def test_mutated_recipe(case, sandbox):
    recipe = sandbox.write("recipe.yaml", mutated_yaml(RECIPE_SOURCES[case % len(RECIPE_SOURCES)], f"recipe-{case}", RECIPE_FOCUS[case % 2]))
    sandbox.run("rewrite", TEACHER, "--recipe", recipe, "--out", sandbox.out)


@pytest.mark.parametrize("case", cases(DEVICE_CASES), ids=lambda i: f"device-{i}")
def test_mutated_device_profile(case, sandbox, onnx_artifact):
    device = sandbox.write("device.yaml", mutated_yaml(DEVICE_SOURCES[case % len(DEVICE_SOURCES)], f"device-{case}", DEVICE_FOCUS[case % 4]))
    sandbox.run("profile", onnx_artifact, "--device", device, "--json")


@pytest.mark.parametrize("case", cases(MANIFEST_CASES), ids=lambda i: f"manifest-{i}")
def test_mutated_manifest(case, sandbox, onnx_artifact):
    artifact = copy_artifact(onnx_artifact, sandbox.inputs)
    manifest = artifact.with_suffix(".json")
    rng = random.Random(f"manifest-{case}")
    tree = json.loads(manifest.read_text())
    for _ in range(rng.randint(1, 3)):
        tree = mutate_tree(tree, rng)
    manifest.write_text(json.dumps(tree))
    sandbox.run("profile", artifact, "--device", "pixel9")


@pytest.mark.parametrize("case", cases(ONNX_CASES), ids=lambda i: f"onnx-{i}")
def test_mutated_onnx(case, sandbox, onnx_artifact):
    artifact = copy_artifact(onnx_artifact, sandbox.inputs)
    artifact.write_bytes(mutate_bytes(artifact.read_bytes(), random.Random(f"onnx-{case}")))
    sandbox.run("profile", artifact, "--device", "iphone16pro")


@pytest.mark.parametrize("case", cases(VIDEO_CASES), ids=lambda i: f"video-{i}")
def test_mutated_video(case, sandbox):
    video = sandbox.write("clip.mp4", mutate_bytes(BUNDLED_CLIP.read_bytes(), random.Random(f"video-{case}")))
    sandbox.run("eval", TEACHER, "--data", video)


# eval's inputs beside the videos, in turn: the --teacher spec, the student's spec, and the teacher recorded in
# the student's manifest (the one eval uses without --teacher).
EVAL_TARGETS = ["teacher", "student", "recorded-teacher"]


@pytest.mark.parametrize("case", cases(EVAL_CASES), ids=lambda i: f"eval-{i}")
def test_mutated_eval_input(case, sandbox, student_spec):
    student = copy_student(student_spec, sandbox.inputs / "student")
    target, seed = EVAL_TARGETS[case % 3], f"eval-{case}"
    options = []
    if target == "teacher":
        source = SPEC_SOURCES[case % len(SPEC_SOURCES)]
        text = mutated_yaml(source, seed, SPEC_FOCUS[case % 2]).replace("../../effconv/", f"{REPO}/effconv/")
        options = ["--teacher", sandbox.write("teacher.yaml", text)]
    elif target == "student":
        student.write_text(mutated_yaml(student, seed, ("input",) if case % 2 else ()))
    else:
        manifest = student.with_suffix(".json")
        rng = random.Random(seed)
        tree = json.loads(manifest.read_text())
        for _ in range(rng.randint(1, 3)):
            tree = mutate_tree(tree, rng, focus=("teacher",))
        manifest.write_text(json.dumps(tree))
    sandbox.run("eval", student, "--data", BUNDLED_CLIP, "--save-frames", sandbox.out, *options)
