"""Streaming decode: a student decoded chunk by chunk, with its temporal cache carried between chunks, gives the
whole-clip decode for every chunk plan; what cannot stream is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from effconv.artifacts import read_manifest, spec_beside, teacher_of
from effconv.backends import registry
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.decoder import build_student
from effconv.profile.run import run as profile
from effconv.recipe import StudentRecipe, load_recipe
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec
from effconv.video.clips import center_crop
from effconv.video.reader import VideoReader, probe

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


VIDEO = Path(__file__).resolve().parents[1] / "effconv" / "assets" / "video" / "bigbuckbunny.mp4"


def teacher_tiles(teacher, first: int, later: int, frames: int, height: int, width: int) -> np.ndarray:
    """The latent of the video's first `frames` frames as diffusers' temporal tiles encode it, written out by hand: the
    first tile `first` frames, each later tile the frame before it plus `later` new ones, that frame's latent dropped."""
    info = probe(VIDEO, max(height, width))
    reader, start, pieces = VideoReader(cache_bytes=0), 0, []
    while start < frames:
        count = first if start == 0 else min(later, frames - start)
        context = 0 if start == 0 else 1
        clip = center_crop(reader.window(info, start - context, count + context), height, width).unsqueeze(0)
        with torch.no_grad():
            pieces.append(teacher.model.encode(clip).latent_dist.mode()[:, :, context:].numpy())
        start += count
    return np.concatenate(pieces, axis=2)


def test_decode_video_encodes_chunk_by_chunk_as_diffusers_temporal_tiles(streaming_student, cli, tmp_path):
    """21 frames of 9 x 32 x 48 student: tiles of 9, then 8 and 4 new frames; the decode is the student's of that latent."""
    student, artifacts = streaming_student
    code, out, err = cli("decode", artifacts["onnx"], "--video", VIDEO, "--frames", "21", "--out", tmp_path / "v.npy", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["latent_frames"], summary["video_frames"], summary["chunks"]) == (6, 21, 3)
    assert summary["fps"] == 25.0 and summary["frames_note"] is None  # the clip's own rate; 21 = 1 + 4 * 5 fits
    teacher = load_model(teacher_of(spec_beside(student.pretrained_dir)))
    latent = teacher_tiles(teacher, 9, 8, 21, 32, 48)
    with torch.no_grad():
        whole = load_model(student).module(torch.from_numpy(latent)).numpy()
    decoded = np.load(tmp_path / "v.npy")
    assert decoded.shape == whole.shape == (1, 3, 21, 32, 48) and float(np.abs(decoded - whole).max()) <= 1e-4


def test_decode_video_prints_the_frames_it_used_and_why(streaming_student, cli, tmp_path):
    _, artifacts = streaming_student
    code, out, err = cli("decode", artifacts["onnx"], "--video", VIDEO, "--frames", "11", "--out", tmp_path / "v.mp4")
    assert code == 0, err
    assert "encoding 9 of the 11 frames asked for: the teacher's 4x temporal compression encodes 1 + 4k frames." in " ".join(out.split())
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 9 and container.streams.video[0].average_rate == 25


def test_decode_refuses_bad_frames_non_finite_latents_and_mismatches_with_the_cause(streaming_student, cli, tmp_path):
    _, artifacts = streaming_student
    channels = read_manifest(artifacts["onnx"].with_suffix(".json")).inputs[0].shape[1]
    latent = np.zeros((1, channels, 8, 4, 6), np.float32)
    latent[0, 1, 5, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", latent)
    np.save(tmp_path / "inf.npy", np.where(np.isnan(latent), np.inf, latent).astype(np.float32))
    np.save(tmp_path / "channels.npy", np.zeros((1, channels + 4, 3, 4, 6), np.float32))
    np.save(tmp_path / "fine.npy", np.zeros((1, channels, 3, 4, 6), np.float32))
    video = ("--video", VIDEO, "--out", tmp_path / "v.mp4")
    cases = [
        ((*video, "--frames", "0"), "frames must be >= 1"),
        ((*video, "--frames", "-3"), "frames must be >= 1"),
        ((*video, "--fps", "0"), "the frame rate must be a positive number"),
        (("--latents", tmp_path / "fine.npy", "--frames", "9", "--out", tmp_path / "v.mp4"), "--frames applies to --video only"),
        (("--latents", tmp_path / "nan.npy", "--out", tmp_path / "v.mp4"), "NaN or infinite values (first in latent frame 5)"),
        (("--latents", tmp_path / "inf.npy", "--out", tmp_path / "v.mp4"), "NaN or infinite values (first in latent frame 5)"),
        (("--latents", tmp_path / "channels.npy", "--out", tmp_path / "v.mp4"), f"the latent has {channels + 4} channels"),
        ((*video, "--teacher", next(spec for spec in FAMILY_SPECS if spec.stem.startswith("ltx"))), "does not match student"),
    ]
    for args, message in cases:
        code, _, err = cli("decode", artifacts["onnx"], *args)
        assert code == 2 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, (args, err)
        assert "resolution" not in err, err
        assert not (tmp_path / "v.mp4").exists()
    code, _, err = cli("decode", artifacts["onnx"], "--latents", tmp_path / "fine.npy", "--out", tmp_path / "v.mp4")
    assert code == 0, err
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert container.streams.video[0].average_rate == 24  # a latent has no frame rate of its own
