"""`effconv eval`: reconstruction quality of the teacher VAE and of teacher encoder -> student decoder
against real frames (PSNR, SSIM, retention), with optional PNG strips ground truth / teacher / student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import staged_output, teacher_of
from effconv.video.clips import center_clips, probe_videos
from effconv.video.metrics import psnr, ssim
from effconv.models.loader import LoadedModel, load_model
from effconv.spec import load_spec

STRIP_FRAMES = 4


def resolve_models(spec_path: Path, teacher_path: Path | None, allow_import: bool) -> tuple[LoadedModel, LoadedModel | None]:
    loaded = load_spec(spec_path)
    is_student = loaded.spec.model.diffusers == "TurboVAEDDecoder"
    if not is_student:
        return load_model(loaded, allow_import=allow_import), None
    teacher_spec = load_spec(teacher_path) if teacher_path else teacher_of(Path(spec_path))
    teacher = load_model(teacher_spec.with_input(**loaded.spec.input.model_dump()), allow_import=allow_import)
    return teacher, load_model(loaded)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()


def frame_strip(rows: list[torch.Tensor]) -> np.ndarray:
    """One row per video (ground truth, teacher, student), STRIP_FRAMES evenly spaced frames each."""
    frames = rows[0].shape[1]
    picks = np.linspace(0, frames - 1, num=min(STRIP_FRAMES, frames)).round().astype(int)
    return np.concatenate([np.concatenate(list(_to_uint8(row)[picks]), axis=1) for row in rows], axis=0)


@torch.no_grad()
def evaluate(spec_path: Path, data: list[Path], teacher_path: Path | None = None, save_frames: Path | None = None,
             allow_import: bool = False) -> dict:
    teacher, student = resolve_models(spec_path, teacher_path, allow_import)
    clip = teacher.spec.spec.input
    videos = probe_videos(data, clip.frames, clip.height, clip.width)
    results, strips = [], {}
    for path, video in center_clips(videos, clip.frames, clip.height, clip.width):
        video = video.unsqueeze(0)
        latent = teacher.model.encode(video).latent_dist.mode()
        teacher_out = teacher.module(latent)
        row = {"video": str(path), "teacher_psnr_db": psnr(teacher_out, video), "teacher_ssim": float(ssim(teacher_out, video))}
        rows = [video[0], teacher_out[0]]
        if student is not None:
            student_out = student.module(latent)
            row |= {"student_psnr_db": psnr(student_out, video), "student_ssim": float(ssim(student_out, video))}
            rows.append(student_out[0])
        results.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        strips[Path(path).stem] = frame_strip(rows)
    summary = {
        "spec": str(spec_path),
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

        with staged_output(save_frames) as stage:
            for stem, strip in strips.items():
                plt.imsave(stage / f"{stem}-strip.png", strip)
        summary["frames"] = sorted(str(Path(save_frames) / f"{stem}-strip.png") for stem in strips)
    return summary
