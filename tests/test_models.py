"""Every family's derived shapes equal what the real diffusers model produces."""

import pytest
import torch

from effconv.models.loader import load_model
from effconv.spec import load_spec

from conftest import FAMILY_SPECS


@pytest.mark.parametrize("spec_path", FAMILY_SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("part", ["decoder", "encoder", "vae"])
def test_derived_shapes_match_the_real_model_output(spec_path, part):
    loaded = load_spec(spec_path)
    loaded = type(loaded)(spec=loaded.spec.model_copy(update={"part": part}), base_dir=loaded.base_dir)
    model = load_model(loaded)
    with torch.no_grad():
        output = model.module(model.example_input())
    assert tuple(output.shape) == model.output_shape
    assert model.example_input().shape == model.input_shape


@pytest.mark.parametrize("spec_path", FAMILY_SPECS, ids=lambda p: p.stem)
def test_one_latent_frame_decodes_to_one_frame(spec_path):
    loaded = load_spec(spec_path)
    clip = loaded.spec.input
    model = load_model(loaded.with_input(1, clip.height, clip.width))
    with torch.no_grad():
        output = model.module(model.example_input())
    assert model.latent_shape[2] == 1
    assert output.shape[2] == 1


@pytest.mark.parametrize("spec_path", FAMILY_SPECS, ids=lambda p: p.stem)
def test_decoder_params_exclude_the_encoder(spec_path):
    model = load_model(load_spec(spec_path))
    decoder_params = sum(p.numel() for p in model.model.decoder.parameters())
    post_quant = getattr(model.model, "post_quant_conv", None)
    if post_quant is not None:
        decoder_params += sum(p.numel() for p in post_quant.parameters())
    assert model.num_params() == decoder_params


def test_random_init_is_seeded():
    first = load_model(load_spec(FAMILY_SPECS[0]))
    second = load_model(load_spec(FAMILY_SPECS[0]))
    for a, b in zip(first.module.parameters(), second.module.parameters()):
        assert torch.equal(a, b)


def test_pretrained_directory_gives_the_same_outputs(tmp_path):
    spec_path = next(p for p in FAMILY_SPECS if p.stem == "hunyuan-tiny")
    in_memory = load_model(load_spec(spec_path))
    in_memory.model.save_pretrained(tmp_path / "vae")
    # a spec with a relative pretrained path, resolved against the spec file's directory
    (tmp_path / "spec.yaml").write_text(
        "name: from-disk\nmodel:\n  diffusers: AutoencoderKLHunyuanVideo\n  pretrained: vae\n"
        "input: {frames: 9, height: 32, width: 48}\n"
    )
    from_disk = load_model(load_spec(tmp_path / "spec.yaml"))
    latent = in_memory.example_input(seed=3)
    with torch.no_grad():
        expected = in_memory.module(latent)
        actual = from_disk.module(latent)
    assert torch.max(torch.abs(expected - actual)).item() == 0.0
