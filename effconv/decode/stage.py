"""`effconv decode`: stream a latent of any length through a streaming artifact in its own runtime, chunk by chunk,
writing each chunk's frames as they come (peak memory does not grow with the clip), to .npy or .mp4.

The latent comes from a .npy (read memory-mapped) or from a real video encoded by the student's teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import Manifest, manifest_path, read_manifest, staged_output, teacher_of
from effconv.backends import registry
from effconv.backends.streaming import check_latent, decoded_frames, stream_chunks
from effconv.errors import EffconvError, exception_text
from effconv.models.loader import load_model
from effconv.spec import LoadedSpec, load_spec, spec_from_dict
from effconv.video.clips import center_crop
from effconv.video.reader import VideoReader, probe
from effconv.video.writer import VideoWriter

OUTPUT_SUFFIXES = (".npy", ".mp4")
Progress = Callable[[int, int], None]  # (chunks done, chunks in all)


@dataclass
class DecodeResult:
    out: Path
    latent_frames: int
    video_frames: int
    chunks: int
    runtime: str
    latent_source: str


def streaming_manifest(artifact: Path) -> Manifest:
    backend = registry.for_artifact(artifact)
    if not Path(artifact).exists():
        raise EffconvError(f"'{artifact}' not found.", "pass the artifact `effconv convert STUDENT --stream K` wrote.")
    manifest = read_manifest(manifest_path(artifact))
    if "stream" not in (manifest.model_extra or {}):
        raise EffconvError(f"'{Path(artifact).name}' decodes one fixed-length clip per call; it is not a streaming artifact.",
                           f"re-export the student with `effconv convert STUDENT.yaml --to {backend.name} --stream 1`.")
    return manifest


def read_latents(path: Path) -> np.ndarray:
    try:
        latent = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise EffconvError(f"latents '{path}' not found.", "pass a .npy of float32 latents (1, C, T, h, w).") from None
    except (ValueError, OSError) as exc:
        raise EffconvError(f"cannot read '{path}' as a .npy array ({exception_text(exc, 120)}).",
                           "pass a .npy written by numpy.save.") from None
    if latent.dtype != np.float32:
        raise EffconvError(f"latents '{path}' are {latent.dtype}, not float32.", "save them with .astype(numpy.float32).")
    return latent


def teacher_for(manifest: Manifest, teacher: Path | None) -> LoadedSpec:
    """--teacher, else the teacher recorded beside the student spec the artifact was exported from."""
    if teacher is not None:
        return load_spec(teacher)
    student = spec_from_dict(manifest.spec, Path("."), source="spec in the artifact's manifest")
    if student.pretrained_dir is None:
        raise EffconvError("the artifact's student has no saved weights to find its teacher from.", "pass --teacher TEACHER.yaml.")
    return teacher_of(student.pretrained_dir.with_suffix(".yaml"))


@torch.no_grad()
def encode_video(video: Path, manifest: Manifest, teacher: Path | None, frames: int | None) -> np.ndarray:
    """The teacher's latent (mode) of the video's first frames, resized and centre-cropped to the artifact's size."""
    height, width = manifest.outputs[0].shape[3:]
    compression = manifest.model_extra["compression"]
    try:
        info = probe(video, max(height, width))
        usable = _encodable_frames(min(frames or info.frames, info.frames), compression)
        if usable < 1:
            raise EffconvError(f"video '{video}' has too few frames for the teacher's {compression['temporal']}x temporal "
                               "compression.", "pass a longer video.")
        decoded = VideoReader(cache_bytes=0).window(info, 0, usable)
    except ValueError as exc:
        raise EffconvError(f"cannot read video '{video}': {exc}.", "pass a readable video file (mp4, mkv, webm, ...).") from None
    clip = center_crop(decoded, height, width)
    model = load_model(teacher_for(manifest, teacher).with_input(usable, height, width))
    return model.model.encode(clip.unsqueeze(0)).latent_dist.mode().numpy().astype(np.float32)


def _encodable_frames(available: int, compression: dict) -> int:
    temporal = compression["temporal"]
    if compression["causal"]:
        return 1 + temporal * ((available - 1) // temporal) if available >= 1 else 0
    return temporal * (available // temporal)


def decode(artifact: Path, out: Path, latents: Path | None = None, video: Path | None = None,
           teacher: Path | None = None, frames: int | None = None, threads: int | None = None,
           fps: float = 24.0, progress: Progress = lambda _done, _total: None) -> DecodeResult:
    artifact, out = Path(artifact), Path(out)
    if (latents is None) == (video is None):
        raise EffconvError("pass exactly one of --latents IN.npy and --video CLIP.", "e.g. --latents latent.npy.")
    if out.suffix not in OUTPUT_SUFFIXES:
        raise EffconvError(f"--out '{out}' must end in {' or '.join(OUTPUT_SUFFIXES)}.", "e.g. --out video.mp4.")
    manifest = streaming_manifest(artifact)
    stream = manifest.model_extra["stream"]
    latent = read_latents(latents) if latents is not None else encode_video(video, manifest, teacher, frames)
    check_latent(latent, stream, manifest.inputs[0].shape)
    backend = registry.for_artifact(artifact)
    run_all = backend.load_all(artifact, threads)
    if run_all is None:
        raise EffconvError(f"{backend.runtime} cannot run '{artifact.name}' on this machine.", "decode an .onnx, .tflite or .pte streaming export here (Core ML predicts only on macOS).")
    chunk_count = -(-latent.shape[2] // stream["latent_frames_per_call"])
    total = decoded_frames(stream, latent.shape[2])
    height, width = manifest.outputs[0].shape[3:]
    with staged_output(out.parent) as stage:
        with VideoWriter.for_path(stage / out.name, (1, manifest.outputs[0].shape[1], total, height, width), fps) as writer:
            for done, frames_out in enumerate(stream_chunks(run_all, stream, latent), start=1):
                writer.write(frames_out)
                progress(done, chunk_count)
    source = str(latents) if latents is not None else f"{video} encoded by the teacher"
    return DecodeResult(out, latent.shape[2], total, chunk_count, backend.runtime, source)
