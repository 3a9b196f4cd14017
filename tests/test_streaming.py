"""Streaming decode: a student decoded chunk by chunk, with its temporal cache carried between chunks, gives the
whole-clip decode for every chunk plan; what cannot stream is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from effconv.artifacts import read_manifest
from effconv.backends import registry
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.decoder import build_student
from effconv.profile.run import run as profile
from effconv.recipe import StudentRecipe, load_recipe
from effconv.rewrite.stage import rewrite
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


# LiteRT conversion and ExecuTorch lowering of the streaming step take about a minute each on 2 cores: their runs
# are slow tests.
STREAM_BACKENDS = ["onnx", pytest.param("tflite", marks=pytest.mark.slow), pytest.param("executorch", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def streaming_student(tmp_path_factory):
    """The tiny Wan 2.1 student (a family the other streaming tests leave to PyTorch), exported with --stream 2 to a
    backend on first use."""
    root = tmp_path_factory.mktemp("stream")
    teacher = next(spec for spec in FAMILY_SPECS if spec.stem.startswith("wan21"))
    rewrite(load_spec(teacher), "tiny", root)
    student = load_spec(root / f"{teacher.stem}-student.yaml")

    class Artifacts(dict):
        def __missing__(self, name: str) -> Path:
            self[name] = root / name / convert(student, name, root / name, stream=2).artifact
            return self[name]

    return student, Artifacts()


@pytest.mark.parametrize("backend", STREAM_BACKENDS)
def test_a_streaming_artifact_decodes_any_length_as_the_whole_clip(streaming_student, backend, cli, tmp_path):
    student, artifacts = streaming_student
    manifest = read_manifest(artifacts[backend].with_suffix(".json"))
    stream = manifest.stream
    assert manifest.verify["passed"] and manifest.verify["max_abs_err"] <= 1e-4
    assert [t.name for t in manifest.inputs] == ["latent", "first"] + [c["input"] for c in stream["caches"]]
    assert stream["latent_frames_per_call"] == 2 and stream["video_frames_per_call"] == 8
    assert stream["drop_leading_frames_of_first_call"] == 3 and all(c["initial"] == "zeros" for c in stream["caches"])
    model = load_model(student)
    for frames in (12, 7):  # 7: the last call is short and padded
        latent = torch.randn(1, *manifest.inputs[0].shape[1:2], frames, *manifest.inputs[0].shape[3:])
        np.save(tmp_path / "latent.npy", latent.numpy())
        code, out, err = cli("decode", artifacts[backend], "--latents", tmp_path / "latent.npy", "--out", tmp_path / "video.npy", "--json")
        assert code == 0, err
        with torch.no_grad():
            whole = model.module(latent).numpy()
        decoded = np.load(tmp_path / "video.npy")
        assert decoded.shape == whole.shape and float(np.abs(decoded - whole).max()) <= 1e-4
        assert json.loads(out)["chunks"] == -(-frames // 2)


def test_decode_writes_an_mp4_of_the_stream(streaming_student, cli, tmp_path):
    _, artifacts = streaming_student
    np.save(tmp_path / "latent.npy", np.zeros((1, *read_manifest(artifacts["onnx"].with_suffix(".json")).inputs[0].shape[1:2], 3, 4, 6), np.float32))
    code, _, err = cli("decode", artifacts["onnx"], "--latents", tmp_path / "latent.npy", "--out", tmp_path / "video.mp4")
    assert code == 0, err
    with av.open(str(tmp_path / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 9  # 1 + 4 * (3 - 1)


def test_decode_refuses_what_it_cannot_stream_in_one_line(streaming_student, cli, tmp_path):
    student, artifacts = streaming_student
    whole_clip = tmp_path / "whole" / convert(student, "onnx", tmp_path / "whole").artifact
    np.save(tmp_path / "latent.npy", np.zeros((1, 4, 3, 4, 6), np.float32))
    np.save(tmp_path / "f64.npy", np.zeros((1, 4, 3, 4, 6)))
    np.save(tmp_path / "wide.npy", np.zeros((1, 4, 3, 8, 8), np.float32))
    cases = [
        ((whole_clip, "--latents", tmp_path / "latent.npy", "--out", tmp_path / "v.npy"), "--stream 1"),
        ((artifacts["onnx"], "--latents", tmp_path / "f64.npy", "--out", tmp_path / "v.npy"), "float32"),
        ((artifacts["onnx"], "--latents", tmp_path / "missing.npy", "--out", tmp_path / "v.npy"), "not found"),
        ((artifacts["onnx"], "--latents", tmp_path / "wide.npy", "--out", tmp_path / "v.npy"), "re-export it at yours"),
        ((artifacts["onnx"], "--latents", tmp_path / "latent.npy", "--out", tmp_path / "v.avi"), ".npy or .mp4"),
    ]
    for args, fix in cases:
        code, _, err = cli("decode", *args)
        assert code == 2 and fix in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.npy").exists() and not (tmp_path / "v.avi").exists()
    code, _, err = cli("quantize", artifacts["onnx"], "--out", tmp_path / "q", "--calib", "random")
    assert code == 2 and "streaming step" in err and not (tmp_path / "q").exists()


def test_stream_export_is_for_students(cli, tmp_path):
    code, _, err = cli("convert", FAMILY_SPECS[1], "--stream", "1", "--out", tmp_path / "teacher")
    assert code == 2 and "effconv rewrite" in err
    assert not (tmp_path / "teacher").exists()


def coreml_inputs(path: Path) -> list[tuple[str, list[int]]]:
    import coremltools

    description = coremltools.utils.load_spec(str(path)).description
    return [(tensor.name, [int(d) for d in tensor.type.multiArrayType.shape]) for tensor in description.input]


def test_core_ml_stream_is_checked_structurally_and_its_chunk_loop_simulated_in_fp16(streaming_student):
    """Core ML predicts only on macOS: the program's inputs, ranks and output shape are checked, and the chunk loop runs
    the step in torch with fp16 rounding against the whole-clip fp32 decode."""
    _, artifacts = streaming_student
    manifest = read_manifest(artifacts["coreml"].with_suffix(".json"))
    verify = manifest.verify
    assert verify["passed"] and verify["rank_ok"] and verify["output_shape_ok"] and verify["prediction"].startswith("not run")
    assert "fp16 simulated" in verify["against"] and 1e-6 < verify["max_abs_err"] <= verify["atol"]
    described = coreml_inputs(artifacts["coreml"])
    assert described == [(t.name, t.shape) for t in manifest.inputs]


@pytest.mark.parametrize("backend", STREAM_BACKENDS)
def test_profile_of_a_streaming_artifact_is_per_call(streaming_student, backend):
    """One call of K latent frames, estimated on its own graph and measured in its runtime as a later call."""
    _, artifacts = streaming_student
    result = profile(artifacts[backend], "host-cpu", do_measure=True, threads=1, repeats=2)
    assert "steady state" in result.source.how and result.estimate.frames == 8  # K=2 latent frames x 4
    assert result.measured["median_ms"] > 0 and result.measured["runtime"] == registry.get(backend).runtime
