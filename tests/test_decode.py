"""`effconv decode` pieces: which frames a video encodes and in which chunks, reading only what a chunk needs, the
latent checks and the .npy writer; and the bar that decoding a 4x longer video peaks within 1.2x the memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

import effconv.models.chunked_encode as encode_module
from effconv.backends.streaming import check_latent
from effconv.convert.stage import convert
from effconv.models.chunked_encode import encode_plan, encoded_chunks
from effconv.decode.latents import check_all_finite
from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import load_model
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec
from effconv.video.reader import frames_in_order, probe
from effconv.video.writer import NpyWriter

from conftest import SPECS

VIDEO = Path(__file__).resolve().parents[1] / "effconv" / "assets" / "video" / "bigbuckbunny.mp4"  # 132 frames, 25 fps


def _compression(stem: str):
    return load_model(load_spec(SPECS / f"{stem}.yaml")).compression


def test_a_mochi_teacher_encodes_31_of_33_frames_and_says_why():
    mochi = _compression("mochi-tiny")  # 6x temporal, causal: 1 + 6k frames
    plan = encode_plan(mochi, available=132, asked=33, clip_frames=13)
    assert (plan.frames, plan.latent_frames) == (31, 6)
    assert plan.note == "encoding 31 of the 33 frames asked for: the teacher's 6x temporal compression encodes 1 + 6k frames"
    assert plan.new_frames_per_chunk() == [13, 12, 6]  # 3 latents, then 2 and 1 (s_t new frames each)
    assert encode_plan(mochi, 132, 37, 13).note is None
    whole = encode_plan(mochi, 132, None, 13)
    assert whole.frames == 127 and whole.note.startswith("encoding 127 of the video's 132 frames")
    assert encode_plan(mochi, 20, 40, 13).note == "encoding 19 of the 40 frames asked for: the video has 20; the teacher's 6x temporal compression encodes 1 + 6k frames"


def test_frames_below_one_or_too_few_for_the_compression_are_refused():
    wan = _compression("wan21-tiny")
    for asked in (0, -1):
        with pytest.raises(EffconvError, match="frames must be >= 1"):
            encode_plan(wan, 132, asked, 9)
    with pytest.raises(EffconvError, match="3 frames are too few for the teacher's 6x"):
        encode_plan(Compression(latent_channels=4, temporal=6, spatial=8, causal=False), 3, None, 12)


def test_the_teacher_reads_only_the_frames_of_the_chunk_it_encodes(monkeypatch):
    """The first latent chunk comes after 9 frames are read, not the video's 132."""
    teacher = load_model(load_spec(SPECS / "wan21-tiny.yaml"))
    info = probe(VIDEO, 48)
    read = []

    def counted(video):
        for frame in frames_in_order(video):
            read.append(1)
            yield frame

    monkeypatch.setattr(encode_module, "frames_in_order", counted)
    chunks = encoded_chunks(teacher, info, encode_plan(teacher.compression, info.frames, None, 9), 32, 48)
    first = next(chunks)
    assert first.shape == (1, 4, 3, 4, 6) and len(read) == 9
    assert next(chunks).shape == (1, 4, 2, 4, 6) and len(read) == 17
    chunks.close()


def test_latent_errors_pluralize_frames_per_call():
    for per_call, words in ((1, "1 frame per call"), (2, "2 frames per call")):
        with pytest.raises(EffconvError) as refused:
            check_latent((1, 4, 3, 8, 8), {"latent_frames_per_call": per_call}, [1, 4, per_call, 4, 6])
        assert words in refused.value.message and "latent frames of 8x8 do not fit" in refused.value.message


def test_non_finite_latents_are_found_block_by_block(monkeypatch, tmp_path):
    latent = np.zeros((1, 4, 10, 4, 6), np.float32)
    latent[0, 3, 9, 0, 0] = -np.inf
    np.save(tmp_path / "latent.npy", latent)
    mapped = np.load(tmp_path / "latent.npy", mmap_mode="r")
    monkeypatch.setattr("effconv.decode.latents.CHECK_BLOCK_BYTES", 3 * latent[:, :, :1].nbytes)  # blocks of 3 frames
    with pytest.raises(EffconvError, match=r"first in latent frame 9\)"):
        check_all_finite(mapped, tmp_path / "latent.npy")
    check_all_finite(mapped[:, :, :9], tmp_path / "latent.npy")


def test_the_npy_writer_puts_chunks_of_any_length_in_place(tmp_path):
    video = np.random.default_rng(0).standard_normal((1, 3, 10, 4, 5)).astype(np.float32)
    with NpyWriter(tmp_path / "v.npy", video.shape) as writer:
        for start, stop in ((0, 3), (3, 4), (4, 10)):
            writer.write(video[:, :, start:stop])
    assert np.array_equal(np.load(tmp_path / "v.npy"), video)
    with pytest.raises(RuntimeError, match="wrote 3 of 10 frames"):
        with NpyWriter(tmp_path / "short.npy", video.shape) as writer:
            writer.write(video[:, :, :3])


def _loop(video: Path, out: Path, times: int) -> Path:
    """The clip `times` times over at 640x360 (enough for the working size of a 128x192 student)."""
    with av.open(str(video)) as source:
        frames = [frame.to_ndarray(format="rgb24", width=640, height=360) for frame in source.decode(video=0)]
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for frame in frames * times:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def _peak_rss_mb(*args) -> float:
    """Peak resident memory of `effconv ARGS` run in its own process."""
    process = subprocess.Popen([sys.executable, "-m", "effconv", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read().decode()
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_decoding_a_4x_longer_video_peaks_within_1_2x_the_memory(tmp_path):
    """The tiny Wan 2.2 teacher (cheap: 16x spatial) at 128x192, whose working frames would take ~2 MB each if the
    clip were held whole: 132 and 528 frames."""
    spec = re.sub(r"input: .*", "input: {frames: 9, height: 128, width: 192}", (SPECS / "wan22-tiny.yaml").read_text())
    (tmp_path / "teacher.yaml").write_text(spec)
    rewrite(load_spec(tmp_path / "teacher.yaml"), "tiny", tmp_path / "student")
    student = load_spec(tmp_path / "student" / "wan22-tiny-student.yaml")
    artifact = tmp_path / "stream" / convert(student, "onnx", tmp_path / "stream", layout="conv3d", stream=2).artifact
    short, long = _loop(VIDEO, tmp_path / "x1.mp4", 1), _loop(VIDEO, tmp_path / "x4.mp4", 4)
    peaks = [_peak_rss_mb("decode", artifact, "--video", video, "--out", tmp_path / "out.mp4") for video in (short, long)]
    assert peaks[1] <= 1.2 * peaks[0], peaks
