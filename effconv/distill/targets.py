"""What the student learns from, per clip: the teacher's latent (and tapped features), cached on disk with
the clip itself when the recipe draws from a finite clip pool.

The cache folder is named by a hash of everything a cached file depends on: the teacher's weights, the
clip geometry, the tapped features, the sampling seed, the training videos (path, size, mtime), and the code that
made it (the effconv version and the source of this module and of the clip sampler, with what they import). A
retrained teacher of the same shape, other videos, or changed sampling code get a new folder and never reuse stale
clips or latents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from effconv.distill.features import captured_features
from effconv.models.loader import LoadedModel
from effconv.provenance import produced_by
from effconv.video.clips import ClipSampler
from effconv.video.reader import VideoInfo

CLIP_KEY = "clip"
LATENT_KEY = "latent"
KEY_CHARS = 16


def weights_digest(module: nn.Module) -> str:
    """blake2b of every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(teacher: LoadedModel, taps: dict[str, str], videos: list[VideoInfo], seed: int) -> str:
    def identity(path: Path) -> list:
        stat = Path(path).stat()
        return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]

    described = {
        "teacher": weights_digest(teacher.model),
        "clip": list(teacher.clip_shape),
        "taps": taps,
        "seed": seed,
        "videos": [identity(video.path) for video in videos],
        "produced_by": produced_by(__name__, ClipSampler.__module__),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:KEY_CHARS]


class TargetCache:
    """clip-NNNNNNNN.safetensors files (clip, latent, feature.*) under `root/key/`; a damaged file, or one whose
    keys or clip and latent shapes differ, is treated as missing."""

    def __init__(self, root: Path, key: str, expected_keys: set[str], clip_shape: tuple[int, ...],
                 latent_shape: tuple[int, ...]):
        self.directory = Path(root) / key
        self.expected_keys = expected_keys | {CLIP_KEY}
        self.expected_shapes = {CLIP_KEY: tuple(clip_shape), LATENT_KEY: tuple(latent_shape)}

    def _path(self, index: int) -> Path:
        return self.directory / f"clip-{index:08d}.safetensors"

    def load(self, index: int) -> dict[str, torch.Tensor] | None:
        path = self._path(index)
        if not path.is_file():
            return None
        with contextlib.suppress(OSError, SafetensorError):
            cached = load_file(path)
            if cached.keys() == self.expected_keys and all(
                    tuple(cached[name].shape) == shape for name, shape in self.expected_shapes.items()):
                return cached
        return None

    def save(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(index)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        save_file({name: value.detach().to("cpu").contiguous() for name, value in tensors.items()}, temporary)
        os.replace(temporary, path)


class TeacherTargets:
    """The frozen teacher's latent (mode) of a clip batch and the features it taps while decoding that latent."""

    def __init__(self, teacher: LoadedModel, taps: dict[str, str]):
        self.teacher = teacher
        self.taps = taps

    @property
    def keys(self) -> set[str]:
        return {LATENT_KEY} | {f"feature.{name}" for name in self.taps}

    @torch.no_grad()
    def compute(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        vae = self.teacher.model
        latent = vae.encode(clips).latent_dist.mode()
        targets = {LATENT_KEY: latent}
        if self.taps:
            with captured_features(vae, self.taps, self.teacher.adapter.tapped_hidden_state) as features:
                self.teacher.module(latent)
            targets |= {f"feature.{name}": value for name, value in features.items()}
        return targets
