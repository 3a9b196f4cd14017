"""Students in the Turbo-VAED authors' format (`AutoencoderKLTurboVAED`): effconv decodes their checkpoints as their
own code does, builds their released layouts parameter for parameter, and refuses a checkpoint it cannot place.

The reference data in tests/data/turbo-vaed-released was made by running the authors' class (hustvl/Turbo-VAED,
fetched to a scratch folder; see its README): tiny checkpoints with seeded random weights, the latents decoded by
their `decode()`, and every decoder tensor's name and shape for the four released configs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml

from effconv.backends import registry
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder, build_student
from effconv.models.turbo_vaed.released import decoder_config, released_key
from effconv.recipe import load_recipe
from effconv.spec import load_spec, spec_from_dict

RELEASED = Path(__file__).parent / "data" / "turbo-vaed-released"
FIXTURES = ["hunyuan-like", "dw-shortcut", "causal-dense", "ltx-like", "patch2", "dc-like"]
TABLE = json.loads((RELEASED / "released_params.json").read_text())
# effconv's family recipe -> the released config it follows
FAMILY_RECIPES = {"turbo-vaed-hunyuan": "Hunyuan", "turbo-vaed-cogvideox": "Cog", "turbo-vaed-ltx": "LTX"}
MAX_ERROR = 1e-4


def _spec(pretrained: Path, video_shape, config: dict | None = None) -> dict:
    model = {"diffusers": "AutoencoderKLTurboVAED", "pretrained": str(pretrained)}
    if config is not None:
        model["config"] = config
    return {"name": "released", "model": model, "part": "decoder",
            "input": {"frames": video_shape[2], "height": video_shape[3], "width": video_shape[4]}}


def _load(pretrained: Path, video_shape, config: dict | None = None):
    return load_model(spec_from_dict(_spec(pretrained, video_shape, config), Path(".")))


def _decode(model, latent: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.module(torch.from_numpy(latent)).numpy()


@pytest.mark.parametrize("name", FIXTURES)
def test_effconv_decodes_a_released_checkpoint_as_the_authors_code_does(name):
    folder = RELEASED / name
    pairs = [("latent.npy", "video.npy")] + ([("latent_2.npy", "video_2.npy")] if (folder / "latent_2.npy").exists() else [])
    for latent_file, video_file in pairs:
        latent, video = np.load(folder / latent_file), np.load(folder / video_file)
        model = _load(folder, video.shape)
        assert isinstance(model.model, TurboVAEDDecoder)
        got = _decode(model, latent)
        assert got.shape == video.shape
        assert float(np.abs(got - video).max()) <= MAX_ERROR, (name, latent_file)


def test_a_single_file_with_its_config_loads_the_same_decoder():
    folder = RELEASED / "ltx-like"
    latent, video = np.load(folder / "latent.npy"), np.load(folder / "video.npy")
    config = json.loads((folder / "config.json").read_text())
    model = _load(folder / "diffusion_pytorch_model.safetensors", video.shape, config)
    assert float(np.abs(_decode(model, latent) - video).max()) <= MAX_ERROR


def _mapped_shapes(decoder: TurboVAEDDecoder) -> dict[str, list[int]]:
    """The decoder's tensors under the authors' names, in their shapes (their output-patching convs are Conv2d)."""
    shapes = {}
    for key, tensor in decoder.state_dict().items():
        shape = list(tensor.shape)
        if key.startswith("patch_upsamplers.") and key.endswith(".weight"):
            shape.pop(2)
        shapes[released_key(key).removeprefix("decoder.")] = shape
    return shapes


def _check_against_table(decoder: TurboVAEDDecoder, release: str) -> None:
    table = TABLE[release]
    assert _mapped_shapes(decoder) == table["decoder"]
    assert sum(p.numel() for p in decoder.parameters()) == table["decoder_params"]


@pytest.mark.parametrize("release", list(TABLE))
def test_each_released_config_builds_the_authors_decoder_tensor_for_tensor(release):
    config = decoder_config(TABLE[release]["config"])
    with torch.device("meta"):
        _check_against_table(TurboVAEDDecoder(**config), release)


@pytest.mark.parametrize("recipe", list(FAMILY_RECIPES))
def test_family_recipe_builds_the_released_layout_from_its_default_teacher(recipe):
    """The recipe's student of the family's published default config: the released decoder, parameter for parameter
    (LTX's 4x4 output patch taken from the teacher's patch_size)."""
    loaded, source = load_recipe(recipe)
    teacher = load_model(spec_from_dict(loaded.teacher, Path(source).parent))
    student = build_student(teacher, loaded.student)
    _check_against_table(student, FAMILY_RECIPES[recipe])
    assert student.config.output_patch == TABLE[FAMILY_RECIPES[recipe]]["config"]["patch_size"]
    assert student.compression == teacher.compression


def _copy(tmp_path: Path, name: str = "hunyuan-like") -> Path:
    target = tmp_path / name
    shutil.copytree(RELEASED / name, target)
    return target


def _edit_weights(folder: Path, edit) -> None:
    file = folder / "diffusion_pytorch_model.safetensors"
    tensors = safetensors.torch.load_file(file)
    edit(tensors)
    safetensors.torch.save_file(tensors, file)


def _edit_config(folder: Path, **changes) -> None:
    file = folder / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


VIDEO = (1, 3, 9, 32, 32)  # hunyuan-like's clip


def test_a_missing_decoder_tensor_is_named_not_left_random(tmp_path):
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: t.pop("decoder.up_blocks.2.conv_in.norm3.bias"))
    with pytest.raises(EffconvError, match=r"1 missing \(decoder\.up_blocks\.2\.conv_in\.norm3\.bias\)"):
        _load(folder, VIDEO)


def test_a_decoder_tensor_effconv_cannot_place_is_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: t.update({"decoder.time_embedder.linear.weight": torch.zeros(2, 2)}))
    with pytest.raises(EffconvError, match=r"1 unexpected \(decoder\.time_embedder\.linear\.weight\)"):
        _load(folder, VIDEO)


def test_a_config_that_does_not_match_the_weights_names_the_tensor(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, latent_channels=8)
    with pytest.raises(EffconvError, match=r"decoder\.conv_in\.conv\.weight has shape \[8, 4, 3, 3, 3\]"):
        _load(folder, VIDEO)


@pytest.mark.parametrize("changes, message", [
    ({"decoder_causal": True}, "neither causal"),
    ({"timestep_conditioning": True}, "timestep"),
    ({"patch_size": 8}, "patch_size 8"),
    ({"decoder_layers_per_block": [1, 1]}, "needs 5 entries"),
    ({"decoder_skip": 1}, "decoder_skip"),
])
def test_a_config_effconv_cannot_build_exactly_is_refused_in_one_line(tmp_path, changes, message):
    folder = _copy(tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(EffconvError, match=message):
        _load(folder, VIDEO)


def test_a_directory_of_another_class_is_refused(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, _class_name="AutoencoderKLLTXVideo")
    with pytest.raises(EffconvError, match="holds a AutoencoderKLLTXVideo"):
        _load(folder, VIDEO)


def test_a_single_file_without_its_config_is_refused():
    with pytest.raises(EffconvError, match="holds only the weights"):
        _load(RELEASED / "ltx-like" / "diffusion_pytorch_model.safetensors", (1, 3, 9, 32, 32))


def test_the_cli_refuses_a_broken_checkpoint_with_exit_2_and_writes_nothing(tmp_path, cli):
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: t.pop("decoder.conv_out.conv.bias"))
    spec = tmp_path / "released.yaml"
    spec.write_text(yaml.safe_dump(_spec(folder, VIDEO)))
    code, _, err = cli("convert", spec, "--to", "onnx", "--out", tmp_path / "out")
    assert code == 2 and "decoder.conv_out.conv.bias" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# The LTX-like checkpoint (4x4 output patch, symmetric padding, a separable shortcut) through every backend: each
# artifact's decode of the authors' latent against the authors' video. Core ML predicts only on macOS: there the
# check is convert's own fp16 simulation against the decoder.
@pytest.mark.parametrize("backend", registry.names())
def test_every_backend_exports_a_released_checkpoint_that_decodes_as_the_authors_code(backend, tmp_path):
    folder = RELEASED / "ltx-like"
    latent, video = np.load(folder / "latent.npy"), np.load(folder / "video.npy")
    spec = tmp_path / "released.yaml"
    spec.write_text(yaml.safe_dump(_spec(folder.resolve(), video.shape)))
    manifest = convert(load_spec(spec), backend, tmp_path / "out")
    assert manifest.verify["passed"]
    output = registry.get(backend).predict(tmp_path / "out" / manifest.artifact, torch.from_numpy(latent))
    if output is None:
        assert backend == "coreml" and manifest.verify["prediction"].startswith("not run")
        return
    assert float(np.abs(output - video).max()) <= MAX_ERROR


def _trained_student_recipe(tmp_path: Path, **changes) -> Path:
    """A run of the hunyuan-tiny teacher at the hunyuan-like checkpoint's clip, shipping that checkpoint as is."""
    video = np.load(RELEASED / "hunyuan-like" / "video.npy")
    teacher = yaml.safe_load((Path(__file__).parents[1] / "examples" / "specs" / "hunyuan-tiny.yaml").read_text())
    teacher["input"] = {"frames": video.shape[2], "height": video.shape[3], "width": video.shape[4]}
    recipe = {
        "name": "released-run",
        "teacher": teacher,
        "trained_student": _spec((RELEASED / "hunyuan-like").resolve(), video.shape) | {"name": "hunyuan-like"},
        "data": {"train": ["effconv:assets/video"]},
        "export": {"backends": ["onnx"]},
        "quantize": {"backends": []},
        "profile": {"devices": ["iphone16pro"], "host_repeats": 1},
        **changes,
    }
    path = tmp_path / "released-run.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_effconv_run_ships_a_released_checkpoint_without_distilling(tmp_path, cli):
    recipe = _trained_student_recipe(tmp_path)
    code, out, err = cli("run", recipe, "--out", tmp_path / "run", "--dry-run", "--json")
    assert code == 0, err
    planned = [stage["stage"] for stage in json.loads(out)["plan"]]
    assert planned[0] == "student" and "distill" not in planned
    code, _, err = cli("run", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    run = tmp_path / "run"
    student = load_spec(run / "student" / "hunyuan-tiny-student.yaml")
    assert student.spec.model.diffusers == "TurboVAEDDecoder"  # imported into effconv's own format
    manifest = json.loads((run / "convert-onnx" / "hunyuan-tiny-student.json").read_text())
    latent, video = np.load(RELEASED / "hunyuan-like" / "latent.npy"), np.load(RELEASED / "hunyuan-like" / "video.npy")
    output = registry.get("onnx").predict(run / "convert-onnx" / manifest["artifact"], torch.from_numpy(latent))
    assert float(np.abs(output - video).max()) <= MAX_ERROR
    report = (run / "report.md").read_text()
    assert "trained already, imported" in report and "AutoencoderKLTurboVAED" in report


@pytest.mark.parametrize("changes, args, message", [
    ({}, ["--steps", "5"], "drop --steps"),
    ({"student": {"widths": [8, 8], "layers": [1, 1], "separable": [False, False], "upsample": [True]}}, [], "not both"),
])
def test_effconv_run_refuses_a_trained_student_recipe_that_also_asks_to_distill(tmp_path, cli, changes, args, message):
    code, _, err = cli("run", _trained_student_recipe(tmp_path, **changes), "--out", tmp_path / "run", "--dry-run", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_effconv_run_refuses_a_trained_student_of_another_teacher(tmp_path, cli):
    teacher = yaml.safe_load((Path(__file__).parents[1] / "examples" / "specs" / "ltx-tiny.yaml").read_text())
    code, _, err = cli("run", _trained_student_recipe(tmp_path, teacher=teacher), "--out", tmp_path / "run", "--dry-run")
    assert code == 2 and "does not match student 'hunyuan-like'" in err


HUNYUAN_TINY = Path(__file__).parents[1] / "examples" / "specs" / "hunyuan-tiny.yaml"
BUNDLED_VIDEO = Path(__file__).parents[1] / "effconv" / "assets" / "video"


def _spec_file(tmp_path: Path, name: str) -> Path:
    video = np.load(RELEASED / name / "video.npy")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_spec((RELEASED / name).resolve(), video.shape) | {"name": name}))
    return path


