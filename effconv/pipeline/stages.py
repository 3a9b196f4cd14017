"""Each stage of `effconv run` as a call to the library function its own command uses.

A stage writes only into its own folder `DIR/<stage name>/`, its manifest named by `manifest_name`.
Stages whose library function returns data rather than writing a manifest (eval, lint, profile) write
one here, through a staging directory like every other artifact.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

import effconv
from effconv.artifacts import read_manifest, replace_json, staged_output
from effconv.convert.stage import convert
from effconv.distill.evaluate import evaluate
from effconv.distill.stage import distill
from effconv.errors import VerificationFailed
from effconv.legalize.lint import lint_target
from effconv.pipeline.plan import HOST_DEVICE, RunInputs, Stage
from effconv.profile.plot import write_plot
from effconv.profile.run import run
from effconv.quantize.stage import quantize_artifact
from effconv.spec import load_spec

DISTILL_MANIFEST = "distill.json"
EVAL_MANIFEST = "eval.json"
LINT_MANIFEST = "lint.json"
PROFILE_MANIFEST = "profile.json"
PROFILE_PLOT = "student-plot.png"
TEACHER_SPEC = "teacher.yaml"
FRAMES_DIR = "frames"
INT8_SUFFIX = "-int8"


@dataclass
class StageContext:
    inputs: RunInputs
    stage: Stage
    out_dir: Path
    resume: bool = False
    on_step: Callable[[dict, float], None] | None = None
    on_warning: Callable[[str], None] | None = None
    on_progress: Callable[[str], None] | None = None  # a long stage's current step, in words

    @property
    def directory(self) -> Path:
        return self.out_dir / self.stage.name

    @property
    def student_spec(self) -> Path:
        return self.out_dir / "distill" / f"{self.inputs.student_name}.yaml"

    def warn(self, message: str) -> None:
        if self.on_warning is not None:
            self.on_warning(message)


def manifest_name(inputs: RunInputs, stage: Stage) -> str:
    return {
        "distill": DISTILL_MANIFEST,
        "eval": EVAL_MANIFEST,
        "convert": f"{inputs.student_name}.json",
        "quantize": f"{inputs.student_name}{INT8_SUFFIX}.json",
        "stream": f"{inputs.student_name}.json",
        "lint": LINT_MANIFEST,
        "profile": PROFILE_MANIFEST,
    }[stage.kind]


def _stage_json(name: str, **sections) -> dict:
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"name": name, **sections, "effconv_version": effconv.__version__, "created": created}


def run_distill(ctx: StageContext) -> None:
    def warn_skipped(videos) -> None:
        for path, reason in videos.skipped:
            ctx.warn(f"skipping {path}: {reason}")

    distill(
        ctx.inputs.teacher, ctx.inputs.recipe_source, list(ctx.inputs.train_data), ctx.directory,
        steps=ctx.inputs.recipe.distill.steps, resume=ctx.resume, allow_import=ctx.inputs.allow_import,
        on_step=ctx.on_step, on_videos=warn_skipped, device=ctx.inputs.train_device, workers=ctx.inputs.workers,
    )


def run_eval(ctx: StageContext) -> None:
    with staged_output(ctx.directory) as staging:
        summary = evaluate(ctx.student_spec, list(ctx.inputs.eval_data), save_frames=staging / FRAMES_DIR,
                           allow_import=ctx.inputs.allow_import)
        for skipped in summary["skipped"]:
            ctx.warn(f"skipping {skipped['video']}: {skipped['reason']}")
        summary["frames"] = [f"{FRAMES_DIR}/{Path(frame).name}" for frame in summary.get("frames", [])]
        summary["eval_is_train"] = ctx.inputs.eval_is_train
        replace_json(staging / EVAL_MANIFEST, _stage_json("eval", eval=summary))


def run_convert(ctx: StageContext) -> None:
    convert(load_spec(ctx.student_spec), ctx.stage.backend, ctx.directory, allow_import=ctx.inputs.allow_import)


def run_stream(ctx: StageContext) -> None:
    settings = ctx.stage.settings
    convert(load_spec(ctx.student_spec), ctx.stage.backend, ctx.directory, opset=settings["opset"],
            stream=settings["latent_frames_per_call"], allow_import=ctx.inputs.allow_import)


def run_quantize(ctx: StageContext) -> None:
    """Calibrate on clips of the training videos; measure quality on the eval videos' centre clips."""
    settings = ctx.stage.settings
    converted = ctx.out_dir / f"convert-{ctx.stage.backend}"
    source = converted / read_manifest(converted / f"{ctx.inputs.student_name}.json").artifact
    quantize_artifact(source, ctx.directory, calib=[str(p) for p in ctx.inputs.train_data], samples=settings["samples"],
                      max_psnr_drop=settings["max_psnr_drop"], weights_only=settings["weights_only"],
                      min_psnr_vs_float=settings["min_psnr_vs_float"],
                      eval_data=list(ctx.inputs.eval_data), activation=settings["activation"],
                      select_by_speed=not settings["all_nodes"], search_seconds=settings["search_seconds"],
                      progress=ctx.on_progress)


