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
from effconv.pipeline.plan import HOST_DEVICE, RunInputs, Stage, runs_on_this_machine
from effconv.profile.plot import write_plot
from effconv.profile.run import run
from effconv.quantize.stage import quantize_artifact
from effconv.rewrite.stage import import_student
from effconv.spec import load_spec

DISTILL_MANIFEST = "distill.json"
EVAL_MANIFEST = "eval.json"
LINT_MANIFEST = "lint.json"
PROFILE_MANIFEST = "profile.json"
PROFILE_PLOT = "student-plot.png"
TEACHER_SPEC = "teacher.yaml"
FRAMES_DIR = "frames"
INT8_SUFFIX = "-int8"
SPEC_STUDENT = "student-spec"  # a device none of whose backends is exported costs the student's spec as ONNX
STREAM_STUDENT = "student-stream"


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
        return self.out_dir / self.inputs.student_stage / f"{self.inputs.student_name}.yaml"

    @property
    def student_manifest(self) -> Path:
        """The manifest of the stage that wrote the student; it names the teacher."""
        return student_manifest(self.inputs, self.out_dir)

    def warn(self, message: str) -> None:
        if self.on_warning is not None:
            self.on_warning(message)


def student_manifest(inputs: RunInputs, out_dir: Path) -> Path:
    kind = "import" if inputs.trained_student is not None else "distill"
    return Path(out_dir) / inputs.student_stage / manifest_name(inputs, kind)


def manifest_name(inputs: RunInputs, kind: str) -> str:
    return {
        "distill": DISTILL_MANIFEST,
        "import": f"{inputs.student_name}.json",
        "eval": EVAL_MANIFEST,
        "convert": f"{inputs.student_name}.json",
        "quantize": f"{inputs.student_name}{INT8_SUFFIX}.json",
        "stream": f"{inputs.student_name}.json",
        "lint": LINT_MANIFEST,
        "profile": PROFILE_MANIFEST,
    }[kind]


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


def run_import(ctx: StageContext) -> None:
    import_student(ctx.inputs.teacher, ctx.inputs.trained_student, ctx.directory, allow_import=ctx.inputs.allow_import)


def run_eval(ctx: StageContext) -> None:
    with staged_output(ctx.directory) as staging:
        summary = evaluate(ctx.student_spec, list(ctx.inputs.eval_data), save_frames=staging / FRAMES_DIR,
                           allow_import=ctx.inputs.allow_import, device=ctx.inputs.train_device)
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
    converted = ctx.out_dir / settings["source"]
    source = converted / read_manifest(converted / f"{ctx.inputs.student_name}.json").artifact
    manifest = quantize_artifact(
        source, ctx.directory, calib=[str(p) for p in ctx.inputs.train_data], samples=settings["samples"],
        max_psnr_drop=settings["max_psnr_drop"], weights_only=settings["weights_only"],
        min_psnr_vs_float=settings["min_psnr_vs_float"], eval_data=list(ctx.inputs.eval_data),
        activation=settings["activation"], select_by_speed=not settings["all_nodes"],
        search_seconds=settings["search_seconds"], scheme=settings["scheme"], progress=ctx.on_progress)
    slower = (manifest.model_extra or {}).get("quantize", {}).get("speed_warning")
    if slower:
        ctx.warn(f"int8 {ctx.stage.backend}: {slower}")


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


@dataclass(frozen=True)
class ProfileTarget:
    """One model a profile stage costs: `label` keys it in profile.json's `models`."""

    label: str
    path: Path
    backend: str  # whose runtime runs it (the teacher's and a student spec's on-the-fly export: onnx)
    precision: str  # float | int8


def student_label(backend: str, precision: str) -> str:
    return f"student-{backend}" + (INT8_SUFFIX if precision == "int8" else "")


def _artifact(ctx: StageContext, stage: str, suffix: str = "") -> Path:
    """The artifact an upstream stage wrote, as its manifest `NAME{suffix}.json` names it."""
    return ctx.out_dir / stage / read_manifest(ctx.out_dir / stage / f"{ctx.inputs.student_name}{suffix}.json").artifact


