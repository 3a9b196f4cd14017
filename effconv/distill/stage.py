"""The distill stage: teacher spec + recipe + real video -> trained student directory + spec + manifest.

Output in --out: `checkpoints/` (resumable training state), `cache/KEY/` (clips and teacher latents, when
the recipe uses a finite clip pool; KEY hashes the teacher's weights, clip size, seed, videos and the code that
makes them), and on
completion NAME-student/ (EMA weights, save_pretrained),
NAME-student.yaml (a spec `effconv convert` accepts) and distill.json (the manifest).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable

import torch

from effconv.artifacts import Manifest, TensorInfo, staged_output, write_manifest
from effconv.video.clips import ClipSampler, VideoSet, center_clips, probe_videos
from effconv.distill.losses import load_lpips
from effconv.distill.trainer import Distiller, World, run_steps
from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv.recipe import load_recipe
from effconv.rewrite.stage import STUDENT_SUFFIX, student_spec, write_student
from effconv.models.turbo_vaed.decoder import build_student
from effconv.models.turbo_vaed.teacher_init import init_from_teacher
from effconv.spec import LoadedSpec

MANIFEST_NAME = "distill"


@dataclasses.dataclass
class DistillResult:
    manifest: Manifest | None
    skipped: list[tuple[Path, str]]


def _eval_set(eval_data: list[Path] | None, frames: int, height: int, width: int) -> tuple[list, list]:
    if not eval_data:
        return [], []
    videos = probe_videos(eval_data, frames, height, width)
    return center_clips(videos, frames, height, width), videos.skipped


def distill(loaded: LoadedSpec, recipe_ref: str | Path, data: list[Path], out_dir: Path, steps: int | None = None,
            resume: bool = False, eval_data: list[Path] | None = None, lpips: bool = False,
            allow_import: bool = False, on_step: Callable | None = None,
            on_videos: Callable[[VideoSet], None] | None = None, device: str = "auto",
            workers: int | None = None) -> DistillResult:
    """Train a student for `loaded`'s decoder on `data` (files, folders, LIST.txt files) until `steps`; with
    `resume`, from the last checkpoint in `out_dir` (also after `steps` was raised). `workers`: data-loading
    processes [default: 1 beside CPU training, up to 8 beside a GPU]."""
    recipe, source = load_recipe(recipe_ref)
    student_recipe = recipe.require_student(source)
    config = recipe.distill if steps is None else recipe.distill.model_copy(update={"steps": steps})
    clip = loaded.spec.input
    teacher = load_model(loaded, allow_import=allow_import)
    if teacher.part != "decoder":
        raise EffconvError("distillation replaces a decoder.", "set 'part: decoder' in the teacher spec.")
    videos = probe_videos(data, clip.frames, clip.height, clip.width)
    if on_videos is not None:
        on_videos(videos)
    eval_clips, eval_skipped = _eval_set(eval_data, clip.frames, clip.height, clip.width)

    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"
    if not resume and checkpoints.exists() and any(checkpoints.glob("step-*")):
        raise EffconvError(f"'{checkpoints}' already holds a run.", "pass --resume to continue it, or choose a new --out.")
    world = World.from_env(device)
    student = build_student(teacher, student_recipe, seed=config.seed)
    unknown = sorted(set(config.align.values()) - set(student.feature_taps))
    if unknown:
        raise EffconvError(f"recipe {source}: distill.align names student feature(s) {', '.join(unknown)}, which this student lacks.",
                           f"use {', '.join(student.feature_taps)}.")
    init_report = init_from_teacher(student, teacher.model) if student_recipe.init == "from-teacher" else {}
    distiller = Distiller(
        teacher, student, config, ClipSampler(videos, clip.frames, clip.height, clip.width, seed=config.seed), world,
        cache_root=out_dir / "cache", lpips_model=load_lpips() if lpips else None,
        workers=workers,
    )
    if resume and not distiller.resume(checkpoints):
        raise EffconvError(f"--resume: no checkpoint in '{checkpoints}'.", "run without --resume to start training.")
    if distiller.step > config.steps:
        raise EffconvError(f"--steps {config.steps} is below the {distiller.step} steps already trained in '{checkpoints}'.",
                           f"pass --steps {distiller.step} or more, or start a new run in another --out.")
    run = run_steps(distiller, config.steps, checkpoints, eval_clips, on_step=on_step)
    if on_videos is not None and distiller.failed_videos:
        on_videos(VideoSet(videos=[], skipped=list(distiller.failed_videos.items())))
    run["ranks_in_sync_max_abs_diff"] = distiller.max_rank_divergence()
    run["world_size"] = world.size
    run["device"] = str(world.device)
    if not world.is_main:
        return DistillResult(manifest=None, skipped=videos.skipped + eval_skipped)

    name = f"{loaded.spec.name}{STUDENT_SUFFIX}"
    spec_data = student_spec(loaded, name)
    final_eval = {"eval_psnr_db": round(distiller.evaluate(eval_clips), 3)} if eval_clips else {}
    ema_student = copy.deepcopy(distiller.ema_student).to("cpu").eval()
    with staged_output(out_dir) as stage:
        write_student(stage, ema_student, spec_data, f"Student of {loaded.spec.name}, distilled by `effconv distill` (recipe {source}).")
        manifest = Manifest(
            name=MANIFEST_NAME,
            backend="pytorch",
            artifact=name,
            spec=spec_data,
            inputs=[TensorInfo(name="latent", shape=list(teacher.latent_shape), dtype="float32")],
            outputs=[TensorInfo(name="video", shape=list(teacher.output_shape), dtype="float32")],
            params=sum(p.numel() for p in ema_student.parameters()),
            verify={"passed": True, **final_eval},
            teacher=loaded.resolved(),
            teacher_params=teacher.num_params(),
            recipe={"source": source, "student": student_recipe.model_dump(mode="json"),
                    "distill": config.model_dump(mode="json")},
            init={"mode": student_recipe.init, "tensors": init_report},
            data=[str(v.path) for v in videos.videos],
            skipped_data=[{"video": str(path), "reason": reason} for path, reason in videos.skipped + sorted(distiller.failed_videos.items())],
            eval_data=sorted({str(path) for path, _ in eval_clips}),
            run=run,
            history=distiller.history[-50:],
            torch_version=torch.__version__,
        )
        write_manifest(manifest, stage)
    return DistillResult(manifest=manifest, skipped=videos.skipped + eval_skipped)
