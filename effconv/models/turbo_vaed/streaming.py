"""A student's chunked decode as one exportable step: (latent chunk, first flag, caches) -> (video, caches').

The step is the same graph for every chunk of a clip (layers/stream.py says how the first chunk is told apart),
so a phone app loads one artifact and calls it in a loop, carrying the caches; `StreamLayout` is what that loop
needs to know: the cache tensors, the frames each call makes, and how many leading frames the first call adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.models.turbo_vaed.layers.stream import ChunkStream

LATENT_INPUT, FIRST_INPUT, VIDEO_OUTPUT = "latent", "first", "video"


class StreamingStep(nn.Module):
    def __init__(self, decoder: TurboVAEDDecoder):
        super().__init__()
        decoder.check_streamable()
        self.decoder = decoder

    def forward(self, latent: torch.Tensor, first: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stream = ChunkStream(first, list(caches))
        video = self.decoder(latent, stream=stream)
        stream.check_consumed()
        return (video, *stream.updated)


@dataclass(frozen=True)
class StreamLayout:
    latent_shape: tuple[int, ...]  # one call's latent: (1, C, K, h, w)
    video_frames: int  # frames one call returns
    leading_frames: int  # extra frames at the start of the first call's output (copies of frame 0)
    cache_shapes: tuple[tuple[int, ...], ...]

    @property
    def chunk(self) -> int:
        return self.latent_shape[2]

    @property
    def input_names(self) -> list[str]:
        return [LATENT_INPUT, FIRST_INPUT] + [f"cache_{i}" for i in range(len(self.cache_shapes))]

    @property
    def output_names(self) -> list[str]:
        return [VIDEO_OUTPUT] + [f"cache_out_{i}" for i in range(len(self.cache_shapes))]

    def first_call(self, latent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The step's inputs for a clip's first chunk: flag 1, zero caches (not read when the flag is 1)."""
        return (latent, torch.ones(1), *(torch.zeros(shape) for shape in self.cache_shapes))

    def as_manifest(self) -> dict:
        caches = [{"input": name, "output": out, "shape": list(shape), "dtype": "float32", "initial": "zeros"}
                  for name, out, shape in zip(self.input_names[2:], self.output_names[1:], self.cache_shapes)]
        return {
            "latent_frames_per_call": self.chunk,
            "video_frames_per_call": self.video_frames,
            "drop_leading_frames_of_first_call": self.leading_frames,
            "first": {"input": FIRST_INPUT, "shape": [1], "dtype": "float32", "first_call": 1.0, "later_calls": 0.0},
            "caches": caches,
            "loop": (f"split the latent (1, C, T, h, w) into chunks of {self.chunk} frames along T; for each chunk feed "
                     f"'{LATENT_INPUT}', '{FIRST_INPUT}' (1 on the first call, 0 after) and every cache input (zeros on "
                     "the first call, then the matching cache output of the previous call); append 'video', dropping its "
                     f"first {self.leading_frames} frames on the first call. Pad a short last chunk by repeating its last "
                     f"latent frame and keep only the video frames of its real latent frames ({self.video_frames // self.chunk} "
                     "per latent frame)."),
        }


def stream_layout(decoder: TurboVAEDDecoder, latent_shape: tuple[int, ...]) -> StreamLayout:
    """Decode one chunk of zeros to learn the cache shapes and the first call's frame arithmetic."""
    decoder.check_streamable()
    stream = ChunkStream(torch.ones(1))
    with torch.no_grad():
        video = decoder(torch.zeros(latent_shape), stream=stream)
    return StreamLayout(tuple(latent_shape), video.shape[2], stream.leading, tuple(tuple(c.shape) for c in stream.updated))
