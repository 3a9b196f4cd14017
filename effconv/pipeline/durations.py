"""How long a stage will take: measured when this folder has a previous run of it, modelled otherwise.

The model counts the FLOPs a stage computes (teacher and student forwards at the teacher's clip, built on
the meta device so no weights are loaded) and divides them by throughputs measured for the demo on the
2-core development machine, plus a fixed cost per stage for loading, exporting and converting. It is an
estimate for a machine like that one: a faster, slower or busy machine differs, and so do models whose
time is not dominated by FLOPs. Every estimate says which way it was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from effconv.distill.trainer import resolve_device
from effconv.models.loader import load_model, pretrained_config
from effconv.models.turbo_vaed.compare import count_flops
from effconv.models.turbo_vaed.decoder import build_student
from effconv.host import default_threads
from effconv.pipeline.plan import HOST_DEVICE, RunInputs, Stage
from effconv.profile.fit.probe import PROBE_SECONDS, needs_probe
from effconv.spec import LoadedSpec
from effconv.video.clips import expand_paths

# benchmarks/results/distill_quality.json (idle 2-core machine, 2 torch threads): the demo distilled at
# 3.50 steps/s with 11.9 counted GFLOP per step (2 clips x 3 x 1.98 GFLOP, forward + backward), and its
# student decoded in 39.6 ms in onnxruntime (1.98 GFLOP).
TRAIN_GFLOPS = 41.6
INFER_GFLOPS = 50.0
# Fixed costs (model building, export, conversion, quantization search) from the stage records of
# `effconv run demo` on the same machine while other jobs shared it (load 4-10). Per stage where
# measured, else per kind; lint is per backend, profile per profiled model. The ONNX and TFLite quantize
# figures are twice an idle run's (2026-11-30: 6.6 s and 3.4 s, once the ONNX sensitivity table became
# on-demand and TFLite calibration profiler-based), to match the load the others were measured under.
# ExecuTorch: a tiny student's idle run, 2026-12-01 (lowering to XNNPACK dominates).
FIXED_SECONDS = {"distill": 15.0, "import": 5.0, "eval": 4.0, "convert-onnx": 6.0, "convert-coreml": 18.0, "convert-tflite": 20.0,
                 "convert-executorch": 47.0, "convert": 20.0, "quantize-onnx": 12.0, "quantize-coreml": 29.0,
                 "quantize-tflite": 6.0, "quantize-executorch": 167.0, "quantize": 29.0, "lint": 3.0, "profile": 4.5}
BACKWARD_FACTOR = 3  # a training step of the student costs about three forwards
MEASURE_WARMUP = 2
LONG_SECONDS = 3600.0  # a CPU distillation estimated past this gets told how to shorten it
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


def duration_text(seconds: float) -> str:
    """A duration in the unit that keeps it readable: 42 s, 4.3 min, 2.5 h, 410 days."""
    if seconds < MINUTE:
        return f"{seconds:.0f} s"
    if seconds < HOUR:
        return f"{seconds / MINUTE:.1f} min"
    if seconds < 2 * DAY:
        return f"{seconds / HOUR:.1f} h"
    return f"{seconds / DAY:,.0f} days"


def shorter_run_advice(distill_seconds: float, steps: int, steps_done: int, train_device: str) -> str | None:
    """For a distillation to `steps` (from `steps_done`) estimated to take long on the CPU: how many steps fit in an
    hour, and where to train instead. None when it is short or trains on a GPU."""
    if distill_seconds <= LONG_SECONDS or resolve_device(train_device).type != "cpu":
        return None
    fitting = steps_done + max(1, int((steps - steps_done) * LONG_SECONDS / distill_seconds))
    return (f"distilling to step {steps} on this CPU takes about {duration_text(distill_seconds)}: pass --steps N "
            f"for a shorter run (--steps {fitting} fits in about an hour here), or --train-device cuda on a machine "
            "with an NVIDIA GPU.")


@dataclass
class StageDuration:
    seconds: float
    basis: str


@dataclass
class Workload:
    """FLOPs of one forward at the teacher's clip."""

    teacher_encoder: float
    teacher_decoder: float
    student: float


def _architecture(spec: LoadedSpec) -> LoadedSpec:
    """The spec without its weights: the architecture of its saved config (and model.config over it)."""
    if spec.pretrained_dir is None:
        return spec
    config = pretrained_config(spec.pretrained_dir)
    merged = {k: v for k, v in config.items() if not k.startswith("_")} | spec.spec.model.config
    model = spec.spec.model.model_copy(update={"pretrained": None, "variant": None, "config": merged})
    return LoadedSpec(spec=spec.spec.model_copy(update={"model": model}), base_dir=spec.base_dir)


