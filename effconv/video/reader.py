"""Video files read with PyAV on demand: a probe (frame count, size) up front, then only the frames a clip
needs, at a working resolution.

Memory stays flat however many or long the videos are. When all of a set's videos fit `CACHE_BYTES` at the
working resolution, each is decoded once, whole, and kept (a short clip drawn from many times is decoded
once); otherwise every clip reads its own window, seeking to the keyframe before it, and nothing is kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from effconv.errors import exception_text

CACHE_BYTES = 64 << 20
WORKING_SCALE = 1.5


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    width: int  # the working resolution frames are decoded at
    height: int
    fps: float | None = None  # the container's average frame rate, when it records one

    @property
    def decoded_bytes(self) -> int:
        return self.frames * self.width * self.height * 3


def working_size(width: int, height: int, target_long_side: int) -> tuple[int, int]:
    """Short side about 1.5x the clip's long side (random crops have room to vary scale), never upscaled."""
    short = min(width, height)
    wanted_short = min(short, int(round(target_long_side * WORKING_SCALE)))
    scale = wanted_short / short
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _reason(exc: Exception) -> str:
    return f"cannot decode ({type(exc).__name__}: {exception_text(exc, 120)})"


def _decode_errors():
    import av

    return av.error.FFmpegError, UnicodeDecodeError, OSError, IndexError


def probe(path: Path, target_long_side: int) -> VideoInfo:
    """Frame count and working size, after decoding the first frame; raises ValueError if the file is unusable.
    The count is the container's when it records one (mp4), else its video packets counted without decoding."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            width, height = working_size(stream.codec_context.width, stream.codec_context.height, target_long_side)
            fps = float(stream.average_rate) if stream.average_rate else None
            if next(container.decode(stream), None) is None:
                raise ValueError("no decodable frames")
            frames = stream.frames
            if frames <= 0:
                container.seek(0)
                frames = sum(1 for packet in container.demux(stream) if packet.size)
    except _decode_errors() as exc:
        raise ValueError(_reason(exc)) from None
    return VideoInfo(path=Path(path), frames=frames, width=width, height=height, fps=fps)


def frames_in_order(info: VideoInfo) -> Iterator[np.ndarray]:
    """Every frame from the first, (H, W, 3) uint8 at the working size, decoded one at a time as it is asked for:
    a long video is read in one pass and never held. Raises ValueError when a frame cannot be decoded."""
    import av

    try:
        with av.open(str(info.path)) as container:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
    except _decode_errors() as exc:
        raise ValueError(_reason(exc)) from None


def _frame_index(frame, stream) -> int | None:
    if frame.pts is None or not stream.average_rate:
        return None
    seconds = (frame.pts - (stream.start_time or 0)) * stream.time_base
    return int(round(seconds * stream.average_rate))


def _decode_frames(info: VideoInfo, start: int, count: int) -> np.ndarray:
    """Frames [start, start + count) as (count, H, W, 3) uint8. Seeks when the window is not at the start;
    falls back to decoding from the first frame when the container's timestamps do not allow it."""
    import av

    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        frames = []
        if start > 0 and stream.average_rate:
            target = int(start / (stream.average_rate * stream.time_base)) + (stream.start_time or 0)
            container.seek(target, stream=stream, backward=True)
            for frame in container.decode(stream):
                index = _frame_index(frame, stream)
                if index is None or (not frames and index > start):
                    frames = None  # landed past the window: timestamps cannot be trusted
                    break
                if index >= start:
                    frames.append(frame.to_ndarray(format="rgb24", width=info.width, height=info.height))
                    if len(frames) == count:
                        return np.stack(frames)
            if frames is not None:
                raise ValueError(f"truncated: frames {start}-{start + count - 1} of {info.frames} are missing")
            container.seek(0)
            frames = []
        for index, frame in enumerate(container.decode(stream)):
            if index >= start:
                frames.append(frame.to_ndarray(format="rgb24", width=info.width, height=info.height))
                if len(frames) == count:
                    return np.stack(frames)
    raise ValueError(f"truncated: {start + len(frames)} of {info.frames} frames decode")


class VideoReader:
    """Reads (count, 3, H, W) uint8 windows of probed videos; whole videos that fit are kept in an LRU cache of
    at most `cache_bytes` (0: read every window from the file)."""

    def __init__(self, cache_bytes: int = CACHE_BYTES):
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[Path, torch.Tensor] = OrderedDict()

    @classmethod
    def for_videos(cls, videos: list[VideoInfo]) -> VideoReader:
        """Caches whole videos only when the whole set fits: with more, random draws would evict each video
        before it is drawn again, and decoding it whole would cost more than its window."""
        return cls(CACHE_BYTES if sum(video.decoded_bytes for video in videos) <= CACHE_BYTES else 0)

    def window(self, info: VideoInfo, start: int, count: int) -> torch.Tensor:
        """Raises ValueError when the frames cannot be decoded (a corrupt or truncated file)."""
        if not 0 <= start <= info.frames - count:
            raise ValueError(f"frames {start}-{start + count - 1} are outside its {info.frames} frames")
        if info.decoded_bytes > self.cache_bytes:
            return self._decoded(info, start, count)
        frames = self._cache.get(info.path)
        if frames is None:
            frames = self._decoded(info, 0, info.frames)
            self._keep(info.path, frames)
        self._cache.move_to_end(info.path)
        return frames[start : start + count]

    def _decoded(self, info: VideoInfo, start: int, count: int) -> torch.Tensor:
        try:
            frames = _decode_frames(info, start, count)
        except _decode_errors() as exc:
            raise ValueError(_reason(exc)) from None
        return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()

    @property
    def cached_bytes(self) -> int:
        return sum(frames.numel() for frames in self._cache.values())

    def _keep(self, path: Path, frames: torch.Tensor) -> None:
        self._cache[path] = frames
        while self.cached_bytes > self.cache_bytes:
            self._cache.popitem(last=False)
