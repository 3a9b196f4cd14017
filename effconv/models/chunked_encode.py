"""A real video encoded by the teacher one temporal chunk at a time, as the decoder consumes it, so memory does not
grow with the video.

The chunks follow diffusers' own temporal tiles for long videos (`_temporal_tiled_encode` of
AutoencoderKLHunyuanVideo and AutoencoderKLLTXVideo,
https://github.com/huggingface/diffusers/blob/main/src/diffusers/models/autoencoders/autoencoder_kl_hunyuan_video.py,
as of diffusers 0.42.1):
a causal teacher encodes 1 + s_t*k frames first, then s_t*k new frames per chunk with the frame before them in
front as context, whose own latent frame is dropped. Unlike diffusers, the tiles do not overlap further and are not
blended, so nothing waits for later frames. Each chunk is a separate encode, so the latent is not a one-shot
encode's of the whole clip, whose causal caches reach further back (Wan, CogVideoX) or whose attention sees every
frame (Mochi; diffusers refuses Mochi's own frame-wise encoding for that reason). On the demo teacher and the first
129 frames of the bundled clip the two latents differ by 55% RMS, yet the teacher decodes the chunked one as close
to the frames as the one-shot one (PSNR 14.9 vs 14.3 dB; the demo teacher was trained on 9-frame clips).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import LoadedModel
from effconv.video.clips import center_crop
from effconv.video.reader import VideoInfo, frames_in_order


@dataclass(frozen=True)
class EncodePlan:
    """Which frames of a video are encoded, and in which chunks."""

    compression: Compression
    available: int  # frames in the video
    asked: int | None  # --frames
    chunk_latents: int  # latent frames per chunk after the first (k)

    @property
    def wanted(self) -> int:
        return min(self.asked or self.available, self.available)

    @property
    def latent_frames(self) -> int:
        return self.compression.latent_frames(self.wanted) if self.wanted >= self.compression.pixel_frames(1) else 0

    @property
    def frames(self) -> int:
        """The most frames, up to those wanted, that the teacher's temporal compression encodes."""
        return self.compression.pixel_frames(self.latent_frames) if self.latent_frames else 0

    @property
    def note(self) -> str | None:
        """Why fewer frames are encoded than asked for (or than the video has), in words; None when all are."""
        reasons = [f"the video has {self.available}"] if self.asked and self.asked > self.available else []
        if self.frames != self.wanted:
            reasons.append(f"the teacher's {self.compression.temporal}x temporal compression encodes {frame_rule(self.compression)} frames")
        if not reasons:
            return None
        of = f"the {self.asked} frames asked for" if self.asked else f"the video's {self.available} frames"
        return f"encoding {self.frames} of {of}: {'; '.join(reasons)}"

    def new_frames_per_chunk(self) -> list[int]:
        """Video frames each chunk adds, first chunk first."""
        temporal, causal = self.compression.temporal, self.compression.causal
        remaining, counts = self.latent_frames, []
        if causal and remaining:
            first = min(remaining, 1 + self.chunk_latents)
            counts.append(self.compression.pixel_frames(first))
            remaining -= first
        while remaining:
            latents = min(remaining, self.chunk_latents)
            counts.append(temporal * latents)
            remaining -= latents
        return counts


def frame_rule(compression: Compression) -> str:
    return f"1 + {compression.temporal}k" if compression.causal else f"{compression.temporal}k"


def encode_plan(compression: Compression, available: int, asked: int | None, clip_frames: int) -> EncodePlan:
    """Chunks as long as the clip the student was exported for (`clip_frames`), which its teacher encodes."""
    if asked is not None and asked < 1:
        raise EffconvError(f"--frames {asked}: frames must be >= 1.", "pass --frames N with N >= 1, or leave it out to encode the whole video.")
    chunk_latents = max(1, compression.latent_frames(clip_frames) - (1 if compression.causal else 0))
    plan = EncodePlan(compression, available, asked, chunk_latents)
    if not plan.latent_frames:
        raise EffconvError(f"{plan.wanted} frames are too few for the teacher's {compression.temporal}x temporal "
                           f"compression, which encodes {frame_rule(compression)} frames.", "pass a longer video or a larger --frames.")
    return plan


def _encoded(teacher: LoadedModel, frames: list[np.ndarray], height: int, width: int) -> torch.Tensor:
    clip = center_crop(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), height, width)
    return teacher.model.encode(clip.unsqueeze(0)).latent_dist.mode()


@torch.no_grad()
def encoded_chunks(teacher: LoadedModel, info: VideoInfo, plan: EncodePlan, height: int,
                   width: int) -> Iterator[np.ndarray]:
    """The latent (mode) of the plan's frames, chunk by chunk, each (1, C, t, h, w) float32; frames are resized and
    centre-cropped to height x width and read from the file only as each chunk needs them."""
    context = None
    with contextlib.closing(frames_in_order(info)) as frames:
        for count in plan.new_frames_per_chunk():
            new = _read(frames, count, info.path)
            latent = _encoded(teacher, new if context is None else [context, *new], height, width)
            yield (latent if context is None else latent[:, :, 1:]).numpy().astype(np.float32)
            context = new[-1] if plan.compression.causal else None


def _read(frames: Iterator[np.ndarray], count: int, path: Path) -> list[np.ndarray]:
    try:
        read = list(itertools.islice(frames, count))
    except ValueError as exc:
        raise EffconvError(f"cannot read video '{path}': {exc}.", "pass a readable video file (mp4, mkv, webm, ...).") from None
    if len(read) < count:
        raise EffconvError(f"cannot read video '{path}': it ends before its recorded frame count.",
                           "pass a readable video file (mp4, mkv, webm, ...), or a smaller --frames.")
    return read