def _int8_passed(ctx: StageContext, stage: str) -> bool:
    manifest = read_manifest(ctx.out_dir / stage / f"{ctx.inputs.student_name}{INT8_SUFFIX}.json")
    return (manifest.model_extra or {}).get("stage", {}).get("passed") is not False


def _profile_targets(ctx: StageContext, teacher_spec: Path) -> tuple[list[ProfileTarget], dict[str, str]]:
    """The teacher (its spec, exported on the fly); per mapped backend the student's float artifact and its int8
    when that passed its check (else why not); the streaming artifact (per call). No mapped backend: the student's
    spec, exported to ONNX on the fly."""
    targets, skipped = [ProfileTarget("teacher", teacher_spec, "onnx", "float")], {}
    after = ctx.stage.after
    for backend in ctx.stage.settings["backends"]:
        targets.append(ProfileTarget(student_label(backend, "float"), _artifact(ctx, f"convert-{backend}"), backend, "float"))
        quantized = f"quantize-{backend}"
        if quantized in after and _int8_passed(ctx, quantized):
            targets.append(ProfileTarget(student_label(backend, "int8"), _artifact(ctx, quantized, INT8_SUFFIX), backend,
                                         "int8"))
        elif quantized in after:
            skipped[student_label(backend, "int8")] = f"{quantized} failed its check, so its artifact is not costed"
    if not ctx.stage.settings["backends"]:
        targets.append(ProfileTarget(SPEC_STUDENT, ctx.student_spec, "onnx", "float"))
    for stream in (stage for stage in after if stage.startswith("stream-")):
        targets.append(ProfileTarget(STREAM_STUDENT, _artifact(ctx, stream), stream.removeprefix("stream-"), "float"))
    return targets, skipped


def run_profile(ctx: StageContext) -> None:
    """Estimate every target on the device; on host-cpu also measure each one this machine runs, in its own runtime."""
    settings = ctx.stage.settings
    host = ctx.stage.device == HOST_DEVICE
    teacher = read_manifest(ctx.student_manifest).model_extra["teacher"]
    results = {}
    with staged_output(ctx.directory) as staging:
        teacher_spec = staging / TEACHER_SPEC
        teacher_spec.write_text(yaml.safe_dump(teacher, sort_keys=False), encoding="utf-8")
        targets, skipped = _profile_targets(ctx, teacher_spec)
        for target in targets:
            result = run(target.path, ctx.stage.device, resolution=settings["resolution"],
                         do_measure=host and runs_on_this_machine(target.backend), threads=settings.get("threads"),
                         repeats=settings.get("repeats", 1), allow_import=ctx.inputs.allow_import,
                         progress=ctx.on_progress or print)
            shown = target.path.name if target.path.parent == staging else target.path.relative_to(ctx.out_dir).as_posix()
            results[target.label] = result.to_dict() | {"target": shown, "backend": target.backend,
                                                        "precision": target.precision}
            if target == targets[1]:  # the student as the device's first backend ships it
                write_plot(result, staging / PROFILE_PLOT)
        replace_json(staging / PROFILE_MANIFEST, _stage_json("profile", device=ctx.stage.device, backends=settings["backends"],
                                                             models=results, not_costed=skipped, plot=PROFILE_PLOT))


# The library module whose code makes each kind of stage's outputs: its source, with what it imports, is part of
# the stage's hash, so changed code redoes the stage rather than reusing what older code wrote.
PRODUCERS: dict[str, str] = {
    "distill": distill.__module__,
    "import": import_student.__module__,
    "eval": evaluate.__module__,
    "convert": convert.__module__,
    "quantize": quantize_artifact.__module__,
    "stream": convert.__module__,
    "lint": lint_target.__module__,
    "profile": run.__module__,
}

RUNNERS: dict[str, Callable[[StageContext], None]] = {
    "distill": run_distill,
    "import": run_import,
    "eval": run_eval,
    "convert": run_convert,
    "quantize": run_quantize,
    "stream": run_stream,
    "lint": run_lint,
    "profile": run_profile,
}