def test_eval_profile_and_quantize_take_a_released_checkpoint_with_its_teacher_named(tmp_path, cli):
    spec = _spec_file(tmp_path, "hunyuan-like")  # decodes hunyuan-tiny's latents (4 channels, 4x time, 8x space)
    code, out, err = cli("eval", spec, "--data", BUNDLED_VIDEO, "--teacher", HUNYUAN_TINY, "--json")
    assert code == 0, err
    assert json.loads(out)["mean_student_psnr_db"] > 0
    code, out, err = cli("profile", spec, "--device", "iphone16pro", "--json")
    assert code == 0, err
    assert json.loads(out)["latency_ms"]["estimate"] > 0
    assert cli("convert", spec, "--to", "onnx", "--out", tmp_path / "onnx")[0] == 0
    artifact = tmp_path / "onnx" / "hunyuan-like.onnx"
    code, _, err = cli("quantize", artifact, "--calib", BUNDLED_VIDEO, "--out", tmp_path / "int8")
    assert code == 2 and "records no teacher" in err and "--teacher" in err
    code, _, err = cli("quantize", artifact, "--calib", BUNDLED_VIDEO, "--teacher", HUNYUAN_TINY, "--samples", "2",
                       "--max-psnr-drop", "100", "--min-psnr-vs-float", "0", "--out", tmp_path / "int8")
    assert code == 0, err
    assert (tmp_path / "int8" / "hunyuan-like-int8.onnx").is_file()


def test_a_causal_released_checkpoint_streams_and_decode_equals_the_authors_code(tmp_path, cli):
    """decoder_causal: true without separable blocks is causal throughout, so it exports as a streaming step."""
    spec = _spec_file(tmp_path, "causal-dense")
    assert cli("convert", spec, "--to", "onnx", "--stream", "1", "--out", tmp_path / "stream")[0] == 0
    code, _, err = cli("decode", tmp_path / "stream" / "causal-dense.onnx", "--latents", RELEASED / "causal-dense" /
                       "latent.npy", "--out", tmp_path / "video.npy")
    assert code == 0, err
    video = np.load(RELEASED / "causal-dense" / "video.npy")
    assert float(np.abs(np.load(tmp_path / "video.npy") - video).max()) <= MAX_ERROR
