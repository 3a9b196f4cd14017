"""Distillation with feature alignment on every family's tiny teacher, through the library and through `effconv run`
(CogVideoX's and Mochi's tapped blocks return (hidden_states, conv_cache): their adapters take the hidden state)."""

import json
import math

import pytest
import torch
import yaml

from effconv.distill.features import captured_features
from effconv.distill.stage import distill
from effconv.models.loader import load_model
from effconv.spec import load_spec
from effconv.video.clips import BUNDLED_CLIP

from conftest import FAMILY_SPECS, REPO

RECIPE = REPO / "tests" / "data" / "distill-tiny.yaml"


@pytest.fixture(scope="module")
def two_clip_recipe(tmp_path_factory):
    """distill-tiny with one clip per step: two steps see two clips, each through the teacher."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["distill"] |= {"grad_accum": 1, "checkpoint_every": 1}
    path = tmp_path_factory.mktemp("recipe") / "two-clips.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("spec", FAMILY_SPECS, ids=lambda p: p.stem)
def test_every_family_distills_two_steps_with_a_finite_nonzero_feature_loss(spec, two_clip_recipe, tmp_path):
    result = distill(load_spec(spec), two_clip_recipe, [BUNDLED_CLIP], tmp_path, steps=2, workers=0)
    assert result.manifest.recipe["distill"]["losses"]["features"] > 0
    history = result.manifest.history
    assert [record["step"] for record in history] == [1, 2]
    assert result.manifest.run["steps_this_run"] == 2
    for record in history:
        assert math.isfinite(record["features"]) and record["features"] > 0
        assert math.isfinite(record["total"]) and record["total"] > record["features"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-0000001", "step-0000002"]


@pytest.mark.parametrize("spec", [s for s in FAMILY_SPECS if s.stem.startswith(("cogvideox", "mochi"))],
                         ids=lambda p: p.stem)
def test_conv_cache_families_tap_the_hidden_state_their_blocks_pass_on(spec):
    teacher = load_model(load_spec(spec))
    latent = torch.randn(teacher.input_shape)
    taps = teacher.adapter.feature_taps
    passed_on = {}
    # what each tapped block hands to the next one: its output's hidden state, recorded at the next block's input
    following = {"mid": "decoder.up_blocks.0", "up0": "decoder.up_blocks.1"}
    hooks = [teacher.model.get_submodule(path).register_forward_pre_hook(
        lambda _m, args, name=name: passed_on.setdefault(name, []).append(args[0])) for name, path in following.items()]
    with torch.no_grad(), captured_features(teacher.model, taps, teacher.adapter.tapped_hidden_state) as features:
        teacher.module(latent)
    for hook in hooks:
        hook.remove()
    for name in taps:
        assert torch.equal(features[name], torch.cat(passed_on[name], dim=2))


def test_run_distills_a_cogvideox_teacher_with_feature_alignment(cli, tmp_path):
    recipe = {
        "name": "cogvideox-run",
        "teacher": str(REPO / "examples" / "specs" / "cogvideox-tiny.yaml"),
        "data": {"train": ["effconv:assets/video"]},
        "student": yaml.safe_load(RECIPE.read_text())["student"],
        "distill": {"steps": 2, "batch_size": 1, "grad_accum": 1, "clips": 2, "checkpoint_every": 1},
        "export": {"backends": ["onnx"]},
        "quantize": {"backends": []},
        "profile": {"devices": ["host-cpu"], "host_repeats": 1},
    }
    path = tmp_path / "cogvideox-run.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = cli("run", path, "--out", tmp_path / "run", "--json")
    assert code == 0, err
    assert "internal error" not in err
    stages = {s["stage"]: s for s in json.loads(out)["stages"]}
    assert stages["distill"]["action"] == "run" and stages["distill"]["passed"] is True
    history = json.loads((tmp_path / "run" / "distill" / "distill.json").read_text())["history"]
    assert [r["step"] for r in history] == [1, 2]
    assert all(math.isfinite(r["features"]) and r["features"] > 0 for r in history)
