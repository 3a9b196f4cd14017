"""The Turbo-VAED student: builder, shapes for every family, save/load, from-teacher init, `effconv rewrite`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import load_model
from effconv.recipe import load_recipe
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder, build_student, plan_upsampling, student_config
from effconv.models.turbo_vaed.teacher_init import init_from_teacher
from effconv.spec import load_spec

from conftest import FAMILY_SPECS, REPO, SPECS

PAPER_UPSAMPLE = [False, True, True, True]


@pytest.fixture(scope="module")
def tiny_recipe():
    return load_recipe("tiny")[0].student


@pytest.fixture(scope="module", params=FAMILY_SPECS, ids=lambda p: p.stem)
def teacher(request):
    return load_model(load_spec(request.param))


def test_plan_for_8x_space_4x_time_matches_the_paper():
    assert plan_upsampling(Compression(16, 4, 8), PAPER_UPSAMPLE) == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)]


def test_plan_puts_extra_spatial_factors_into_the_last_block():
    assert plan_upsampling(Compression(48, 4, 16), PAPER_UPSAMPLE)[-1] == (1, 4, 4)
    assert plan_upsampling(Compression(128, 8, 32), PAPER_UPSAMPLE) == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 8, 8)]


def test_plan_uses_a_factor_three_stage_for_mochi():
    assert plan_upsampling(Compression(12, 6, 8), PAPER_UPSAMPLE) == [(1, 1, 1), (2, 2, 2), (3, 2, 2), (1, 2, 2)]


def test_plan_without_an_upsampling_block_is_a_clear_error():
    with pytest.raises(EffconvError, match="no up block"):
        plan_upsampling(Compression(16, 4, 8), [False, False])


def test_paper_recipe_reproduces_the_paper_parameter_count():
    recipe = load_recipe("turbo-vaed")[0].student
    student = TurboVAEDDecoder(**student_config(Compression(16, 4, 8), "causal", recipe))
    params = sum(p.numel() for p in student.parameters())
    assert abs(params - 40.7e6) < 0.05e6  # paper: 40.7 M for the Hunyuan student


def test_width_scale_shrinks_widths_to_multiples():
    recipe = load_recipe("turbo-vaed")[0].student.model_copy(update={"width_scale": 0.25})
    assert recipe.scaled_widths() == [128, 128, 64, 8, 8]


@pytest.mark.parametrize("latent_frames", [1, 2, 3, 4])
def test_student_output_shape_equals_teacher(teacher, tiny_recipe, latent_frames):
    student = build_student(teacher, tiny_recipe)
    shape = list(teacher.input_shape)
    shape[2] = latent_frames
    latent = torch.randn(shape)
    with torch.no_grad():
        assert student(latent).shape == teacher.module(latent).shape


def test_feature_taps_name_mid_and_up_block_outputs(tiny_recipe):
    teacher = load_model(load_spec(SPECS / "hunyuan-tiny.yaml"))
    student = build_student(teacher, tiny_recipe)
    with torch.no_grad():
        video, features = student(teacher.example_input(), return_features=True)
    assert list(features) == student.feature_taps
    assert features["mid_block"].shape[1] == tiny_recipe.widths[0]
    assert features["up_blocks.0"].shape[1] == tiny_recipe.widths[1]
    assert features["up_blocks.3"].shape[-1] == video.shape[-1]


def test_save_and_load_round_trip_gives_identical_output(tmp_path, tiny_recipe):
    teacher = load_model(load_spec(SPECS / "mochi-tiny.yaml"))
    student = build_student(teacher, tiny_recipe)
    student.save_pretrained(tmp_path / "student")
    loaded = TurboVAEDDecoder.from_pretrained(tmp_path / "student").eval()
    latent = teacher.example_input()
    with torch.no_grad():
        assert torch.equal(student(latent), loaded(latent))
    assert loaded.config.upsample_factors == student.config.upsample_factors


@torch.no_grad()
def test_from_teacher_init_folds_post_quant_conv_into_conv_in(tiny_recipe):
    teacher = load_model(load_spec(SPECS / "hunyuan-tiny.yaml"))
    student = build_student(teacher, tiny_recipe)
    report = init_from_teacher(student, teacher.model)
    latent = teacher.example_input()
    expected = teacher.model.decoder.conv_in(teacher.model.post_quant_conv(latent))
    got = student.conv_in(latent)
    assert report["conv_in"] == "copied"
    assert report["mid_block.0.conv1"].startswith("separable fit")
    # exact away from the H/W border, where conv_in zero-pads post_quant_conv's output
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


# Every family's student is checked in PyTorch (tests/test_streaming.py decodes each); exporting one to ONNX costs
# ~15 s, so two families convert by default and the rest under `-m slow`.
@pytest.mark.parametrize("teacher_spec", [p if p.stem in ("hunyuan-tiny", "ltx-tiny") else pytest.param(p, marks=pytest.mark.slow)
                                          for p in FAMILY_SPECS], ids=lambda p: p.stem)
def test_rewrite_writes_student_and_spec_that_convert_verifies(cli, tmp_path, teacher_spec):
    code, out, err = cli("rewrite", teacher_spec, "--recipe", "tiny", "--out", tmp_path, "--json")
    assert code == 0, err
    manifest = json.loads(out)
    name = f"{teacher_spec.stem}-student"
    assert (tmp_path / name / "config.json").is_file()
    assert list((tmp_path / name).glob("*.safetensors"))
    spec = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
    assert spec["model"] == {"diffusers": "TurboVAEDDecoder", "pretrained": name}
    assert manifest["comparison"]["output_shape"]["equal"]
    code, out, err = cli("convert", tmp_path / f"{name}.yaml", "--to", "onnx", "--out", tmp_path / "onnx", "--json")
    assert code == 0, err
    converted = json.loads(out)
    assert converted["verify"]["passed"] and converted["verify"]["max_abs_err"] < 1e-4
    assert converted["outputs"][0]["shape"] == manifest["comparison"]["output_shape"]["teacher"]


@pytest.mark.parametrize("teacher_spec", [pytest.param(SPECS / "hunyuan-tiny.yaml", marks=pytest.mark.slow),
                                         SPECS / "wan21-tiny.yaml"], ids=lambda p: p.stem)
def test_student_onnx_layout_is_timed_by_default_and_verifies(cli, tmp_path, teacher_spec):
    """A user who asks for nothing gets the layout convert/layout.py's rule picks from both layouts' times on this host,
    every round recorded; --layout conv2d gives every conv as a rank-4 Conv over time-stacked frames, verified."""
    from effconv.convert.layout import RULE, decide

    code, _, err = cli("rewrite", teacher_spec, "--recipe", "tiny", "--out", tmp_path)
    assert code == 0, err
    student_spec = tmp_path / f"{teacher_spec.stem}-student.yaml"
    code, out, err = cli("convert", student_spec, "--to", "onnx", "--out", tmp_path / "auto", "--json")
    assert code == 0, err
    layout = json.loads(out)["layout"]
    assert set(layout["measured_ms"]) == {"conv3d", "conv2d"} and min(layout["measured_ms"].values()) > 0
    assert layout["chosen"] == decide(layout["rounds_ms"])[0] and layout["rule"] == RULE
    assert layout["why"].startswith("auto: both layouts timed") and layout["host"]["cpu"]
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == [f"{student_spec.stem}.json", f"{student_spec.stem}.onnx"]

    code, out, err = cli("convert", student_spec, "--to", "onnx", "--layout", "conv2d", "--out", tmp_path / "onnx", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["layout"] == {"chosen": "conv2d", "requested": "conv2d", "why": "--layout conv2d"}
    assert manifest["verify"]["passed"] and manifest["verify"]["max_abs_err"] < 1e-4
    assert manifest["legalize"]["rewrites"]["conv3d-as-conv2d"] > 0
    assert manifest["legalize"]["rewrites"]["dwconv3d-as-conv2d-taps"] > 0  # the tiny recipe has separable blocks
    assert manifest["legalize"]["equivalence"]["max_abs_err"] < 1e-5
    graph = onnx.load(str(tmp_path / "onnx" / manifest["artifact"])).graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    conv_ranks = {len(weights[node.input[1]].dims) for node in graph.node if node.op_type == "Conv" and node.input[1] in weights}
    assert conv_ranks == {4}


def test_conv2d_is_an_onnx_option(cli, tmp_path):
    code, out, err = cli("convert", SPECS / "hunyuan-tiny.yaml", "--to", "tflite", "--layout", "conv2d", "--out", tmp_path / "t")
    assert code == 2 and "--layout applies to ONNX" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_rewrite_params_ratio_counts_both_decoders(cli, tmp_path):
    code, out, err = cli("rewrite", SPECS / "cogvideox-tiny.yaml", "--recipe", "tiny", "--out", tmp_path, "--json")
    assert code == 0, err
    params = json.loads(out)["comparison"]["params"]
    teacher = load_model(load_spec(SPECS / "cogvideox-tiny.yaml"))
    student = TurboVAEDDecoder.from_pretrained(tmp_path / "cogvideox-tiny-student")
    assert params["teacher"] == teacher.num_params() == sum(p.numel() for p in teacher.model.decoder.parameters())
    assert params["student"] == sum(p.numel() for p in student.parameters())
    assert params["ratio"] == pytest.approx(params["student"] / params["teacher"])


def test_rewrite_table_shows_ratio_and_shape(cli, tmp_path):
    code, out, _ = cli("rewrite", SPECS / "hunyuan-tiny.yaml", "--recipe", "tiny", "--out", tmp_path, "--init", "from-teacher")
    assert code == 0
    assert "params total" in out and "GFLOPs / output frame" in out and "equal" in out


BAD_RECIPES = {
    "unknown key": ({"student": {"widths": [8, 8], "layers": [1, 1], "separable": [True, False],
                                 "upsample": [True], "colour": 1}}, "unknown key 'student.colour'"),
    "length mismatch": ({"student": {"widths": [8, 8, 8], "layers": [1, 1], "separable": [True, False, False],
                                     "upsample": [True, True]}}, "one entry per width"),
    "no student": ({"name": "x"}, "no 'student' section"),
}


@pytest.mark.parametrize("case", BAD_RECIPES, ids=list(BAD_RECIPES))
def test_bad_recipe_exits_2_with_one_line_and_writes_nothing(cli, tmp_path, case):
    data, message = BAD_RECIPES[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out_dir = tmp_path / "out"
    code, _, err = cli("rewrite", SPECS / "hunyuan-tiny.yaml", "--recipe", recipe, "--out", out_dir)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_unknown_recipe_name_and_init_exit_2(cli, tmp_path):
    code, _, err = cli("rewrite", SPECS / "hunyuan-tiny.yaml", "--recipe", "no-such", "--out", tmp_path / "a")
    assert code == 2 and "packaged recipe" in err
    code, _, err = cli("rewrite", SPECS / "hunyuan-tiny.yaml", "--recipe", "tiny", "--out", tmp_path / "b", "--init", "zeros")
    assert code == 2 and "unknown --init" in err


def test_student_spec_rejects_encoder_part(cli, tmp_path):
    code, _, _ = cli("rewrite", SPECS / "ltx-tiny.yaml", "--recipe", "tiny", "--out", tmp_path)
    assert code == 0
    spec = yaml.safe_load((tmp_path / "ltx-tiny-student.yaml").read_text())
    spec["part"] = "encoder"
    (tmp_path / "enc.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = cli("inspect", tmp_path / "enc.yaml")
    assert code == 2 and "decoder only" in err


def test_mobile_recipe_is_under_fifteen_percent_of_the_hunyuan_decoder():
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):
        hunyuan = AutoencoderKLHunyuanVideo()  # published default config, no weights materialised
    teacher_params = sum(p.numel() for p in hunyuan.decoder.parameters()) + sum(
        p.numel() for p in hunyuan.post_quant_conv.parameters()
    )
    recipe = load_recipe("turbo-vaed-mobile")[0].student
    with torch.device("meta"):
        student = TurboVAEDDecoder(**student_config(Compression(16, 4, 8), "causal", recipe))
    assert sum(p.numel() for p in student.parameters()) <= 0.15 * teacher_params


def test_default_recipe_on_a_tiny_teacher_warns_that_the_student_is_larger(cli, tmp_path):
    code, _, err = cli("rewrite", SPECS / "hunyuan-tiny.yaml", "--out", tmp_path)
    assert code == 0, err
    assert "warning" in err and "--recipe tiny" in err
    code, _, err = cli("rewrite", SPECS / "hunyuan-tiny.yaml", "--recipe", "tiny", "--out", tmp_path / "tiny")
    assert code == 0 and "warning" not in err


LEGACY = Path(__file__).parent / "data" / "legacy-student"


def test_student_saved_before_the_move_to_models_loads_and_decodes_the_same():
    """tests/data/legacy-student was written by `effconv rewrite` when the class lived in effconv.rewrites.student."""
    model = load_model(load_spec(LEGACY / "hunyuan-tiny-student.yaml"))
    assert type(model.module) is TurboVAEDDecoder and TurboVAEDDecoder.__module__ == "effconv.models.turbo_vaed.decoder"
    with torch.no_grad():
        video = model.module(torch.from_numpy(np.load(LEGACY / "latent.npy")))
    # fp32 summation order differs between CPUs (1.7e-6 on an AVX-512 EPYC vs the file's AVX2 EPYC); a weight
    # loaded into the wrong place moves the output by 1e-2 or more
    assert float((video - torch.from_numpy(np.load(LEGACY / "video.npy"))).abs().max()) <= 1e-5


def test_importing_the_student_leaves_warnings_on():
    """Quieting third-party imports is scoped: a library user's warnings still show after the import."""
    code = ("import warnings\n"
            "import effconv.models.turbo_vaed.decoder\n"
            "assert ('ignore', None, Warning, None, 0) not in warnings.filters, warnings.filters\n"
            "warnings.warn('still shown', UserWarning)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=os.environ | {"PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "still shown" in done.stderr
