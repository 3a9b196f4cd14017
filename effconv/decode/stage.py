"""`effconv decode`: stream a latent of any length through a streaming artifact in its own runtime, chunk by chunk,
writing each chunk's frames as they come (peak memory does not grow with the clip), to .npy or .mp4.

The latent comes from a .npy (read memory-mapped) or from a real video, read and encoded by the student's teacher
one temporal chunk at a time as the decoder consumes it (decode/encode.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effconv.artifacts import Manifest, manifest_path, read_manifest, staged_output
from effconv.backends import registry
from effconv.backends.streaming import calls, check_finite, check_latent, decoded_frames, stream_chunks
from effconv.models.chunked_encode import EncodePlan, encode_plan, encoded_chunks
from effconv.decode.latents import check_all_finite, read_latents
from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import load_model
from effconv.models.teacher_fit import check_teacher_fits, teacher_spec_of
from effconv.video.reader import probe
from effconv.video.writer import VideoWriter

OUTPUT_SUFFIXES = (".npy", ".mp4")
DEFAULT_FPS = 24.0
Progress = Callable[[int, int], None]  # (calls done, calls in all)


@dataclass
class DecodeResult:
    out: Path
    latent_frames: int
    video_frames: int
    chunks: int
    runtime: str
    latent_source: str
    fps: float
    frames_note: str | None = None  # why --video encoded fewer frames than asked for


@dataclass
class LatentSource:
    """The latent's shape and its pieces in order, read or encoded only as they are consumed."""

    shape: tuple[int, ...]
    pieces: Iterable[np.ndarray]
    description: str
    fps: float
    note: str | None = None


def streaming_manifest(artifact: Path) -> Manifest:
    backend = registry.for_artifact(artifact)
    if not Path(artifact).exists():
        raise EffconvError(f"'{artifact}' not found.", "pass the artifact `effconv convert STUDENT --stream K` wrote.")
    manifest = read_manifest(manifest_path(artifact))
    if "stream" not in (manifest.model_extra or {}):
        raise EffconvError(f"'{Path(artifact).name}' decodes one fixed-length clip per call; it is not a streaming artifact.",
                           f"re-export the student with `effconv convert STUDENT.yaml --to {backend.name} --stream 1`.")
    return manifest


def _from_video(video: Path, manifest: Manifest, teacher: Path | None, frames: int | None) -> LatentSource:
    height, width = manifest.outputs[0].shape[3:]
    try:
        info = probe(video, max(height, width))
    except ValueError as exc:
        raise EffconvError(f"cannot read video '{video}': {exc}.", "pass a readable video file (mp4, mkv, webm, ...).") from None
    teacher_spec, recorded = teacher_spec_of(manifest.model_spec(), teacher)
    model = load_model(teacher_spec)
    check_teacher_fits(model, manifest.name, Compression(**manifest.model_extra["compression"]), recorded)
    plan: EncodePlan = encode_plan(model.compression, info.frames, frames, manifest.spec["input"]["frames"])
    latent_shape = (1, manifest.inputs[0].shape[1], plan.latent_frames, *manifest.inputs[0].shape[3:])

    def checked() -> Iterable[np.ndarray]:
        done = 0
        for piece in encoded_chunks(model, info, plan, height, width):
            check_finite(piece, done, f"the teacher's latent of '{video}'")
            done += piece.shape[2]
            yield piece

    return LatentSource(latent_shape, checked(), f"{video} encoded by the teacher", info.fps or DEFAULT_FPS, plan.note)


def _from_npy(latents: Path, manifest: Manifest) -> LatentSource:
    latent = read_latents(latents)
    check_latent(latent.shape, manifest.model_extra["stream"], manifest.inputs[0].shape)
    check_all_finite(latent, latents)
    return LatentSource(latent.shape, [latent], str(latents), DEFAULT_FPS)


def decode(artifact: Path, out: Path, latents: Path | None = None, video: Path | None = None,
           teacher: Path | None = None, frames: int | None = None, threads: int | None = None,
           fps: float | None = None, progress: Progress = lambda _done, _total: None) -> DecodeResult:
    artifact, out = Path(artifact), Path(out)
    if (latents is None) == (video is None):
        raise EffconvError("pass exactly one of --latents IN.npy and --video CLIP.", "e.g. --latents latent.npy.")
    if frames is not None and video is None:
        raise EffconvError("--frames applies to --video only.", "drop --frames, or slice the latent before saving it.")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise EffconvError(f"--fps {fps}: the frame rate must be a positive number.", "e.g. --fps 24, or leave it out.")
    if out.suffix not in OUTPUT_SUFFIXES:
        raise EffconvError(f"--out '{out}' must end in {' or '.join(OUTPUT_SUFFIXES)}.", "e.g. --out video.mp4.")
    manifest = streaming_manifest(artifact)
    stream = manifest.model_extra["stream"]
    source = _from_npy(latents, manifest) if latents is not None else _from_video(video, manifest, teacher, frames)
    backend = registry.for_artifact(artifact)
    run_all = backend.load_all(artifact, threads)
    if run_all is None:
        raise EffconvError(f"{backend.runtime} cannot run '{artifact.name}' on this machine.", "decode an .onnx, .tflite or .pte streaming export here (Core ML predicts only on macOS).")
    chunk_count = calls(source.shape[2], stream)
    total = decoded_frames(stream, source.shape[2])
    height, width = manifest.outputs[0].shape[3:]
    fps = fps or source.fps
    with staged_output(out.parent) as stage:
        with VideoWriter.for_path(stage / out.name, (1, manifest.outputs[0].shape[1], total, height, width), fps) as writer:
            for done, frames_out in enumerate(stream_chunks(run_all, stream, source.pieces), start=1):
                writer.write(frames_out)
                progress(done, chunk_count)
    return DecodeResult(out, source.shape[2], total, chunk_count, backend.runtime, source.description, fps, source.note)
