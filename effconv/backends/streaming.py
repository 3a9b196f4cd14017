"""The host's chunk loop for a streaming artifact, driven by the `stream` section of its manifest: what an app on
a phone does, run here in the artifact's own runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from effconv.errors import EffconvError

RunAll = Callable[[list[np.ndarray]], list[np.ndarray]]


def check_latent(latent: np.ndarray, stream: dict, expected_shape: list[int]) -> None:
    """A latent the artifact can stream: (1, C, T, h, w) with the channels and latent size it was exported for."""
    if latent.ndim != 5 or latent.shape[0] != 1 or list(latent.shape[1:2] + latent.shape[3:]) != [expected_shape[1], *expected_shape[3:]]:
        raise EffconvError(f"latent of shape {list(latent.shape)} does not fit this artifact, which decodes (1, "
                           f"{expected_shape[1]}, T, {expected_shape[3]}, {expected_shape[4]}) latents "
                           f"{stream['latent_frames_per_call']} frames per call.",
                           "encode the video at the resolution the student was exported for, or re-export it at yours.")
    if latent.shape[2] < 1:
        raise EffconvError("the latent has no frames.", "pass a latent with T >= 1.")


def _video_frames_per_latent(stream: dict) -> int:
    return stream["video_frames_per_call"] // stream["latent_frames_per_call"]


def decoded_frames(stream: dict, latent_frames: int) -> int:
    """How many video frames the whole clip decodes to."""
    return latent_frames * _video_frames_per_latent(stream) - stream["drop_leading_frames_of_first_call"]


def stream_chunks(run_all: RunAll, stream: dict, latent: np.ndarray) -> Iterator[np.ndarray]:
    """The video frames of each chunk in order; their concatenation is the whole-clip decode."""
    chunk, per_latent = stream["latent_frames_per_call"], _video_frames_per_latent(stream)
    caches = [np.zeros(cache["shape"], np.float32) for cache in stream["caches"]]
    for start in range(0, latent.shape[2], chunk):
        piece = np.ascontiguousarray(latent[:, :, start:start + chunk], dtype=np.float32)
        real = piece.shape[2]
        if real < chunk:  # causal: frames padded after the real ones change nothing before them
            piece = np.concatenate([piece] + [piece[:, :, -1:]] * (chunk - real), axis=2)
        first = np.array([1.0 if start == 0 else 0.0], np.float32)
        video, *caches = run_all([piece, first, *caches])
        skip = stream["drop_leading_frames_of_first_call"] if start == 0 else 0
        yield video[:, :, skip:real * per_latent]