def _meta_workload(inputs: RunInputs) -> Workload:
    import torch

    with torch.device("meta"):
        loaded = load_model(_architecture(inputs.teacher), allow_import=inputs.allow_import)
        if inputs.trained_student is not None:
            student = load_model(_architecture(inputs.trained_student)).module
        else:
            student = build_student(loaded, inputs.recipe.student)
    encoder = loaded.adapter.part_module(loaded.model, "encoder")
    return Workload(
        teacher_encoder=count_flops(encoder, loaded.clip_shape)[0],
        teacher_decoder=count_flops(loaded.module, loaded.input_shape)[0],
        student=count_flops(student, loaded.input_shape)[0],
    )


def _previous_record(out_dir: Path, stage: Stage) -> dict | None:
    for manifest in sorted((Path(out_dir) / stage.name).glob("*.json")):
        try:
            record = json.loads(manifest.read_text(encoding="utf-8")).get("stage")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("seconds"), (int, float)):
            return record
    return None


class DurationEstimator:
    """One per plan: the workload is counted once, and only if a stage has no measured time."""

    def __init__(self, inputs: RunInputs, out_dir: Path):
        self.inputs = inputs
        self.out_dir = Path(out_dir)

    @cached_property
    def workload(self) -> Workload:
        return _meta_workload(self.inputs)

    @staticmethod
    def _fixed(stage: Stage) -> float:
        return FIXED_SECONDS.get(stage.name, FIXED_SECONDS[stage.kind])

    @staticmethod
    def _seconds(flops: float, gflops: float) -> float:
        return flops / (gflops * 1e9)

    def __call__(self, stage: Stage, steps_done: int = 0) -> StageDuration:
        previous = _previous_record(self.out_dir, stage)
        if stage.kind == "distill":
            return self._distill(previous, steps_done)
        if previous is not None:
            return StageDuration(previous["seconds"], "measured: the previous run here")
        return self._modelled(stage)

    def _distill(self, previous: dict | None, steps_done: int) -> StageDuration:
        config = self.inputs.recipe.distill
        steps = config.steps - steps_done
        manifest = self.out_dir / "distill" / "distill.json"
        rate = None
        if previous is not None:
            run = json.loads(manifest.read_text(encoding="utf-8")).get("run", {})
            rate = run.get("steps_per_second")
        if rate:
            return StageDuration(FIXED_SECONDS["distill"] + steps / rate,
                            f"measured: {steps} steps x {1 / rate:.3g} s/step (the previous run here)")
        work = self.workload
        clips_per_step = config.batch_size * config.grad_accum
        clips = clips_per_step * config.steps
        teacher_clips = min(clips, config.clips) if (config.clips and config.cache_latents) else clips
        teacher_flops = teacher_clips * (work.teacher_encoder + work.teacher_decoder) * steps / config.steps
        step_flops = BACKWARD_FACTOR * clips_per_step * work.student
        step_seconds = self._seconds(step_flops, TRAIN_GFLOPS)
        seconds = FIXED_SECONDS["distill"] + steps * step_seconds + self._seconds(teacher_flops, INFER_GFLOPS)
        return StageDuration(seconds, f"modelled: {steps} steps x {step_seconds:.3g} s/step ({step_flops / 1e9:.3g} GFLOP "
                                 f"at {TRAIN_GFLOPS:g} GFLOP/s) + teacher targets")

    def _modelled(self, stage: Stage) -> StageDuration:
        work = self.workload
        vae = work.teacher_encoder + work.teacher_decoder
        if stage.kind == "eval":

            videos = len(expand_paths(list(self.inputs.eval_data)))
            flops, fixed = videos * (vae + work.student), FIXED_SECONDS["eval"]
        elif stage.kind == "convert":
            flops, fixed = 2 * work.student, self._fixed(stage)
        elif stage.kind == "quantize":
            samples = self.inputs.recipe.quantize.samples
            flops, fixed = samples * (work.teacher_encoder + 2 * work.student), self._fixed(stage)
        elif stage.kind == "lint":
            flops, fixed = 0.0, FIXED_SECONDS["lint"] * len(stage.settings["backends"])
        elif stage.kind == "import":
            flops, fixed = 0.0, FIXED_SECONDS["import"]
        else:
            runs = (MEASURE_WARMUP + stage.settings["repeats"]) if stage.device == HOST_DEVICE else 0
            models = 1 + max(1, sum(name.startswith(("convert-", "quantize-", "stream-")) for name in stage.after))
            flops = runs * (work.teacher_decoder + (models - 1) * work.student)
            fixed = FIXED_SECONDS["profile"] * models
            if stage.device == HOST_DEVICE and needs_probe(stage.settings.get("threads") or default_threads()):
                fixed += PROBE_SECONDS  # the first ONNX model costed on host-cpu fits its onnxruntime unit first
        seconds = fixed + self._seconds(flops, INFER_GFLOPS)
        return StageDuration(seconds, f"modelled: {fixed:.0f} s fixed + {flops / 1e9:.3g} GFLOP at {INFER_GFLOPS:g} GFLOP/s")
