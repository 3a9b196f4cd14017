"""Calibration data for post-training quantization: decoder latents with, when they come from real video,
the ground-truth frames they encode.

Latents come from the teacher VAE's encoder applied to real clips (the artifact's manifest names the
model; a student's manifest leads to its teacher), from a saved file, or, only when asked for by name,
from a seeded normal distribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import Manifest
from effconv.backends.base import CalibrationSet
from effconv.video.clips import ClipSampler, center_clips, probe_videos
from effconv.errors import EffconvError, exception_text
from effconv.models.base import Compression
from effconv.models.loader import LoadedModel, load_model
from effconv.models.teacher_fit import is_student, teacher_for_student, teacher_spec_of

RANDOM = "random"
LATENT_FILE_SUFFIXES = (".npy", ".npz")
CALIBRATION_SEED = 1234  # differs from distillation's seed 0, so calibration clips are other crops


def teacher_model(manifest: Manifest, teacher: Path | None = None) -> LoadedModel:
    """The VAE whose encoder makes calibration latents, at the artifact's clip size: --teacher, else the student's
    recorded teacher, else the artifact's own model (a teacher decoder is calibrated with its own encoder). Another
    model than the artifact's own must fit the artifact's latents (and, for a student, be of the family it was
    distilled from)."""
    own = manifest.model_spec()
    if teacher is None and not is_student(own):
        return load_model(own)
    found, recorded = teacher_spec_of(own, teacher)
    clip = own.spec.input
    return teacher_for_student(found, manifest.name, Compression(**manifest.model_extra["compression"]),
                               (clip.frames, clip.height, clip.width), recorded)


def _check_latent_shape(shape: tuple[int, ...], expected: tuple[int, ...], source: str) -> None:
    if tuple(shape) != tuple(expected):
        raise EffconvError(
            f"{source} has latents of shape {list(shape)}, the artifact takes {list(expected)}.",
            "make the latents with the teacher of this artifact at the artifact's clip size.",
        )


@torch.no_grad()
def from_video(teacher: LoadedModel, paths: list[Path], samples: int, seed: int = CALIBRATION_SEED,
               expected: tuple[int, ...] | None = None, frames: int | None = None) -> CalibrationSet:
    """`samples` random clips (window, scale crop, flip) of the videos, encoded by the teacher (latent mode); clips of
    `frames` frames (default: the teacher's clip)."""
    _, _, clip_frames, height, width = teacher.clip_shape
    frames = frames or clip_frames
    videos = probe_videos(paths, frames, height, width)
    sampler = ClipSampler(videos, frames, height, width, seed=seed)
    return _encoded(teacher, [sampler.clip(k) for k in range(samples)], videos, expected)


@torch.no_grad()
def held_out_video(teacher: LoadedModel, paths: list[Path], per_video: int,
                   expected: tuple[int, ...] | None = None, frames: int | None = None) -> CalibrationSet:
    """Deterministic evaluation clips (evenly spaced windows, centre crop) of videos kept out of calibration; clips
    of `frames` frames (default: the teacher's clip)."""
    _, _, clip_frames, height, width = teacher.clip_shape
    frames = frames or clip_frames
    videos = probe_videos(paths, frames, height, width)
    clips = [clip for _, clip in center_clips(videos, frames, height, width, per_video=per_video)]
    return _encoded(teacher, clips, videos, expected)


def _encoded(teacher: LoadedModel, clips: list[torch.Tensor], videos, expected) -> CalibrationSet:
    latents, truths = [], []
    for clip in clips:
        video = clip.unsqueeze(0)
        latents.append(teacher.model.encode(video).latent_dist.mode().numpy().astype(np.float32))
        truths.append(video.numpy().astype(np.float32))
    names = ", ".join(Path(v.path).name for v in videos.videos)
    if expected is not None:
        _check_latent_shape(latents[0].shape, expected, f"the teacher encoder on {names}")
    return CalibrationSet(latents, truths, f"video: {names}")


def from_file(path: Path, expected: tuple[int, ...]) -> CalibrationSet:
    """A .npy of latents (N, C, T, h, w), or a .npz with `latents` and optional `frames` (N, 3, F, H, W)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            latents = np.asarray(loaded["latents"], dtype=np.float32)
            frames = np.asarray(loaded["frames"], dtype=np.float32) if "frames" in loaded.files else None
        else:
            latents, frames = np.asarray(loaded, dtype=np.float32), None
    except KeyError:
        raise EffconvError(f"'{path}' has no 'latents' array.", "save it with np.savez(path, latents=..., frames=...).") from None
    except (OSError, ValueError, EOFError) as exc:
        raise EffconvError(f"cannot read latents file '{path}': {exception_text(exc, 200)}.",
                           "pass a .npy or .npz written by numpy.") from None
    if latents.ndim != len(expected) or latents.shape[0] < 1:
        raise EffconvError(f"'{path}' holds an array of shape {list(latents.shape)}.",
                           f"store latents as (N, {', '.join(map(str, expected[1:]))}).")
    _check_latent_shape((1, *latents.shape[1:]), expected, f"'{path}'")
    if not np.isfinite(latents).all():
        raise EffconvError(f"'{path}' contains NaN or infinite latents.", "regenerate the latents.")
    if frames is not None and len(frames) != len(latents):
        raise EffconvError(f"'{path}' has {len(latents)} latents but {len(frames)} frame clips.", "store one clip per latent.")
    return CalibrationSet(
        [latent[None] for latent in latents],
        None if frames is None else [clip[None] for clip in frames],
        f"latents: {path.name}",
    )


def random_latents(expected: tuple[int, ...], samples: int, seed: int = CALIBRATION_SEED) -> CalibrationSet:
    return CalibrationSet.random(expected, samples, seed)


def is_latent_file(path: str) -> bool:
    return Path(path).suffix.lower() in LATENT_FILE_SUFFIXES