def run_lint(ctx: StageContext) -> None:
    results = {}
    for backend, device in ctx.stage.settings["backends"].items():
        linted = lint_target(ctx.student_spec, backend, device, allow_import=ctx.inputs.allow_import)
        results[backend] = {"device": device, "rewrites": linted.rewrites, "before": linted.before.as_dict(),
                            "after": linted.after.as_dict()}
    blocked = {backend: result["after"]["blocking"] for backend, result in results.items() if result["after"]["blocking"]}
    with staged_output(ctx.directory) as staging:
        replace_json(staging / LINT_MANIFEST, _stage_json("lint", backends=results, verify={"passed": not blocked}))
    if blocked:
        names = "; ".join(f"{backend}: {', '.join(ops)}" for backend, ops in blocked.items())
        raise VerificationFailed(f"ops no compute unit can run remain after effconv's rewrites ({names}).",
                                 f"see {ctx.directory / LINT_MANIFEST} and docs/backends.md.")


def _profile_targets(ctx: StageContext, teacher_spec: Path) -> dict[str, Path]:
    """Teacher (its spec, exported on the fly), the student's float ONNX (or its spec), the int8 ONNX, and the
    streaming artifact (per call)."""
    name = ctx.inputs.student_name
    targets = {"teacher": teacher_spec}
    exported = ctx.out_dir / "convert-onnx" / f"{name}.onnx"
    targets["student"] = exported if "convert-onnx" in ctx.stage.after else ctx.student_spec
    if "quantize-onnx" in ctx.stage.after:
        targets["student-int8"] = ctx.out_dir / "quantize-onnx" / f"{name}{INT8_SUFFIX}.onnx"
    for stream in (stage for stage in ctx.stage.after if stage.startswith("stream-")):
        folder = ctx.out_dir / stream
        targets["student-stream"] = folder / read_manifest(folder / f"{name}.json").artifact
    return targets


def run_profile(ctx: StageContext) -> None:
    settings = ctx.stage.settings
    host = ctx.stage.device == HOST_DEVICE
    teacher = read_manifest(ctx.out_dir / "distill" / DISTILL_MANIFEST).model_extra["teacher"]
    results = {}
    with staged_output(ctx.directory) as staging:
        teacher_spec = staging / TEACHER_SPEC
        teacher_spec.write_text(yaml.safe_dump(teacher, sort_keys=False), encoding="utf-8")
        for label, target in _profile_targets(ctx, teacher_spec).items():
            result = run(target, ctx.stage.device, resolution=settings["resolution"], do_measure=host,
                         threads=settings.get("threads"), repeats=settings.get("repeats", 1),
                         allow_import=ctx.inputs.allow_import)
            shown = target.name if target.parent == staging else target.relative_to(ctx.out_dir).as_posix()
            results[label] = result.to_dict() | {"target": shown}
            if label == "student":
                write_plot(result, staging / PROFILE_PLOT)
        replace_json(staging / PROFILE_MANIFEST, _stage_json("profile", device=ctx.stage.device, models=results,
                                                             plot=PROFILE_PLOT))


RUNNERS: dict[str, Callable[[StageContext], None]] = {
    "distill": run_distill,
    "eval": run_eval,
    "convert": run_convert,
    "quantize": run_quantize,
    "stream": run_stream,
    "lint": run_lint,
    "profile": run_profile,
}
