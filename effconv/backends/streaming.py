"""The host's chunk loop for a streaming artifact, driven by the `stream` section of its manifest: what an app on
a phone does, run here in the artifact's own runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from effconv.errors import EffconvError

RunAll = Callable[[list[np.ndarray]], list[np.ndarray]]


def _frames(count: int) -> str:
    return f"{count} frame{'' if count == 1 else 's'}"


def check_latent(shape: tuple[int, ...], stream: dict, expected_shape: list[int]) -> None:
    """A latent the artifact can stream: (1, C, T, h, w) with the channels and latent size it was exported for."""
    channels, height, width = expected_shape[1], *expected_shape[3:]
    takes = (f"this artifact decodes (1, {channels}, T, {height}, {width}) latents, "
             f"{_frames(stream['latent_frames_per_call'])} per call")
    if len(shape) != 5 or shape[0] != 1:
        raise EffconvError(f"latent of shape {list(shape)} is not (1, C, T, h, w); {takes}.",
                           "save the latent as one clip of shape (1, C, T, h, w).")
    if shape[1] != channels:
        raise EffconvError(f"the latent has {shape[1]} channels; {takes}.",
                           f"pass latents of the student's teacher, whose encoder gives {channels} channels.")
    if list(shape[3:]) != [height, width]:
        raise EffconvError(f"latent frames of {shape[3]}x{shape[4]} do not fit: {takes}.",
                           "encode the video at the resolution the student was exported for, or re-export it at yours.")
    if shape[2] < 1:
        raise EffconvError("the latent has no frames.", "pass a latent with T >= 1.")


def check_finite(piece: np.ndarray, first_frame: int, source: str) -> None:
    """Refuses NaN or infinity: the decoder's temporal caches would carry it into every later frame."""
    finite = np.isfinite(piece).reshape(piece.shape[0], piece.shape[1], piece.shape[2], -1).all(axis=(0, 1, 3))
    if not finite.all():
        bad = first_frame + int(np.argmin(finite))
        raise EffconvError(f"{source} holds NaN or infinite values (first in latent frame {bad}).",
                           "pass finite latents: one non-finite value spreads through the decoder's caches into every later frame.")


def _video_frames_per_latent(stream: dict) -> int:
    return stream["video_frames_per_call"] // stream["latent_frames_per_call"]


def decoded_frames(stream: dict, latent_frames: int) -> int:
    """How many video frames the whole clip decodes to."""
    return latent_frames * _video_frames_per_latent(stream) - stream["drop_leading_frames_of_first_call"]


def calls(latent_frames: int, stream: dict) -> int:
    return -(-latent_frames // stream["latent_frames_per_call"])


def _regrouped(pieces: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The latent's pieces, of any lengths along T, as pieces of `size` frames (the last may be shorter)."""
    held: list[np.ndarray] = []
    count = 0
    for piece in pieces:
        held.append(piece)
        count += piece.shape[2]
        while count >= size:
            joined = np.concatenate(held, axis=2) if len(held) > 1 else held[0]
            yield joined[:, :, :size]
            held, count = [joined[:, :, size:]], count - size
    if count:
        yield np.concatenate(held, axis=2)


def step_calls(run_all: RunAll, stream: dict, latent: np.ndarray | Iterable[np.ndarray]
               ) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    """Each call of the chunk loop: the inputs it fed the step (latent chunk, first-call flag, caches) and the video
    frames it kept. `latent` is the whole latent or its pieces in order (of any lengths)."""
    chunk, per_latent = stream["latent_frames_per_call"], _video_frames_per_latent(stream)
    caches = [np.zeros(cache["shape"], np.float32) for cache in stream["caches"]]
    pieces = [latent] if isinstance(latent, np.ndarray) else latent
    for index, piece in enumerate(_regrouped(pieces, chunk)):
        piece = np.ascontiguousarray(piece, dtype=np.float32)
        real = piece.shape[2]
        if real < chunk:  # causal: frames padded after the real ones change nothing before them
            piece = np.concatenate([piece] + [piece[:, :, -1:]] * (chunk - real), axis=2)
        inputs = [piece, np.array([1.0 if index == 0 else 0.0], np.float32), *caches]
        video, *caches = run_all(inputs)
        skip = stream["drop_leading_frames_of_first_call"] if index == 0 else 0
        yield inputs, video[:, :, skip:real * per_latent]


def stream_chunks(run_all: RunAll, stream: dict, latent: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The video frames of each call in order; their concatenation is the whole-clip decode. `latent` is the whole
    latent or its pieces in order (of any lengths), so a latent made chunk by chunk is decoded as it comes."""
    for _inputs, video in step_calls(run_all, stream, latent):
        yield video
