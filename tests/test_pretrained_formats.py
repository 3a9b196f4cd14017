"""Teachers as users have them on disk: save_pretrained variants (fp16, bf16), sharded checkpoints and
single .safetensors files (diffusers' keys, or the original release's) load into fp32 models that decode
like the model they were saved from."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from effconv.models.loader import load_model
from effconv.spec import load_spec
from effconv.video.clips import BUNDLED_CLIP

from conftest import SPECS
from test_errors import assert_one_line_error

HUNYUAN = SPECS / "hunyuan-tiny.yaml"  # a class diffusers' from_single_file does not support
WAN = SPECS / "wan21-tiny.yaml"
# diffusers' Wan converter expects the release's block layout: 2 res blocks per stage, channels x1 x2 x4 x4
WAN_RELEASE_LAYOUT = {"base_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2}
CLIP = {"frames": 5, "height": 32, "width": 32}  # small: these tests are about weights, not shapes
SHARD_SIZE = "40KB"  # a few shards of the tiny Hunyuan VAE


def _write_spec(directory: Path, base: Path, **model_keys) -> Path:
    """`base` at CLIP with its model keys replaced (config=None drops the config)."""
    spec = yaml.safe_load(base.read_text())
    spec["model"] = {k: v for k, v in {**spec["model"], **model_keys}.items() if v is not None}
    spec["input"] = CLIP
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wan_spec(directory: Path, **model_keys) -> Path:
    config = {**yaml.safe_load(WAN.read_text())["model"]["config"], **WAN_RELEASE_LAYOUT}
    return _write_spec(directory, WAN, config=config, **model_keys)


@pytest.fixture(scope="module")
def hunyuan():
    return load_model(load_spec(HUNYUAN)).model


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return load_model(load_spec(_wan_spec(tmp_path_factory.mktemp("wan")))).model


WAN_RESNET_TO_RELEASE = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                         "conv_shortcut": "shortcut"}
# diffusers' AutoencoderKLWan keys -> the Wan 2.1 release's (wan_2.1_vae.safetensors), the inverse of
# diffusers.loaders.single_file_utils.convert_wan_vae_to_diffusers; applied in this order
WAN_KEYS_TO_RELEASE = [
    (r"\.(norm1|conv1|norm2|conv2|conv_shortcut)\.", lambda m: f".{WAN_RESNET_TO_RELEASE[m[1]]}."),
    (r"^quant_conv\.", "conv1."), (r"^post_quant_conv\.", "conv2."),
    (r"\.conv_in\.", ".conv1."), (r"\.norm_out\.", ".head.0."), (r"\.conv_out\.", ".head.2."),
    (r"mid_block\.resnets\.(\d)", lambda m: f"middle.{2 * int(m[1])}"), (r"mid_block\.attentions\.0", "middle.1"),
    (r"down_blocks\.", "downsamples."),
    (r"up_blocks\.(\d)\.resnets\.(\d)", lambda m: f"upsamples.{4 * int(m[1]) + int(m[2])}"),
    (r"up_blocks\.(\d)\.upsamplers\.0", lambda m: f"upsamples.{4 * int(m[1]) + 3}"),
]


def _wan_release_key(key: str) -> str:
    for pattern, replacement in WAN_KEYS_TO_RELEASE:
        key = re.sub(pattern, replacement, key)
    return key


def _save_file(model, path: Path, keys=lambda key: key) -> None:
    save_file({keys(key): tensor.contiguous() for key, tensor in model.state_dict().items()}, path)


# name -> (family, dtype of the stored weights, save(model in that dtype, folder), the spec's model keys)
FORMATS = {
    "fp16-variant-named": ("hunyuan", torch.float16, lambda m, d: m.save_pretrained(d / "vae", variant="fp16"),
                           {"pretrained": "vae", "variant": "fp16"}),
    "bf16-variant-picked": ("hunyuan", torch.bfloat16, lambda m, d: m.save_pretrained(d / "vae", variant="bf16"),
                            {"pretrained": "vae"}),
    "sharded": ("hunyuan", torch.float32, lambda m, d: m.save_pretrained(d / "vae", max_shard_size=SHARD_SIZE),
                {"pretrained": "vae"}),
    "sharded-fp16-variant": ("hunyuan", torch.float16,
                             lambda m, d: m.save_pretrained(d / "vae", max_shard_size=SHARD_SIZE, variant="fp16"),
                             {"pretrained": "vae", "variant": "fp16"}),
    "pipeline-dir-fp16-variant": ("hunyuan", torch.float16,
                                  lambda m, d: m.save_pretrained(d / "pipe" / "vae", variant="fp16"), {"pretrained": "pipe"}),
    "file-diffusers-keys": ("hunyuan", torch.float32, lambda m, d: _save_file(m, d / "vae.safetensors"),
                            {"pretrained": "vae.safetensors"}),
    "file-diffusers-keys-bf16-wan": ("wan", torch.bfloat16, lambda m, d: _save_file(m, d / "vae.safetensors"),
                                     {"pretrained": "vae.safetensors"}),
    "file-release-keys-wan": ("wan", torch.float32,
                              lambda m, d: _save_file(m, d / "wan_2.1_vae.safetensors", keys=_wan_release_key),
                              {"pretrained": "wan_2.1_vae.safetensors"}),
}


def _spec_for(family: str, directory: Path, model_keys: dict) -> Path:
    return _write_spec(directory, HUNYUAN, **model_keys) if family == "hunyuan" else _wan_spec(directory, **model_keys)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_decodes_like_the_model_it_was_saved_from(name, hunyuan, wan, tmp_path):
    family, dtype, save, model_keys = FORMATS[name]
    stored = copy.deepcopy({"hunyuan": hunyuan, "wan": wan}[family]).to(dtype)
    save(stored, tmp_path)
    loaded = load_model(load_spec(_spec_for(family, tmp_path, model_keys)))
    # the weights as stored, in fp32: what the loaded model must compute
    reference = loaded.adapter.part_module(loaded.adapter.prepare(stored.float()), "decoder").eval()
    latent = loaded.example_input(seed=5)
    with torch.no_grad():
        error = torch.max(torch.abs(reference(latent) - loaded.module(latent))).item()
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert error == 0.0 if dtype == torch.float32 else error < 1e-5
    if name == "sharded":
        assert len(list((tmp_path / "vae").glob("diffusion_pytorch_model-*-of-*.safetensors"))) >= 2


def test_single_file_teacher_plans_a_run(cli, tmp_path):
    """--pretrained FILE: the dry run's estimate builds the teacher from the recipe's config (the class's
    published defaults) instead of a config.json; the plan loads the weights as inspect does, so they must fit it."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        shapes = {key: value.shape for key, value in AutoencoderKLWan().state_dict().items()}
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, tmp_path / "wan_2.1_vae.safetensors")
    code, out, err = cli("run", "turbo-vaed-wan", "--pretrained", tmp_path / "wan_2.1_vae.safetensors",
                         "--data", BUNDLED_CLIP, "--out", tmp_path / "out", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["plan"][0]["estimate_seconds"] > 0


def test_run_refuses_a_single_file_it_cannot_load_before_any_stage(cli, tmp_path):
    save_file({"placeholder": torch.zeros(1)}, tmp_path / "hunyuan_vae.safetensors")
    code, out, err = cli("run", "turbo-vaed-hunyuan", "--pretrained", tmp_path / "hunyuan_vae.safetensors",
                         "--data", BUNDLED_CLIP, "--out", tmp_path / "out")
    assert_one_line_error(code, out, err, "add model.config")
    assert not (tmp_path / "out").exists()


# --- bad input: one line, exit 2 ------------------------------------------------------------------

def _two_variants(m, d):
    copy.deepcopy(m).half().save_pretrained(d / "vae", variant="fp16")
    copy.deepcopy(m).to(torch.bfloat16).save_pretrained(d / "vae", variant="bf16")
    return {"pretrained": "vae"}


def _missing_shard(m, d):
    m.save_pretrained(d / "vae", max_shard_size=SHARD_SIZE)
    sorted((d / "vae").glob("diffusion_pytorch_model-*.safetensors"))[1].unlink()
    return {"pretrained": "vae"}


def _file(m, d, keys=lambda key: key):
    _save_file(m, d / "vae.safetensors", keys)
    return {"pretrained": "vae.safetensors"}


def _bytes(name: str, data: bytes):
    def write(m, d):
        (d / name).write_bytes(data)
        return {"pretrained": name}
    return write


def _truncated(m, d):
    _file(m, d)
    (d / "vae.safetensors").write_bytes((d / "vae.safetensors").read_bytes()[:-100])
    return {"pretrained": "vae.safetensors"}


def _other_architecture(m, d):
    config = yaml.safe_load(HUNYUAN.read_text())["model"]["config"]
    return {**_file(m, d), "config": {**config, "latent_channels": 8}}


# name -> (family, write(fp32 model, folder) -> the spec's model keys, expected in the error line)
BAD_INPUTS = {
    "several-variants-none-chosen": ("hunyuan", _two_variants, "several weights variants (bf16, fp16)"),
    "unknown-variant": ("hunyuan", lambda m, d: {**_two_variants(m, d), "variant": "ema"},
                        "has no 'ema' weights variant. Fix: set model.variant to one of: bf16, fp16"),
    "missing-shard": ("hunyuan", _missing_shard, "-00002-of-"),
    "truncated-file": ("hunyuan", _truncated, "not a readable safetensors file"),
    "empty-file": ("hunyuan", _bytes("vae.safetensors", b""), "not a readable safetensors file"),
    "keys-of-no-format": ("hunyuan", lambda m, d: _file(m, d, keys=lambda k: f"model.{k}"), "in diffusers' key layout"),
    "keys-of-no-format-wan": ("wan", lambda m, d: _file(m, d, keys=lambda k: f"model.{k}"),
                              "in diffusers' or the original release's key layout"),
    "shape-mismatch": ("hunyuan", _other_architecture, "has shape"),
    "pickle": ("hunyuan", _bytes("vae.ckpt", b"\x80\x04"), "convert it to .safetensors"),
    "not-safetensors": ("hunyuan", _bytes("vae.gguf", b"GGUF"), "is not a .safetensors file"),
    "file-without-config": ("hunyuan", lambda m, d: {**_file(m, d), "config": None}, "add model.config"),
    "variant-of-a-file": ("hunyuan", lambda m, d: {**_file(m, d), "variant": "fp16"}, "remove model.variant"),
    "variant-without-pretrained": ("hunyuan", lambda m, d: {"variant": "fp16"}, "has no model.pretrained"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_pretrained_input_is_one_line_exit_2(case, hunyuan, wan, cli, tmp_path):
    family, write, expected = BAD_INPUTS[case]
    model_keys = write({"hunyuan": hunyuan, "wan": wan}[family], tmp_path)
    code, out, err = cli("inspect", _spec_for(family, tmp_path, model_keys))
    assert_one_line_error(code, out, err, expected)
