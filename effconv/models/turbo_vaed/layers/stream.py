"""The temporal state of a chunked (streaming) decode: what each causal conv needs from the previous chunk.

A causal conv with temporal kernel k sees frames t-k+1..t, the frames before the clip's start being copies of
its first frame. Decoding a clip chunk by chunk is exact when every such conv gets, in front of the chunk, the
last k-1 frames of its input from the previous chunk (its cache), and on the first chunk copies of the chunk's
own first frame, as the whole-clip decode pads.

Causal upsamplers are the other rule that depends on the chunk: the whole-clip decode drops the first s_t-1
frames an upsampler makes from latent frame 0. A streamed chunk cannot drop frames (its output shape must not
depend on which chunk it is), so on the first chunk those frames are instead overwritten with copies of the
first kept frame. Every later conv then sees, in front of the first real frame, copies of it — what replicate
padding would have given it — so the real frames come out exact and the leading ones are copies of the first
real frame. `leading` counts them (S_t - 1 at the output, S_t the product of temporal factors): the first
chunk's output starts with that many extra frames, which the caller drops.

Everything is tensor arithmetic on a `first` flag (1 on the clip's first chunk, 0 after), so one exported
graph serves every chunk: history = first * copies + (1 - first) * cache.
"""

from __future__ import annotations

import torch


class ChunkStream:
    """The state one chunk's decode threads through the decoder's convs and upsamplers, in call order.

    `caches`: the previous chunk's `updated`, or None on the first chunk (the flag is then 1 and no cache is
    read). `first`: a scalar tensor, 1.0 on the first chunk and 0.0 after; exported graphs take it as an input.
    """

    def __init__(self, first: torch.Tensor, caches: list[torch.Tensor] | None = None):
        self.first = first.reshape(1, 1, 1, 1, 1)
        self._caches = None if caches is None else iter(caches)
        self.updated: list[torch.Tensor] = []
        self.leading = 0

    def pad(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """`x` with `frames` frames of history in front; the last `frames` frames become the next chunk's cache."""
        copies = torch.cat([x[:, :, :1]] * frames, dim=2)
        history = copies if self._caches is None else self._blend(copies, next(self._caches))
        padded = torch.cat([history, x], dim=2)
        self.updated.append(padded[:, :, padded.shape[2] - frames:])
        return padded

    def upsampled(self, x: torch.Tensor, s_t: int, drops_first: bool) -> torch.Tensor:
        """An upsampler's output: on the first chunk, the frames before the first kept one become copies of it."""
        if not drops_first or s_t == 1:
            return x
        self.leading = self.leading * s_t + s_t - 1
        lead = self.leading
        first_kept = torch.cat([x[:, :, lead:lead + 1]] * lead, dim=2)
        return torch.cat([self._blend(first_kept, x[:, :, :lead]), x[:, :, lead:]], dim=2)

    def _blend(self, on_first: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.first * on_first + (1 - self.first) * after

    def check_consumed(self) -> None:
        if self._caches is not None and next(self._caches, None) is not None:
            raise ValueError("more cache tensors than the decoder's causal convs")
