"""Output patching: a student of a patchified teacher ends with 2x depth-to-space stages, so its last blocks run at
1/p of the output resolution. The patched student keeps the teacher's shapes, its depth-to-space loses nothing (it
is the inverse of space-to-depth), and it streams chunk for chunk like any causal student."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F
import yaml

from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder, build_student, plan_upsampling, student_config
from effconv.models.turbo_vaed.layers.upsample import PatchUpsampler
from effconv.recipe import StudentRecipe, load_recipe
from effconv.spec import load_spec

from conftest import SPECS

TINY = load_recipe("tiny")[0].student


def _recipe(**changes) -> StudentRecipe:
    return TINY.model_copy(update=changes)


def test_the_builder_takes_the_teachers_patch_and_a_recipe_can_set_its_own():
    teacher = load_model(load_spec(SPECS / "wan22-tiny.yaml"))  # patch_size 2: 16x space, 8x of it in its blocks
    patched, unpatched = build_student(teacher, TINY), build_student(teacher, _recipe(output_patch=1))
    assert patched.config.output_patch == 2 and len(patched.patch_upsamplers) == 1
    assert unpatched.config.output_patch == 1 and not unpatched.patch_upsamplers
    assert [f[1] for f in patched.config.upsample_factors] == [1, 2, 2, 2]
    assert [f[1] for f in unpatched.config.upsample_factors] == [1, 2, 2, 4]  # the last block at full resolution
    latent = teacher.example_input(0)
    with torch.no_grad():
        expected = teacher.module(latent).shape
        assert patched(latent).shape == unpatched(latent).shape == expected
    assert patched.compression == unpatched.compression == teacher.compression


@pytest.mark.parametrize("spatial, patch, blocks", [(32, 4, [1, 2, 2, 2]), (16, 2, [1, 2, 2, 2]), (8, 1, [1, 2, 2, 2]),
                                                      (32, 1, [1, 2, 2, 8]), (32, 8, [1, 2, 2, 1])])
def test_the_up_blocks_make_what_the_output_patch_leaves(spatial, patch, blocks):
    plan = plan_upsampling(Compression(latent_channels=4, temporal=4, spatial=spatial), [False, True, True, True], patch)
    assert [f[1] for f in plan] == blocks
    assert [f[0] for f in plan] == [1, 2, 2, 1]


def test_an_output_patch_that_does_not_fit_is_refused_with_the_fix():
    with pytest.raises(pydantic.ValidationError, match="power of two"):
        StudentRecipe(**{**TINY.model_dump(), "output_patch": 3})
    compression = Compression(latent_channels=4, temporal=4, spatial=8)
    with pytest.raises(EffconvError, match="does not divide the teacher's 8x spatial compression"):
        student_config(compression, "causal", _recipe(output_patch=16, widths=[16, 16, 8, 8, 256]))
    with pytest.raises(EffconvError, match="last width 16 is not a multiple of 64"):
        student_config(compression, "causal", _recipe(output_patch=8))


def test_depth_to_space_is_the_inverse_of_space_to_depth():
    """Each stage moves the per-frame conv's channels into 2x2 pixels (torch's pixel_shuffle order) and loses none."""
    torch.manual_seed(0)
    stage = PatchUpsampler(16).eval()
    x = torch.randn(1, 16, 3, 5, 7)
    with torch.no_grad():
        out = stage(x)
        before_shuffle = stage.conv(F.silu(stage.norm(x)))
    assert out.shape == (1, 4, 3, 10, 14)
    frames = out.transpose(1, 2).reshape(3, 4, 10, 14)
    assert torch.equal(F.pixel_unshuffle(frames, 2).reshape(1, 3, 16, 5, 7).transpose(1, 2), before_shuffle)


def _patched_student() -> TurboVAEDDecoder:
    torch.manual_seed(0)
    student = TurboVAEDDecoder(latent_channels=4, widths=(16, 16, 8, 8, 64), layers=(1, 1, 1, 1, 1),
                               separable=(True, True, False, False, True), kernel_size=3,
                               upsample_factors=((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)), output_patch=4,
                               shortcut_norm=1e-6).eval()
    assert student.compression.spatial == 32
    return student


@pytest.mark.parametrize("plan", [[1] * 5, [2, 3], [3, 2], [5]])
def test_a_patched_student_streams_chunk_for_chunk(plan):
    student, latent = _patched_student(), torch.randn(1, 4, 5, 2, 3)
    with torch.no_grad():
        whole = student(latent)
        chunks, cache, start = [], None, 0
        for size in plan:
            video, cache = student.decode_chunk(latent[:, :, start:start + size], cache)
            chunks.append(video)
            start += size
    streamed = torch.cat(chunks, dim=2)
    assert streamed.shape == whole.shape == (1, 3, 17, 64, 96)
    assert float((streamed - whole).abs().max()) <= 1e-5


@pytest.mark.parametrize("backend", ["onnx", "tflite", pytest.param("executorch", marks=pytest.mark.slow)])
def test_a_patched_streaming_artifact_decodes_any_length_as_the_whole_clip(backend, tmp_path, cli):
    student = _patched_student()
    student.save_pretrained(tmp_path / "patched")
    spec = tmp_path / "patched.yaml"
    spec.write_text(yaml.safe_dump({"name": "patched", "model": {"diffusers": "TurboVAEDDecoder", "pretrained": "patched"},
                                    "part": "decoder", "input": {"frames": 9, "height": 64, "width": 96}}))
    assert cli("convert", spec, "--to", backend, "--stream", "2", "--out", tmp_path / "out")[0] == 0
    artifact = next(p for p in (tmp_path / "out").iterdir() if p.suffix != ".json")
    latent = torch.randn(1, 4, 7, 2, 3)  # the last call is short and padded
    np.save(tmp_path / "latent.npy", latent.numpy())
    code, _, err = cli("decode", artifact, "--latents", tmp_path / "latent.npy", "--out", tmp_path / "video.npy")
    assert code == 0, err
    with torch.no_grad():
        whole = student(latent).numpy()
    decoded = np.load(tmp_path / "video.npy")
    assert decoded.shape == whole.shape and float(np.abs(decoded - whole).max()) <= 1e-4
