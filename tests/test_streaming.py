"""Streaming decode: a student decoded chunk by chunk, with its temporal cache carried between chunks, gives the
whole-clip decode for every chunk plan; what cannot stream is refused with the reason."""

from __future__ import annotations

import pytest
import torch

from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.decoder import build_student
from effconv.recipe import StudentRecipe, load_recipe
from effconv.spec import load_spec

from conftest import FAMILY_SPECS

STREAMING_FAMILIES = [spec for spec in FAMILY_SPECS if not spec.stem.startswith("cogvideox")]
LATENT_FRAMES = 9
PLANS = [[1] * LATENT_FRAMES, [2, 2, 2, 2, 1], [3, 3, 3], [LATENT_FRAMES], [2, 1, 3, 3]]


def _student(spec, **changes):
    teacher = load_model(load_spec(spec))
    recipe = load_recipe("tiny")[0].student
    return build_student(teacher, StudentRecipe(**recipe.model_dump() | changes) if changes else recipe), teacher


def _latent(student, frames: int) -> torch.Tensor:
    return torch.randn(1, student.config.latent_channels, frames, 4, 6)


def decode_in_chunks(student, latent: torch.Tensor, plan: list[int]) -> torch.Tensor:
    frames, cache, start = [], None, 0
    for size in plan:
        video, cache = student.decode_chunk(latent[:, :, start:start + size], cache)
        frames.append(video)
        start += size
    return torch.cat(frames, dim=2)


@pytest.mark.parametrize("spec", STREAMING_FAMILIES, ids=lambda path: path.stem)
def test_every_chunk_plan_gives_the_whole_clip_decode(spec):
    student, teacher = _student(spec)
    latent = _latent(student, LATENT_FRAMES)
    with torch.no_grad():
        whole = student(latent)
        for plan in PLANS:
            streamed = decode_in_chunks(student, latent, plan)
            assert streamed.shape == whole.shape, plan
            assert float((streamed - whole).abs().max()) <= 1e-5, plan
    assert whole.shape[2] == (1 + teacher.compression.temporal * (LATENT_FRAMES - 1) if teacher.compression.causal
                              else teacher.compression.temporal * LATENT_FRAMES)


def test_the_cache_holds_k_minus_1_frames_of_each_temporal_conv_whatever_the_chunk():
    student, _ = _student(FAMILY_SPECS[1])
    with torch.no_grad():
        _, after_one = student.decode_chunk(_latent(student, 1))
        _, after_three = student.decode_chunk(_latent(student, 3))
    assert [c.shape for c in after_one] == [c.shape for c in after_three]
    assert {c.shape[2] for c in after_one} == {2, 4}  # dense 3x3x3 convs keep 2 frames, separable k=5 keep 4


def test_a_chunk_with_the_wrong_number_of_caches_is_refused():
    student, _ = _student(FAMILY_SPECS[1])
    with torch.no_grad():
        _, cache = student.decode_chunk(_latent(student, 2))
        with pytest.raises(ValueError, match="more cache tensors"):
            student.decode_chunk(_latent(student, 2), cache + cache[:1])


def test_symmetric_padding_and_cogvideox_frame_rule_cannot_stream():
    symmetric, _ = _student(FAMILY_SPECS[1], temporal_padding="symmetric")
    with pytest.raises(EffconvError, match="temporal padding cannot stream") as refused:
        symmetric.decode_chunk(_latent(symmetric, 2))
    assert "temporal_padding: causal" in refused.value.fix
    cogvideox, _ = _student(next(spec for spec in FAMILY_SPECS if spec.stem.startswith("cogvideox")))
    with pytest.raises(EffconvError, match="odd number of latent frames"):
        cogvideox.decode_chunk(_latent(cogvideox, 2))
