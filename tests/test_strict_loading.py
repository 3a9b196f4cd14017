"""A save_pretrained directory loads only when its weights cover the model exactly: a missing tensor (which
from_pretrained would leave at its random init) or an unexpected one is one line naming it, exit 2, for every
diffusers family, for a config override that adds modules, and for the Turbo-VAED student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from effconv.models.loader import load_model
from effconv.models.turbo_vaed.decoder import build_student
from effconv.recipe import load_recipe
from effconv.rewrite.stage import student_spec, write_student
from effconv.spec import load_spec

from conftest import FAMILY_SPECS, SPECS
from test_errors import assert_one_line_error

WEIGHTS = "diffusion_pytorch_model.safetensors"
EXTRA_KEY = "decoder.not_in_the_model.weight"


def _saved(directory: Path, spec_path: Path, **config) -> Path:
    """`spec_path`'s model (with `config` on top) saved with save_pretrained, and a spec that loads it."""
    spec = yaml.safe_load(spec_path.read_text())
    spec["model"]["config"] = {**spec["model"]["config"], **config}
    load_spec_path = directory / "random.yaml"
    load_spec_path.write_text(yaml.safe_dump(spec))
    load_model(load_spec(load_spec_path)).model.save_pretrained(directory / "vae")
    spec["model"] = {"diffusers": spec["model"]["diffusers"], "pretrained": "vae"}
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _edit_weights(root: Path, drop: str | None = None, add: str | None = None) -> str:
    """Drop the tensor named `drop` (the last one when it is ""), or add one named `add`; returns the key."""
    tensors = load_file(root / WEIGHTS)
    if drop is not None:
        key = drop or sorted(tensors)[-1]
        del tensors[key]
    else:
        key = add
        tensors[key] = next(iter(tensors.values())).clone()
    save_file(tensors, root / WEIGHTS)
    return key


@pytest.fixture(scope="module", params=FAMILY_SPECS, ids=lambda path: path.stem)
def saved_family(request, tmp_path_factory):
    return _saved(tmp_path_factory.mktemp(request.param.stem), request.param)


def test_every_family_refuses_a_missing_key(saved_family, cli, tmp_path):
    vae = saved_family.parent / "vae"
    original = (vae / WEIGHTS).read_bytes()
    try:
        key = _edit_weights(vae, drop="")
        assert_one_line_error(*cli("inspect", saved_family), f"1 missing ({key})")
    finally:
        (vae / WEIGHTS).write_bytes(original)
    code, _, err = cli("inspect", saved_family)  # the complete directory still loads
    assert code == 0, err


def test_every_family_refuses_an_unexpected_key(saved_family, cli):
    vae = saved_family.parent / "vae"
    original = (vae / WEIGHTS).read_bytes()
    try:
        _edit_weights(vae, add=EXTRA_KEY)
        assert_one_line_error(*cli("inspect", saved_family), f"1 unexpected ({EXTRA_KEY})")
    finally:
        (vae / WEIGHTS).write_bytes(original)


def test_an_override_that_adds_attention_is_refused(cli, tmp_path):
    spec = _saved(tmp_path, SPECS / "hunyuan-tiny.yaml", mid_block_add_attention=False)
    data = yaml.safe_load(spec.read_text())
    data["model"]["config"] = {"mid_block_add_attention": True}
    spec.write_text(yaml.safe_dump(data))
    code, out, err = cli("inspect", spec)
    assert_one_line_error(code, out, err, "missing (decoder.mid_block.attentions.0.")
    assert "remove the model.config overrides" in err


def test_the_names_of_many_missing_keys_are_cut_to_three(cli, tmp_path):
    spec = _saved(tmp_path, SPECS / "hunyuan-tiny.yaml")
    tensors = load_file(tmp_path / "vae" / WEIGHTS)
    missing = sorted(key for key in tensors if key.startswith("decoder.mid_block."))
    save_file({key: value for key, value in tensors.items() if key not in missing}, tmp_path / "vae" / WEIGHTS)
    code, out, err = cli("inspect", spec)
    assert_one_line_error(code, out, err, f"{len(missing)} missing ({', '.join(missing[:3])}, and {len(missing) - 3} more)")


@pytest.fixture
def saved_student(tmp_path):
    teacher = load_model(load_spec(SPECS / "wan21-tiny.yaml"))
    recipe, _ = load_recipe("tiny")
    spec_data = student_spec(teacher.spec, "student")
    write_student(tmp_path, build_student(teacher, recipe.require_student("tiny")), spec_data, "test student")
    return tmp_path / "student.yaml"


def test_the_student_refuses_missing_and_unexpected_keys(saved_student, cli):
    root = saved_student.parent / "student"
    assert json.loads((root / "config.json").read_text())["_class_name"] == "TurboVAEDDecoder"
    original = (root / WEIGHTS).read_bytes()
    code, _, err = cli("inspect", saved_student)
    assert code == 0, err
    key = _edit_weights(root, drop="")
    assert_one_line_error(*cli("inspect", saved_student), f"TurboVAEDDecoder weights in '{root}' do not match its config: 1 missing ({key})")
    (root / WEIGHTS).write_bytes(original)
    _edit_weights(root, add=EXTRA_KEY)
    assert_one_line_error(*cli("inspect", saved_student), f"1 unexpected ({EXTRA_KEY})")
