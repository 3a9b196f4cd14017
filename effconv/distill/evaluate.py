"""`effconv eval`: reconstruction quality of the teacher VAE and of teacher encoder -> student decoder
against real frames (PSNR, SSIM, retention), with optional PNG strips ground truth / teacher / student."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import staged_output, teacher_of
from effconv.distill.trainer import resolve_device
from effconv.models.loader import LoadedModel, load_model
from effconv.models.teacher_fit import is_student, recorded_teacher, teacher_for_student
from effconv.spec import load_spec
from effconv.video.clips import center_clips, probe_videos
from effconv.video.metrics import psnr, ssim

STRIP_FRAMES = 4


def resolve_models(spec_path: Path, teacher_path: Path | None, allow_import: bool) -> tuple[LoadedModel, LoadedModel | None]:
    """The teacher VAE (at the student's clip size) and, for a student spec, the student; a teacher that does
    not fit the student is refused before any video is read."""
    loaded = load_spec(spec_path)
    if not is_student(loaded):
        return load_model(loaded, allow_import=allow_import), None
    student = load_model(loaded)
    if teacher_path is None:
        teacher_spec = distilled_from = teacher_of(Path(spec_path))
    else:
        teacher_spec, distilled_from = load_spec(teacher_path), recorded_teacher(Path(spec_path))
    clip = loaded.spec.input
    teacher = teacher_for_student(teacher_spec, loaded.spec.name, student.compression,
                                  (clip.frames, clip.height, clip.width), distilled_from, allow_import)
    return teacher, student


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


def frame_strip(rows: list[torch.Tensor]) -> np.ndarray:
    """One row per video (ground truth, teacher, student), STRIP_FRAMES evenly spaced frames each."""
    frames = rows[0].shape[1]
    picks = np.linspace(0, frames - 1, num=min(STRIP_FRAMES, frames)).round().astype(int)
    return np.concatenate([np.concatenate(list(_to_uint8(row)[picks]), axis=1) for row in rows], axis=0)


def strip_names(videos: list[Path]) -> list[str]:
    """`STEM-strip.png` per video, unique: a stem that several videos share gets its folder's name in front
    (`a/clip.mp4` -> `a-clip-strip.png`), and a name that still repeats the first free index behind (`-1`, `-2`)."""
    stems = Counter(Path(video).stem for video in videos)
    names = [f"{Path(video).parent.name}-{Path(video).stem}" if stems[Path(video).stem] > 1 else Path(video).stem
             for video in videos]
    repeats, used, unique = Counter(names), set(), []
    for name in names:
        index = 1
        candidate = name if repeats[name] == 1 else f"{name}-{index}"
        while candidate in used:
            index += 1
            candidate = f"{name}-{index}"
        used.add(candidate)
        unique.append(f"{candidate}-strip.png")
    return unique


@torch.no_grad()
def evaluate(spec_path: Path, data: list[Path], teacher_path: Path | None = None, save_frames: Path | None = None,
             allow_import: bool = False, device: str = "auto") -> dict:
    """Teacher (and student) quality on a centre clip of each video, on `device` (auto, cpu, cuda, cuda:N)."""
    chosen = resolve_device(device)
    teacher, student = resolve_models(spec_path, teacher_path, allow_import)
    teacher.model.to(chosen)
    if student is not None:
        student.model.to(chosen)
    clip = teacher.spec.spec.input
    videos = probe_videos(data, clip.frames, clip.height, clip.width)
    results, strips = [], []
    for path, video in center_clips(videos, clip.frames, clip.height, clip.width):
        video = video.unsqueeze(0).to(chosen)
        latent = teacher.model.encode(video).latent_dist.mode()
        teacher_out = teacher.module(latent)
        row = {"video": str(path), "teacher_psnr_db": psnr(teacher_out, video), "teacher_ssim": float(ssim(teacher_out, video))}
        rows = [video[0], teacher_out[0]]
        if student is not None:
            student_out = student.module(latent)
            row |= {"student_psnr_db": psnr(student_out, video), "student_ssim": float(ssim(student_out, video))}
            rows.append(student_out[0])
        results.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        if save_frames is not None:
            strips.append(frame_strip(rows))
    summary = {
        "spec": str(spec_path),
        "device": str(chosen),
        "clip": {"frames": clip.frames, "height": clip.height, "width": clip.width, "crop": "centre, middle window"},
        "videos": results,
        "skipped": [{"video": str(p), "reason": r} for p, r in videos.skipped],
    }
    for key in ("teacher_psnr_db", "teacher_ssim", "student_psnr_db", "student_ssim"):
        if key in results[0]:
            summary[f"mean_{key}"] = round(float(np.mean([r[key] for r in results])), 4)
    if student is not None:
        summary["retention"] = round(summary["mean_student_psnr_db"] / summary["mean_teacher_psnr_db"], 4)
        summary["student_params"] = student.num_params()
        summary["teacher_params"] = teacher.num_params()
    if save_frames is not None:
        import matplotlib.pyplot as plt

        names = strip_names([Path(row["video"]) for row in results])
        with staged_output(save_frames) as stage:
            for name, strip in zip(names, strips):
                plt.imsave(stage / name, strip)
        summary["frames"] = sorted(str(Path(save_frames) / name) for name in names)
    return summary
